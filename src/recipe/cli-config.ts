/**
 * A run's configuration from the command line, as every pipeline builds it: a preset, then a JSON file of
 * overrides, then `--set key=value` flags, then the flags that have their own option (--out, --backend,
 * --seed). Every step validates against the preset (config.ts): errors name the file or flag and the key.
 */
import { readFile } from 'node:fs/promises';
import { PRESETS, mergeConfig, parseSet, type SpclConfig } from './config.ts';
import { methodRules, withMethods, type Method } from './method.ts';

export interface ConfigArgs {
  preset: string;
  config?: string;
  set: string[];
  out?: string;
  backend?: string;
  seed?: string;
}

/**
 * `methods`: the plug-in methods the pipeline may run (their defaults join the preset, their rules the
 * validation); `transform` runs on the preset before the overrides (e.g. --quick's cut-down schedule).
 */
export async function configFromArgs(
  args: ConfigArgs,
  usageError: (message: string) => never,
  opts: { methods?: readonly Method[]; transform?: (cfg: SpclConfig) => SpclConfig } = {},
): Promise<SpclConfig> {
  const preset = PRESETS[args.preset];
  if (!preset) usageError(`--preset must be one of ${Object.keys(PRESETS).join(', ')}, got '${args.preset}'`);
  const methods = opts.methods ?? [];
  const rules = methodRules(methods);
  let cfg = withMethods(opts.transform ? opts.transform(preset()) : preset(), methods);
  if (args.config) {
    let text: string;
    try {
      text = await readFile(args.config, 'utf8');
    } catch {
      throw new Error(`${args.config}: cannot read the config file`);
    }
    let json;
    try {
      json = JSON.parse(text);
    } catch (err) {
      throw new Error(`${args.config}: invalid JSON (${(err as Error).message})`);
    }
    cfg = mergeConfig(cfg, json, args.config, rules);
  }
  for (const s of args.set) cfg = mergeConfig(cfg, parseSet(s), `--set ${s}`, rules);
  const flags: Record<string, unknown> = {};
  if (args.out) flags.out = args.out;
  if (args.backend) flags.backend = args.backend;
  if (args.seed !== undefined) {
    const seed = Number(args.seed);
    flags.seed = Number.isInteger(seed) ? seed : args.seed;
  }
  return mergeConfig(cfg, flags as Parameters<typeof mergeConfig>[1], 'flags');
}

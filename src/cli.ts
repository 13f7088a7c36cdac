/**
 * The command line of an entry point: parse flags, `--help` prints the usage and exits 0, a bad flag
 * prints what is wrong plus the usage and exits 2 (`fail` does the same for checks after parsing).
 */
import { parseArgs, type ParseArgsOptionsConfig } from 'node:util';

export interface Cli<V> {
  values: V;
  /** Prints `<name>: <message>` and the usage, exits 2. */
  fail(message: string): never;
}

/** `positionals`: accept arguments that are not flags (e.g. the files a shell glob expands to); default no. */
export function parseCli<const O extends ParseArgsOptionsConfig>(
  name: string,
  usage: string,
  options: O,
  opts: { positionals?: boolean } = {},
) {
  const fail = (message: string): never => {
    process.stderr.write(`${name}: ${message}\n\n${usage}\n`);
    process.exit(2);
  };
  const config = { options: { ...options, help: { type: 'boolean', short: 'h', default: false } } } as const;
  let values: ReturnType<typeof parseArgs<typeof config>>['values'];
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({ ...config, allowPositionals: opts.positionals ?? false }));
  } catch (err) {
    return fail((err as Error).message);
  }
  if ((values as { help?: boolean }).help) {
    console.log(usage);
    process.exit(0);
  }
  return { values, positionals, fail };
}

/** An optional integer flag value, >= `min`; otherwise `fail` names the flag (undefined stays undefined). */
export function parseIntFlag(value: string | undefined, flag: string, min: number, fail: (message: string) => never): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) fail(`--${flag} must be an integer >= ${min}, got '${value}'`);
  return n;
}

/** A `HxW` flag value as [height, width], both >= `min`; otherwise `fail` names the flag and an example. */
export function parseSize(value: string, flag: string, example: string, fail: (message: string) => never, min = 1): [number, number] {
  const m = /^(\d+)x(\d+)$/.exec(value);
  const hw: [number, number] = m ? [Number(m[1]), Number(m[2])] : [0, 0];
  if (!m || hw[0] < min || hw[1] < min) fail(`--${flag} must look like ${example}${min > 1 ? ` (sides >= ${min})` : ''}, got '${value}'`);
  return hw;
}

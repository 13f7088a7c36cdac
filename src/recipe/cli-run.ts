/**
 * The command line every training pipeline shares: options, config (preset, --config, --set, flags), the
 * embedded benchmark on first use, SIGINT/SIGTERM, /metrics, the step log, the run, the results table and
 * errors that say what to do. A pipeline gives its name, a line on what it runs, and its recipe; the
 * recipe may depend on the config (a phase only some settings need).
 */
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { parseCli } from '../cli.ts';
import { DiskFullError } from '../io/atomic.ts';
import { METRICS_OPTIONS, METRICS_USAGE, startMetrics } from '../observe/cli.ts';
import { stepLogEvents } from '../observe/step-log.ts';
import { useSyntheticData } from '../synthetic/benchmark.ts';
import { configFromArgs } from './cli-config.ts';
import { PRESETS, SYNTHETIC_DATA, SYNTHETIC_QUICK_DATA, checkConfig, quick, type SpclConfig } from './config.ts';
import type { Method } from './method.ts';
import { reportTable, runRecipe, type RunReport } from './run.ts';

export interface PipelineSpec {
  /** Script name (pipelines/<name>.ts), the log prefix. */
  name: string;
  /** What the pipeline runs, for --help. */
  describe: string;
  /** The phases to run for this config, in order. */
  recipe(cfg: SpclConfig): readonly Method[];
  /** The endless phase --continuous adds. */
  endless?: Method;
  /** Every method it may run (their settings join the config; --phase names come from here). */
  methods: readonly Method[];
  /** Run folder when --out is absent: runs/<preset><outSuffix> (runs/synthetic-quick<outSuffix> with --quick). */
  outSuffix?: string;
  /** The pipeline's own changes to the preset, before --config and --set (which may still change them). */
  preset?(cfg: SpclConfig): SpclConfig;
  /** The pipeline's own string options, their --help lines, and the config change they make after the overrides. */
  own?: {
    options: Record<string, { type: 'string' }>;
    usage: string;
    apply(cfg: SpclConfig, values: Record<string, string | undefined>, usageError: (message: string) => never): SpclConfig;
  };
  /** What goes to stdout at the end (default: the per-phase table). */
  summary?(report: RunReport): string;
}

export async function runPipelineCli(spec: PipelineSpec): Promise<void> {
  process.env.UV_THREADPOOL_SIZE ??= String(availableParallelism());
  const names = spec.methods.map((m) => m.name).join(', ');
  const usage = `usage: node pipelines/${spec.name}.ts [options]
${spec.describe}
  --preset NAME        ${Object.keys(PRESETS).join(' | ')} (default synthetic)
  --config FILE        JSON overrides of the preset (same keys as report.json's "config")
  --set KEY=VALUE      one override, repeatable (e.g. --set spcl.lambda=0.5 --set data.workers=4)
  --out DIR            run folder (checkpoints, pseudo-labels, report.json); default runs/<preset>${spec.outSuffix ?? ''}
  --backend NAME       auto | tensorflow | wasm | cpu (default auto)
  --seed N             run seed (default 0)
  --phase NAME[,NAME]  run only these phases (${names}), from the run's last checkpoint
  --checkpoint FILE    with --phase: start from this checkpoint instead
  --resume             continue from the last checkpoint in --out${
    spec.endless
      ? `
  --continuous         after the recipe (or the --phase phases), keep adapting: new target images are picked
                       up, thresholds + pseudo-labels refreshed on a schedule (continuous.* keys), until
                       SIGINT/SIGTERM or continuous.steps; with --resume it goes on where it stopped`
      : ''
  }
  --quick              a much shorter synthetic run (end-to-end check: about 1 minute alone on 2 cores)
  --step-log FILE      append one JSON line per training step (phase, iteration, every loss term, lr, skipped)${spec.own ? `\n${spec.own.usage}` : ''}
${METRICS_USAGE}
  -h, --help           this text
Prints progress to stderr, a results table to stdout, and writes <out>/report.json and <out>/report.html
(the visual report, self-contained; node pipelines/report.ts --run <out> writes it again).`;
  const cli = parseCli(spec.name, usage, {
    preset: { type: 'string', default: 'synthetic' },
    config: { type: 'string' },
    set: { type: 'string', multiple: true, default: [] },
    out: { type: 'string' },
    backend: { type: 'string' },
    seed: { type: 'string' },
    phase: { type: 'string' },
    checkpoint: { type: 'string' },
    resume: { type: 'boolean', default: false },
    ...(spec.endless ? { continuous: { type: 'boolean', default: false } } : {}),
    quick: { type: 'boolean', default: false },
    'step-log': { type: 'string' },
    ...METRICS_OPTIONS,
    ...spec.own?.options,
  } as const);
  const args = cli.values as typeof cli.values & { continuous?: boolean };
  const usageError: (message: string) => never = cli.fail;
  const log = (line: string) => process.stderr.write(`${line}\n`);
  try {
    if (args.quick && args.preset !== 'synthetic') usageError('--quick only applies to the synthetic preset');
    const methods = [...spec.methods, ...(spec.endless ? [spec.endless] : [])];
    const ownPreset = spec.preset ?? ((c: SpclConfig) => c);
    let cfg = await configFromArgs(args, usageError, { methods, transform: (c) => ownPreset(args.quick ? quick(c) : c) });
    if (spec.own) cfg = spec.own.apply(cfg, args as unknown as Record<string, string | undefined>, usageError);
    // the preset's run folder (unless --config/--set moved it), per pipeline and for --quick
    if (!args.out && cfg.out === PRESETS[args.preset]!().out)
      cfg.out = `runs/${args.quick ? 'synthetic-quick' : cfg.preset}${spec.outSuffix ?? ''}`;
    await useSyntheticData(cfg, args.quick ? SYNTHETIC_QUICK_DATA : SYNTHETIC_DATA, log);
    checkConfig(cfg);
    const only = args.phase?.split(',');
    const bad = only?.find((p) => !methods.some((m) => m.name === p));
    if (bad) usageError(`--phase must name phases among ${methods.map((m) => m.name).join(', ')}, got '${bad}'`);
    if (args.checkpoint && !only) usageError('--checkpoint needs --phase');
    const controller = new AbortController();
    for (const sig of ['SIGINT', 'SIGTERM'] as const) {
      process.once(sig, () => {
        log(
          `${spec.name}: ${sig}: stopping after the current step, or now in a pass (the last complete state is checkpointed; --resume continues)`,
        );
        controller.abort();
      });
    }
    const { metrics, server } = await startMetrics(args, log);
    const report = await runRecipe({
      cfg,
      recipe: spec.recipe(cfg),
      endless: spec.endless,
      resume: args.resume || Boolean(only),
      only,
      checkpoint: args.checkpoint,
      continuous: args.continuous ?? false,
      events: args['step-log'] ? stepLogEvents(args['step-log'], { log }) : { log },
      signal: controller.signal,
      metrics,
    });
    await server.close();
    console.log(spec.summary ? spec.summary(report) : reportTable(report));
    log(`report: ${join(cfg.out, 'report.json')}`);
  } catch (err) {
    log(`${spec.name}: ${process.env.SPCL_DEBUG ? (err as Error).stack : (err as Error).message}`);
    if (err instanceof DiskFullError)
      log(`${spec.name}: free space, then run again with --resume: it continues from the checkpoint latest.json names`);
    process.exit(1);
  }
}

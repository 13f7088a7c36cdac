/**
 * The SPCL recipe (REFERENCE 1): warm-up -> prototypes -> thresholds + pseudo-labels -> contrastive
 * training -> pseudo-labels -> self-training. With no arguments: the embedded synthetic benchmark on
 * this machine (generated and ingested on first use), CPU-sized; `--preset gta5-cityscapes` etc. give
 * the paper's settings on real shards.
 */
import { availableParallelism } from 'node:os';
process.env.UV_THREADPOOL_SIZE ??= String(availableParallelism());

import { join } from 'node:path';
import { PRESETS, SYNTHETIC_DATA, SYNTHETIC_QUICK_DATA, checkConfig, quick } from '../src/recipe/config.ts';
import { configFromArgs } from '../src/recipe/cli-config.ts';
import { reportTable, runRecipe } from '../src/recipe/run.ts';
import { METHODS } from '../src/methods/registry.ts';
import { useSyntheticData } from '../src/synthetic/benchmark.ts';
import { METRICS_OPTIONS, METRICS_USAGE, startMetrics } from '../src/observe/cli.ts';
import { parseCli } from '../src/cli.ts';
import { stepLogEvents } from '../src/observe/step-log.ts';
import { DiskFullError } from '../src/io/atomic.ts';

const USAGE = `usage: node pipelines/spcl.ts [options]
  --preset NAME        ${Object.keys(PRESETS).join(' | ')} (default synthetic)
  --config FILE        JSON overrides of the preset (same keys as report.json's "config")
  --set KEY=VALUE      one override, repeatable (e.g. --set spcl.lambda=0.5 --set data.workers=4)
  --out DIR            run folder (checkpoints, pseudo-labels, report.json); default runs/<preset>
  --backend NAME       auto | tensorflow | wasm | cpu (default auto)
  --seed N             run seed (default 0)
  --phase NAME[,NAME]  run only these phases (${Object.keys(METHODS).join(', ')}), from the run's last checkpoint
  --checkpoint FILE    with --phase: start from this checkpoint instead
  --resume             continue from the last checkpoint in --out
  --continuous         after the recipe (or the --phase phases), keep adapting: new target images are picked
                       up, thresholds + pseudo-labels refreshed on a schedule (continuous.* keys), until
                       SIGINT/SIGTERM or continuous.steps; with --resume it goes on where it stopped
  --quick              a much shorter synthetic run (end-to-end check, under 2 minutes)
  --step-log FILE      append one JSON line per training step (phase, iteration, every loss term, lr, skipped)
${METRICS_USAGE}
  -h, --help           this text
Prints progress to stderr, a results table to stdout, and writes <out>/report.json.`;

const cli = parseCli('spcl', USAGE, {
  preset: { type: 'string', default: 'synthetic' },
  config: { type: 'string' },
  set: { type: 'string', multiple: true, default: [] },
  out: { type: 'string' },
  backend: { type: 'string' },
  seed: { type: 'string' },
  phase: { type: 'string' },
  checkpoint: { type: 'string' },
  resume: { type: 'boolean', default: false },
  continuous: { type: 'boolean', default: false },
  quick: { type: 'boolean', default: false },
  'step-log': { type: 'string' },
  ...METRICS_OPTIONS,
});
const args = cli.values;
const usageError: (message: string) => never = cli.fail;

/**
 * The SPCL recipe, REFERENCE 1 step by step (steps 2 and 6, checkpoint selection on target val, are
 * `checkpoint.select: best-val`); `--continuous` follows it with continuous adaptation.
 */
const RECIPE = [
  METHODS.warmup!, //             1  source CE on logits / 1.8 (+ output-space adversarial term)
  METHODS.prototypes!, //         3  class prototypes: source feature centroids (Eq. 2)
  METHODS['pseudo-labels']!, //   4  class thresholds + offline target pseudo-labels
  METHODS.spcl!, //               5  seg + lambda (Lcl_s + Lcl_t) against EMA prototypes (Eq. 8)
  METHODS['pseudo-labels-2']!, // 7  thresholds + pseudo-labels again, from the contrastive model
  METHODS.ssl!, //                8  self-training on them (Eq. 9)
];

const log = (line: string) => process.stderr.write(`${line}\n`);
try {
  if (args.quick && args.preset !== 'synthetic') usageError('--quick only applies to the synthetic preset');
  const cfg = await configFromArgs(args, usageError, { methods: Object.values(METHODS), transform: args.quick ? quick : undefined });
  if (args.quick && !args.out) cfg.out = 'runs/synthetic-quick';
  await useSyntheticData(cfg, args.quick ? SYNTHETIC_QUICK_DATA : SYNTHETIC_DATA, log);
  checkConfig(cfg);
  const only = args.phase?.split(',');
  const bad = only?.find((p) => !(p in METHODS));
  if (bad) usageError(`--phase must name phases among ${Object.keys(METHODS).join(', ')}, got '${bad}'`);
  const controller = new AbortController();
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      log(`spcl: ${sig}: stopping after the current step, or now in a pass (the last complete state is checkpointed; --resume continues)`);
      controller.abort();
    });
  }
  if (args.checkpoint && !only) usageError('--checkpoint needs --phase');
  const { metrics, server } = await startMetrics(args, log);
  const report = await runRecipe({
    cfg,
    recipe: RECIPE,
    endless: METHODS.continuous,
    resume: args.resume || Boolean(only),
    only,
    checkpoint: args.checkpoint,
    continuous: args.continuous,
    events: args['step-log'] ? stepLogEvents(args['step-log'], { log }) : { log },
    signal: controller.signal,
    metrics,
  });
  await server.close();
  console.log(reportTable(report));
  log(`report: ${join(cfg.out, 'report.json')}`);
} catch (err) {
  log(`spcl: ${process.env.SPCL_DEBUG ? (err as Error).stack : (err as Error).message}`);
  if (err instanceof DiskFullError)
    log('spcl: free space, then run again with --resume: it continues from the checkpoint latest.json names');
  process.exit(1);
}

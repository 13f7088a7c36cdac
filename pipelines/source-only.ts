/**
 * The source-only baseline, built from the same stages as the SPCL recipe: the warm-up phase with the
 * adversarial term off (lambdaAdv = 0: no discriminator) and BN running statistics from the only domain
 * it sees (model.bnStats = 'all': no target image is used), then evaluation on the target validation set.
 * Compute-matched by default: it trains as many steps as the whole recipe (warm-up + spcl + ssl) from the
 * same start (model.weights), with the warm-up's poly schedule stretched to that length, so an adaptation
 * gain cannot come from training longer. Same presets, --set flags and report as pipelines/spcl.ts.
 *
 *   node pipelines/source-only.ts [--seed N] [--out runs/source-only]
 */
import { availableParallelism } from 'node:os';
process.env.UV_THREADPOOL_SIZE ??= String(availableParallelism());

import { join } from 'node:path';
import { PRESETS, SYNTHETIC_DATA, checkConfig, computeMatched, mergeConfig, parseSet } from '../src/recipe/config.ts';
import { runRecipe } from '../src/recipe/run.ts';
import { useSyntheticData } from '../src/synthetic/benchmark.ts';
import { SOURCE_ONLY } from '../src/methods/registry.ts';
import { METRICS_OPTIONS, METRICS_USAGE, startMetrics } from '../src/observe/cli.ts';
import { parseCli } from '../src/cli.ts';
import { stepLogEvents } from '../src/observe/step-log.ts';

const USAGE = `usage: node pipelines/source-only.ts [options]
  --preset NAME     ${Object.keys(PRESETS).join(' | ')} (default synthetic)
  --set KEY=VALUE   override, repeatable (as pipelines/spcl.ts)
  --out DIR         run folder (default runs/source-only-<preset>)
  --seed N          run seed (default 0)
  --iterations N    source steps (default: warm-up + spcl + ssl iterations of the config, compute-matched)
  --step-log FILE   append one JSON line per training step (phase, iteration, every loss term, lr, skipped)
${METRICS_USAGE}
  -h, --help        this text`;

const cli = parseCli('source-only', USAGE, {
  preset: { type: 'string', default: 'synthetic' },
  set: { type: 'string', multiple: true, default: [] },
  out: { type: 'string' },
  seed: { type: 'string', default: '0' },
  iterations: { type: 'string' },
  'step-log': { type: 'string' },
  ...METRICS_OPTIONS,
});
const args = cli.values;
const usageError: (message: string) => never = cli.fail;
const preset = PRESETS[args.preset];
if (!preset) usageError(`--preset must be one of ${Object.keys(PRESETS).join(', ')}, got '${args.preset}'`);
const log = (line: string) => process.stderr.write(`${line}\n`);
try {
  let cfg = mergeConfig(
    preset(),
    { out: args.out ?? `runs/source-only-${args.preset}`, seed: Number(args.seed), warmup: { lambdaAdv: 0 }, model: { bnStats: 'all' } },
    'flags',
  );
  for (const s of args.set) cfg = mergeConfig(cfg, parseSet(s), `--set ${s}`);
  cfg = computeMatched(cfg, args.iterations === undefined ? undefined : Number(args.iterations));
  await useSyntheticData(cfg, SYNTHETIC_DATA, log);
  checkConfig(cfg);
  const { metrics, server } = await startMetrics(args, log);
  const report = await runRecipe({
    cfg,
    recipe: SOURCE_ONLY,
    events: args['step-log'] ? stepLogEvents(args['step-log'], { log }) : { log },
    metrics,
  });
  await server.close();
  const w = report.phases[0]!;
  console.log(
    `source-only  target val mIoU ${w.miou === null ? '-' : (100 * w.miou).toFixed(2)}  (${w.seconds.toFixed(0)} s, backend ${report.backend}, seed ${report.seed})`,
  );
  log(`report: ${join(cfg.out, 'report.json')}`);
} catch (err) {
  log(`source-only: ${(err as Error).message}`);
  process.exit(1);
}

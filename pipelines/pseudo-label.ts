/**
 * Precomputes thresholds and pseudo-labels of a target set with a checkpoint (REFERENCE 5), as a
 * generation in --out that training (or another tool) reads: one model pass, per-class upper-median
 * thresholds capped at --cap, labels below their class threshold set to 255.
 *
 *   node pipelines/pseudo-label.ts --checkpoint FILE --target data/synthetic/shards/target --out runs/pl
 */
import { availableParallelism } from 'node:os';
process.env.UV_THREADPOOL_SIZE ??= String(availableParallelism());

import { join } from 'node:path';
import { selectBackend, type BackendRequest } from '../src/ops/backend.ts';
import { METRICS_OPTIONS, METRICS_USAGE, startMetrics } from '../src/observe/cli.ts';
import { estimateThresholds } from '../src/stages/estimate-thresholds.ts';
import { writeGeneration } from '../src/stages/write-pseudo-labels.ts';
import { openDataset } from '../src/data/reader.ts';
import { modelFromCheckpoint, pass } from '../src/recipe/tools.ts';
import { parseCli, parseSize } from '../src/cli.ts';

const USAGE = `usage: node pipelines/pseudo-label.ts --checkpoint FILE --target DIR --out DIR [options]
  --checkpoint FILE   a checkpoint written by pipelines/spcl.ts
  --target DIR        target dataset folder written by pipelines/ingest.ts (labels not needed)
  --out DIR           pseudo-label folder (gen-NNNNNN.lmdb + current.json); a new generation each run
  --size HxW          input size (default: the checkpoint's target size)
  --cap P             threshold cap (default 0.9)
  --keep N            generations to keep (default 2)
  --backend NAME      auto | tensorflow | wasm | cpu (default auto)
${METRICS_USAGE}
  -h, --help          this text`;

const cli = parseCli('pseudo-label', USAGE, {
  checkpoint: { type: 'string' },
  target: { type: 'string' },
  out: { type: 'string' },
  size: { type: 'string' },
  cap: { type: 'string', default: '0.9' },
  keep: { type: 'string', default: '2' },
  backend: { type: 'string', default: 'auto' },
  ...METRICS_OPTIONS,
});
const args = cli.values;
const usageError: (message: string) => never = cli.fail;
for (const k of ['checkpoint', 'target', 'out'] as const) if (!args[k]) usageError(`--${k} is required`);
const size = args.size === undefined ? null : parseSize(args.size, 'size', '512x1024', usageError);
const cap = Number(args.cap);
if (!(cap > 0 && cap <= 1)) usageError(`--cap must be a number in (0, 1], got '${args.cap}'`);
const keep = Number(args.keep);
if (!Number.isInteger(keep) || keep < 1) usageError(`--keep must be an integer >= 1, got '${args.keep}'`);

try {
  const backend = await selectBackend(args.backend as BackendRequest);
  const { metrics, server } = await startMetrics(args, (l) => process.stderr.write(`${l}\n`));
  metrics.buildInfo.set({ version: process.env.npm_package_version ?? '0.1.0', backend, phase: 'pseudo-label', preset: 'none' }, 1);
  const { model, meta } = await modelFromCheckpoint(args.checkpoint!);
  const dataset = await openDataset(args.target!);
  const inputSize: [number, number] = size ?? meta.size?.target ?? [512, 1024];
  const t = await pass(dataset, { resize: inputSize }, 4, undefined, () =>
    estimateThresholds({
      model,
      numClasses: meta.numClasses,
      bins: 4096,
      cap,
      scratch: join(args.out!, 'scratch-predictions.lmdb'),
      release: (b) => b.release(),
    }),
  );
  const info = await writeGeneration(t, {
    dir: args.out!,
    numClasses: meta.numClasses,
    keep,
    source: { checkpoint: args.checkpoint, target: args.target },
  });
  const names = dataset.manifest.classNames;
  metrics.pseudoGeneration.set(info.generation);
  metrics.pseudoWritten.inc(info.count);
  info.thresholds.forEach((t, k) => metrics.classThreshold.set({ class: names[k]! }, t));
  console.log(`generation ${info.generation}: ${info.count} images -> ${join(args.out!, info.file)}`);
  for (const [k, n] of names.entries())
    console.log(
      `  ${n.padEnd(14)} threshold ${info.thresholds[k]!.toFixed(3)}  kept ${(100 * info.coverage[k]!).toFixed(1)}% of its ${t.counts[k]} pixels`,
    );
  model.dispose();
  await server.close();
} catch (err) {
  process.stderr.write(`pseudo-label: ${(err as Error).message}\n`);
  process.exit(1);
}

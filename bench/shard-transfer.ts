/**
 * How a data-parallel step's batch reaches the replicas (src/parallel/data-parallel.ts): each shard
 * copied into fresh arrays and posted to a worker (the structured clone copies it again, into the
 * worker's heap: the step before the shared area) against the batch copied once into a reused
 * SharedArrayBuffer whose views the message shares. Side by side in one run, the two in turn, timed
 * from the split to the worker's answer after it has touched its shard; batch 8 (float images,
 * int32 labels) at each size, 2 replicas.
 *
 *   npm run bench:shards -- [--sizes 64x128,256x512,512x1024] [--reps 12]
 */
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import { parseCli, parseIntFlag, parseSize } from '../src/cli.ts';
import { bytesOf, splitRows } from '../src/parallel/data-parallel.ts';
import type { HostTensors } from '../src/parallel/program.ts';
import { median } from './median.ts';

const USAGE = `usage: npm run bench:shards -- [options]
  --sizes LIST         image sizes HxW, comma-separated (default 64x128,256x512,512x1024)
  --reps N             timed repetitions per size and path, the median reported (default 12)
  -h, --help           this text
Prints, per size, ms from the split to the worker holding its shard: copies + structured clone, and the shared area.`;

const cli = parseCli('bench:shards', USAGE, {
  sizes: { type: 'string', default: '64x128,256x512,512x1024' },
  reps: { type: 'string', default: '12' },
});
const sizes = cli.values.sizes.split(',').map((s) => parseSize(s, 'sizes', '64x128', cli.fail));
const reps = parseIntFlag(cli.values.reps, 'reps', 1, cli.fail)!;

// the worker reads one element of each tensor of its shard and answers
const worker = new Worker(
  `const { parentPort } = require('node:worker_threads');
   parentPort.on('message', (shard) => { let s = 0; for (const t of Object.values(shard)) s += t.data[t.data.length - 1]; parentPort.postMessage(s); });`,
  { eval: true },
);
const toWorker = async (shard: HostTensors) => {
  worker.postMessage(shard);
  await once(worker, 'message');
};

console.log('size | copies + structured clone, ms (median, range) | shared area, ms (median, range) | ratio');
for (const [h, w] of sizes) {
  const n = 8 * h * w;
  const batch: HostTensors = {
    images: { data: Float32Array.from({ length: n * 3 }, (_, i) => i % 251), shape: [8, h, w, 3] },
    labels: { data: Int32Array.from({ length: n }, (_, i) => i % 19), shape: [8, h, w] },
  };
  const area = new SharedArrayBuffer(bytesOf(batch));
  const [copied, shared]: number[][] = [[], []];
  for (let k = 0; k < reps + 1; k++) {
    let t0 = performance.now();
    await toWorker(splitRows(batch, 2)[1]!);
    const a = performance.now() - t0;
    t0 = performance.now();
    await toWorker(splitRows(batch, 2, area)[1]!);
    const b = performance.now() - t0;
    if (k === 0) continue; // the first round warms both paths
    copied.push(a);
    shared.push(b);
  }
  const range = (v: number[]) => `${Math.min(...v).toFixed(2)}-${Math.max(...v).toFixed(2)}`;
  console.log(
    `${h}x${w} | ${median(copied).toFixed(2)} (${range(copied)}) | ${median(shared).toFixed(2)} (${range(shared)}) | ${(median(shared) / median(copied)).toFixed(2)}`,
  );
}
await worker.terminate();

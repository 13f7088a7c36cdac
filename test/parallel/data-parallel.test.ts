/**
 * src/parallel: how a batch is split, and the self-training step (the same function the ssl phase runs)
 * over 2 replicas against its one-thread path: trainable BN (synchronised), a target and a source batch
 * with unlabelled (255) regions of different sizes in each shard, 3 SGD steps.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { selectBackend } from '../../src/ops/backend.ts';
import { deeplabV2 } from '../../src/ops/model/deeplab.ts';
import { SGD } from '../../src/ops/optim.ts';
import { DataParallel, shardRows, splitRows } from '../../src/parallel/data-parallel.ts';
import { deeplabReplica, describeDeeplab } from '../../src/parallel/deeplab-replica.ts';
import { SELF_TRAINING_SHARD } from '../../src/methods/self-training-shard.ts';
import { anchoredSelfTrainingStep } from '../../src/methods/self-training.ts';
import type { Batch } from '../../src/stages/collate.ts';
import type { RunContext } from '../../src/recipe/context.ts';

test('shardRows: as even as possible, the first shards one larger; splitRows splits every tensor by its own rows', () => {
  assert.deepEqual(shardRows(8, 2), [4, 4]);
  assert.deepEqual(shardRows(5, 2), [3, 2]);
  assert.deepEqual(shardRows(7, 3), [3, 2, 2]);
  const [a, b] = splitRows(
    {
      x: { data: Float32Array.from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]), shape: [5, 2] },
      y: { data: Int32Array.from([10, 11, 12]), shape: [3] },
    },
    2,
  );
  assert.deepEqual(a, {
    x: { data: Float32Array.from([0, 1, 2, 3, 4, 5]), shape: [3, 2] },
    y: { data: Int32Array.from([10, 11]), shape: [2] },
  });
  assert.deepEqual(b, { x: { data: Float32Array.from([6, 7, 8, 9]), shape: [2, 2] }, y: { data: Int32Array.from([12]), shape: [1] } });
});

function batch(seed: number, n: number, unlabelledRows: number[]): Batch {
  const [h, w] = [64, 128];
  const images = tf.tidy(() => tf.randomNormal([n, h, w, 3], 0, 1, 'float32', seed).dataSync() as Float32Array);
  const labels = tf.tidy(() => tf.randomUniformInt([n, h, w], 0, 19, seed + 1).dataSync() as Int32Array);
  // image i: its first unlabelledRows[i] rows are 255 (shards with different labelled counts)
  unlabelledRows.forEach((rows, i) => labels.fill(255, i * h * w, i * h * w + rows * w));
  return { n, height: h, width: w, images, labelHeight: h, labelWidth: w, labels, keys: [], decodeSeconds: 0, release: () => {} };
}

test('the self-training step over 2 replicas equals its one-thread path over 3 steps (losses, weights, BN buffers) to float tolerance', async (t) => {
  await selectBackend('wasm', { log: () => {} });
  const model = deeplabV2({ backbone: 'small', numClasses: 19, seed: 3 });
  model.setBatchNorm('trainable');
  const ctx = { model, cfg: { model: { bnStats: 'target' } } } as unknown as RunContext;
  const variables = [...model.store.params.values()];
  const start = variables.map((p) => p.variable.clone());
  const tb = batch(10, 4, [0, 40, 64, 8]);
  const sb = batch(20, 4, [10, 0, 0, 50]);
  const run = (replicas: DataParallel | null) => {
    variables.forEach((p, i) => p.variable.assign(start[i]!));
    const params = model.trainableParams();
    const opt = new SGD([{ params, lrMult: 1 }], { momentum: 0.9, weightDecay: 5e-4 });
    const step = anchoredSelfTrainingStep(params, opt, () => 0.01, ctx, 0.5, 1, replicas);
    const losses = [0, 1, 2].map((it) => step({ t: tb, s: sb }, it).losses);
    opt.dispose();
    return { losses, weights: variables.map((p) => p.variable.dataSync().slice() as Float32Array) };
  };
  const one = run(null);
  const dp = await DataParallel.start({
    threads: 2,
    backend: 'wasm',
    program: { module: SELF_TRAINING_SHARD, description: describeDeeplab(model) },
    replica: deeplabReplica(model),
  });
  let two;
  try {
    two = run(dp);
  } finally {
    await dp.close();
  }
  assert.deepEqual(Object.keys(two.losses[0]!).sort(), ['source', 'ssl', 'total']);
  let worstLoss = 0;
  one.losses.forEach((l, i) => {
    for (const k of Object.keys(l)) worstLoss = Math.max(worstLoss, Math.abs(l[k]! - two.losses[i]![k]!) / Math.abs(l[k]!));
  });
  let diff = 0;
  let moved = 0;
  variables.forEach((_, i) => {
    const [a, b, s] = [one.weights[i]!, two.weights[i]!, start[i]!.dataSync()];
    for (let j = 0; j < a.length; j++) {
      diff += (a[j]! - b[j]!) ** 2;
      moved += (a[j]! - s[j]!) ** 2;
    }
  });
  tf.dispose(start);
  model.dispose();
  const rel = Math.sqrt(diff / moved);
  t.diagnostic(`losses: max relative difference ${worstLoss.toExponential(2)}; weights: difference / update ${rel.toExponential(2)}`);
  assert.ok(one.losses[2]!.total! < one.losses[0]!.total!, `it trains: ${one.losses.map((l) => l.total).join(' -> ')}`);
  assert.ok(worstLoss < 1e-4, `losses agree: ${worstLoss}`);
  assert.ok(rel < 1e-3, `weights agree: ${rel}`);
});

/**
 * src/parallel: how a batch is split, and the self-training and contrastive steps (the same functions
 * the ssl and spcl phases run) over 2 replicas against their one-thread paths: trainable BN
 * (synchronised), a target and a source batch with unlabelled (255) regions of different sizes in each
 * shard, the prototypes' EMA over the whole batch (spcl), 3 SGD steps; and the adversarial warm-up step
 * (the net's update, then the discriminator's) over 2 replicas against its one-thread path. The bench's
 * plain net over 3 replicas with uneven shards: gradients against one thread, and reproducible.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { selectBackend } from '../../src/ops/backend.ts';
import { deeplabV2 } from '../../src/ops/model/deeplab.ts';
import { Adam, SGD, gradients } from '../../src/ops/optim.ts';
import { discriminator } from '../../src/ops/model/discriminator.ts';
import { parallelWarmupStep, warmupStep } from '../../src/methods/warmup.ts';
import { ADVERSARIAL_SHARD, adversarialReplica } from '../../src/methods/warmup-adversarial-shard.ts';
import { hostBatch } from '../../src/recipe/trainer.ts';
import { batchTensors } from '../../src/stages/collate.ts';
import { DataParallel, bytesOf, shardRows, splitRows } from '../../src/parallel/data-parallel.ts';
import { deeplabReplica, describeDeeplab } from '../../src/parallel/deeplab-replica.ts';
import { SELF_TRAINING_SHARD } from '../../src/methods/self-training-shard.ts';
import { anchoredSelfTrainingStep } from '../../src/methods/self-training.ts';
import { contrastiveStep } from '../../src/methods/spcl.ts';
import { SPCL_SHARD } from '../../src/methods/spcl-shard.ts';
import { Prototypes } from '../../src/stages/update-prototypes.ts';
import type { StepOutcome } from '../../src/stages/train-step.ts';
import type { SegModel } from '../../src/ops/model/deeplab.ts';
import type { Param } from '../../src/ops/model/params.ts';
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

test("splitRows into a shared area: the same shards, as views of it (the tensors one after another, each in its rows' order); a short area is an error", () => {
  const tensors = {
    x: { data: Float32Array.from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]), shape: [5, 2] },
    y: { data: Int32Array.from([10, 11, 12]), shape: [3] },
  };
  assert.equal(bytesOf(tensors), 52);
  const area = new SharedArrayBuffer(64);
  const shards = splitRows(tensors, 2, area);
  assert.deepEqual(
    shards.map((s) => Object.fromEntries(Object.entries(s).map(([k, t]) => [k, { data: [...t.data], shape: t.shape }]))),
    splitRows(tensors, 2).map((s) => Object.fromEntries(Object.entries(s).map(([k, t]) => [k, { data: [...t.data], shape: t.shape }]))),
  );
  assert.deepEqual(
    shards.flatMap((s) => Object.values(s).map((t) => [t.data.buffer === area, t.data.byteOffset, t.data.constructor.name])),
    [
      [true, 0, 'Float32Array'],
      [true, 40, 'Int32Array'],
      [true, 24, 'Float32Array'],
      [true, 48, 'Int32Array'],
    ],
  );
  assert.deepEqual([...new Float32Array(area, 0, 6)], [0, 1, 2, 3, 4, 5]);
  assert.throws(() => splitRows(tensors, 2, new SharedArrayBuffer(48)), {
    message: 'splitRows: the area has 48 bytes, the tensors 52',
  });
});

function batch(seed: number, n: number, unlabelledRows: number[]): Batch {
  const [h, w] = [64, 128];
  const images = tf.tidy(() => tf.randomNormal([n, h, w, 3], 0, 1, 'float32', seed).dataSync() as Float32Array);
  const labels = tf.tidy(() => tf.randomUniformInt([n, h, w], 0, 19, seed + 1).dataSync() as Int32Array);
  // image i: its first unlabelledRows[i] rows are 255 (shards with different labelled counts)
  unlabelledRows.forEach((rows, i) => labels.fill(255, i * h * w, i * h * w + rows * w));
  return { n, height: h, width: w, images, labelHeight: h, labelWidth: w, labels, keys: [], decodeSeconds: 0, release: () => {} };
}

/**
 * Runs `makeStep`'s step 3 times from the model's current weights (after `reset`), with a fresh SGD
 * (momentum 0.9, weight decay 5e-4) over the model's trained parameters, on one thread and over 2
 * replicas of `module`'s program; returns both runs' losses and weights and how far apart they are.
 */
async function oneVsTwo(
  model: SegModel,
  module: string,
  makeStep: (replicas: DataParallel | null, params: Param[], opt: SGD) => (it: number) => StepOutcome,
  reset: () => void,
) {
  const variables = [...model.store.params.values()];
  const start = variables.map((p) => p.variable.clone());
  const run = (replicas: DataParallel | null) => {
    variables.forEach((p, i) => p.variable.assign(start[i]!));
    reset();
    const params = model.trainableParams();
    const opt = new SGD([{ params, lrMult: 1 }], { momentum: 0.9, weightDecay: 5e-4 });
    const step = makeStep(replicas, params, opt);
    const losses = [0, 1, 2].map((it) => step(it).losses);
    opt.dispose();
    return { losses, weights: variables.map((p) => p.variable.dataSync().slice() as Float32Array) };
  };
  const one = run(null);
  const dp = await DataParallel.start({
    threads: 2,
    backend: 'wasm',
    program: { module, description: describeDeeplab(model) },
    replica: deeplabReplica(model),
  });
  let two;
  try {
    two = run(dp);
  } finally {
    await dp.close();
  }
  let worstLoss = 0;
  one.losses.forEach((l, i) => {
    for (const k of Object.keys(l)) worstLoss = Math.max(worstLoss, Math.abs(l[k]! - two.losses[i]![k]!) / Math.max(Math.abs(l[k]!), 1e-6));
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
  return { one, two, worstLoss, weightDiff: Math.sqrt(diff / moved) };
}

test('the self-training step over 2 replicas equals its one-thread path over 3 steps (losses, weights, BN buffers) to float tolerance', async (t) => {
  await selectBackend('wasm', { log: () => {} });
  const model = deeplabV2({ backbone: 'small', numClasses: 19, seed: 3 });
  model.setBatchNorm('trainable');
  const ctx = { model, cfg: { model: { bnStats: 'target' } } } as unknown as RunContext;
  const tb = batch(10, 4, [0, 40, 64, 8]);
  const sb = batch(20, 4, [10, 0, 0, 50]);
  const r = await oneVsTwo(
    model,
    SELF_TRAINING_SHARD,
    (replicas, params, opt) => {
      const step = anchoredSelfTrainingStep(params, opt, () => 0.01, ctx, 0.5, 1, replicas);
      return (it) => step({ t: tb, s: sb }, it);
    },
    () => {},
  );
  model.dispose();
  t.diagnostic(
    `losses: max relative difference ${r.worstLoss.toExponential(2)}; weights: difference / update ${r.weightDiff.toExponential(2)}`,
  );
  assert.deepEqual(Object.keys(r.two.losses[0]!).sort(), ['source', 'ssl', 'total']);
  assert.ok(r.one.losses[2]!.total! < r.one.losses[0]!.total!, `it trains: ${r.one.losses.map((l) => l.total).join(' -> ')}`);
  assert.ok(r.worstLoss < 1e-4, `losses agree: ${r.worstLoss}`);
  assert.ok(r.weightDiff < 1e-3, `weights agree: ${r.weightDiff}`);
});

test('the contrastive step (spcl) over 2 replicas equals its one-thread path over 3 steps: losses, weights and the prototypes to float tolerance', async (t) => {
  await selectBackend('wasm', { log: () => {} });
  const model = deeplabV2({ backbone: 'small', numClasses: 19, seed: 5 });
  model.setBatchNorm('trainable');
  const prototypes = new Prototypes();
  const init = tf.tidy(() => {
    const p = tf.randomNormal([19, model.featureChannels], 0, 1, 'float32', 7);
    return tf.div(p, tf.norm(p, 2, 1, true)) as tf.Tensor2D;
  });
  const ctx = {
    model,
    prototypes,
    lrScale: 1,
    events: {},
    cfg: {
      model: { bnStats: 'target' },
      prototypes: { alpha: 0.9, absent: 'keep' },
      // lr 1e-3: at 1e-2 with temperature 0.1 the contrastive loss amplifies float rounding about 300x a step
      spcl: { lr: 0.001, maxIter: 100, sourceTemperature: 1.8, temperature: 0.1, lambda: 1, refineSource: true },
    },
  } as unknown as RunContext;
  const sb = batch(30, 4, [0, 20, 64, 0]);
  const tb = batch(40, 4, [30, 0, 10, 64]);
  let protoOne: Float32Array | null = null;
  const r = await oneVsTwo(
    model,
    SPCL_SHARD,
    (replicas, params, opt) => {
      const step = contrastiveStep(ctx, params, opt, replicas);
      return (it) => {
        const out = step({ s: sb, t: tb }, it);
        if (it === 2 && !replicas) protoOne = prototypes.tensor.dataSync().slice() as Float32Array;
        return out;
      };
    },
    () => prototypes.set(init),
  );
  const protoTwo = prototypes.tensor.dataSync() as Float32Array;
  const protoDiff = Math.max(...protoTwo.map((v, i) => Math.abs(v - protoOne![i]!)));
  const protoMoved = Math.max(...protoTwo.map((v, i) => Math.abs(v - init.dataSync()[i]!)));
  init.dispose();
  prototypes.dispose();
  model.dispose();
  t.diagnostic(
    `losses: max relative difference ${r.worstLoss.toExponential(2)}; weights: difference / update ${r.weightDiff.toExponential(2)}; prototypes: max difference ${protoDiff.toExponential(2)} (moved ${protoMoved.toFixed(3)})`,
  );
  assert.deepEqual(Object.keys(r.two.losses[0]!).sort(), ['cl_source', 'cl_target', 'seg', 'total']);
  assert.ok(r.one.losses[0]!.cl_source! > 0 && r.one.losses[0]!.cl_target! > 0, JSON.stringify(r.one.losses[0]));
  assert.ok(protoMoved > 0.01, `the prototypes moved: ${protoMoved}`);
  // measured 2026-12-04: 1.2e-4, 1.6e-4, 1.4e-4. The contrastive loss at temperature 0.1 amplifies float
  // rounding step by step: one thread's own BN gradient by formula against tfjs's autodiff (both exact,
  // 6e-5 apart on bn1.bias at step 1, 1e-5 elsewhere) ends as far apart after these 3 steps
  assert.ok(r.worstLoss < 1e-3, `losses agree: ${r.worstLoss}`);
  assert.ok(r.weightDiff < 1e-3, `weights agree: ${r.weightDiff}`);
  assert.ok(protoDiff < 1e-3, `prototypes agree: ${protoDiff}`);
});

test('the adversarial warm-up step over 2 replicas (the net, then D on the predictions each replica kept) equals its one-thread path over 3 steps', async (t) => {
  await selectBackend('wasm', { log: () => {} });
  const model = deeplabV2({ backbone: 'small', numClasses: 19, seed: 9 });
  model.setBatchNorm('trainable');
  const disc = discriminator({ numClasses: 19, ndf: 16, seed: 11 });
  const sb = batch(30, 4, [0, 20, 0, 64]);
  const tb = batch(40, 4, []);
  const netVars = [...model.store.params.values()];
  const dVars = [...disc.store.params.values()];
  const start = [...netVars, ...dVars].map((p) => p.variable.clone());
  // lambda_adv 0.1, not the paper's 0.001, so that the adversarial gradient moves the net visibly
  const o = { lr: 1e-3, lrD: 1e-3, lambdaAdv: 0.1, temperature: 1.8, trackSource: false, targetStats: false };
  const run = (dp: DataParallel | null) => {
    [...netVars, ...dVars].forEach((p, i) => p.variable.assign(start[i]!));
    const params = model.trainableParams();
    const opt = new SGD([{ params, lrMult: 1 }], { momentum: 0.9, weightDecay: 5e-4 });
    const dOpt = new Adam([{ params: dVars, lrMult: 1 }], { beta1: 0.9, beta2: 0.99 });
    const nets = { model, params, opt, disc: { net: disc, params: dVars, opt: dOpt } };
    const losses = [0, 1, 2].map(() =>
      dp
        ? parallelWarmupStep(dp, nets, { ...hostBatch(sb), target: hostBatch(tb).images! }, o, 'trainable').losses
        : tf.tidy(() => {
            const s = batchTensors(sb);
            return warmupStep(nets, { source: s.images, labels: s.labels!, target: batchTensors(tb).images }, o).losses;
          }),
    );
    opt.dispose();
    dOpt.dispose();
    const read = (ps: typeof netVars) => ps.map((p) => p.variable.dataSync().slice() as Float32Array);
    return { losses, net: read(netVars), d: read(dVars) };
  };
  const one = run(null);
  const replica = adversarialReplica(model, disc);
  const dp = await DataParallel.start({
    threads: 2,
    backend: 'wasm',
    program: { module: ADVERSARIAL_SHARD, description: { ...describeDeeplab(model), ndf: 16 } },
    replica,
  });
  let two;
  try {
    two = run(dp);
  } finally {
    await dp.close();
    replica.dispose();
  }
  // how far apart the two runs' weights are, over how far the one-thread run moved them
  const apart = (a: Float32Array[], b: Float32Array[], from: tf.Tensor[]) => {
    let diff = 0;
    let moved = 0;
    a.forEach((w, i) => {
      const s = from[i]!.dataSync();
      for (let j = 0; j < w.length; j++) {
        diff += (w[j]! - b[i]![j]!) ** 2;
        moved += (w[j]! - s[j]!) ** 2;
      }
    });
    return { ratio: Math.sqrt(diff / moved), moved: Math.sqrt(moved) };
  };
  const net = apart(one.net, two.net, start.slice(0, netVars.length));
  const d = apart(one.d, two.d, start.slice(netVars.length));
  let worstLoss = 0;
  one.losses.forEach((l, i) => {
    for (const k of Object.keys(l)) worstLoss = Math.max(worstLoss, Math.abs(l[k]! - two.losses[i]![k]!) / Math.abs(l[k]!));
  });
  tf.dispose(start);
  model.dispose();
  disc.dispose();
  t.diagnostic(
    `losses: max relative difference ${worstLoss.toExponential(2)}; net ${net.ratio.toExponential(2)}, D ${d.ratio.toExponential(2)} of their updates`,
  );
  assert.deepEqual(Object.keys(two.losses[0]!).sort(), ['adv', 'disc', 'seg', 'total']);
  assert.ok(d.moved > 0 && net.moved > 0, 'both nets trained');
  assert.ok(worstLoss < 1e-4, `losses agree: ${worstLoss}`);
  assert.ok(net.ratio < 1e-3, `the net's weights agree: ${net.ratio}`);
  assert.ok(d.ratio < 1e-3, `D's weights agree: ${d.ratio}`);
});

test('gradients over 3 replicas (shards of 2, 2 and 1 images, the gradient sum cut into 3 pieces) equal the one-thread gradients to float tolerance, and the same step twice gives the same bits, also after a larger batch went through the shared shard area', async () => {
  await selectBackend('wasm', { log: () => {} });
  const { benchLoss, benchNet } = await import('../../bench/step-program.ts');
  const net = benchNet('plain', 19);
  const [h, w] = [16, 32];
  const hostBatchOf = (n: number, seed: number) => {
    const images = tf.tidy(() => tf.randomNormal([n, h, w, 3], 0, 1, 'float32', seed).dataSync() as Float32Array);
    const labels = tf.tidy(() => tf.randomUniformInt([n, h, w], 0, 19, seed + 1).dataSync() as Int32Array);
    labels.fill(255, 0, 3 * w); // the first shard has fewer labelled pixels than the others
    return { images: { data: images, shape: [n, h, w, 3] }, labels: { data: labels, shape: [n, h, w] } };
  };
  const [host, larger] = [hostBatchOf(5, 11), hostBatchOf(7, 13)];
  // gradients as host arrays (tidy keeps only tensors)
  const hostGrads = (grads: Map<string, tf.Tensor>) => {
    const out = new Map([...grads].map(([k, g]) => [k, g.dataSync().slice() as Float32Array]));
    tf.dispose([...grads.values()]);
    return out;
  };
  const oneThread = (b: typeof host) => {
    const x = tf.tensor4d(b.images.data, b.images.shape as [number, number, number, number]);
    const y = tf.tensor3d(b.labels.data, b.labels.shape as [number, number, number], 'int32');
    const g = hostGrads(gradients(() => benchLoss(net, x, y), net.params).grads);
    tf.dispose([x, y]);
    return g;
  };
  const [one, oneLarger] = [oneThread(host), oneThread(larger)];
  const relative = (g: Map<string, Float32Array>, h: Map<string, Float32Array>) => {
    let [diff, norm] = [0, 0];
    for (const [k, v] of g) for (let i = 0; i < v.length; i++) [diff, norm] = [diff + (v[i]! - h.get(k)![i]!) ** 2, norm + v[i]! ** 2];
    assert.ok(norm > 0);
    return Math.sqrt(diff / norm);
  };
  const dp = await DataParallel.start({
    threads: 3,
    backend: 'wasm',
    program: { module: new URL('../../bench/step-program.ts', import.meta.url).href, description: { net: 'plain', classes: 19 } },
    replica: net,
  });
  try {
    const step = (b: typeof host) => {
      const { grads, outputs } = dp.gradients(b, {}, net.params);
      tf.dispose([...outputs.values()]);
      return hostGrads(grads);
    };
    // the 7-image batch needs a larger shard area than the 5-image one: the area grows between a and c
    const [a, b, c, d] = [step(host), step(host), step(larger), step(host)];
    assert.deepEqual([...a.keys()].sort(), [...one.keys()].sort());
    for (const [k, g] of a)
      for (let i = 0; i < g.length; i++) {
        assert.ok(Object.is(g[i], b.get(k)![i]), `${k}[${i}]: ${g[i]} then ${b.get(k)![i]}`);
        assert.ok(Object.is(g[i], d.get(k)![i]), `${k}[${i}]: ${g[i]}, after the larger batch ${d.get(k)![i]}`);
      }
    assert.ok(relative(one, a) < 1e-5, `relative difference ${relative(one, a)}`);
    assert.ok(relative(oneLarger, c) < 1e-5, `relative difference (7 images) ${relative(oneLarger, c)}`);
    assert.ok(relative(one, oneLarger) > 0.01, 'the two batches give different gradients');
  } finally {
    await dp.close();
    net.dispose();
  }
});

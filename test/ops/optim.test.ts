import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { Adam, SGD, polyLR, setHostUpdates } from '../../src/ops/optim.ts';
import type { Param } from '../../src/ops/model/params.ts';
import { assertClose, seededValues, useBackend, withSwitch } from '../helpers.ts';

test('poly LR: REFERENCE 2 numbers (final LR 9.97e-5 warm-up/CL, 1.99e-4 SSL) and bad input', () => {
  assert.equal(polyLR(2.5e-4, 0, 62_500), 2.5e-4);
  assert.ok(Math.abs(polyLR(2.5e-4, 40_000, 62_500) - 9.97e-5) < 5e-8);
  assert.ok(Math.abs(polyLR(5e-4, 20_000, 31_250) - 1.99e-4) < 5e-7);
  assert.equal(polyLR(1, 5, 10, 1), 0.5);
  assert.throws(() => polyLR(1, 11, 10), /polyLR: iteration 11 outside 0..10/);
  assert.throws(() => polyLR(1, 0, 0), /polyLR: maxIter must be > 0, got 0/);
});

function param(name: string, values: number[], group: Param['group']): Param {
  return { name, group, role: 'weight', variable: tf.variable(tf.tensor1d(values), true, `t-${name}-${Math.random()}`) };
}

test('SGD follows PyTorch: d = g + wd*p; buf = mu*buf + d; p -= lr*mult*buf (two steps by hand)', async () => {
  await useBackend('cpu');
  const a = param('a', [1, -2], 'backbone');
  const b = param('b', [0.5], 'classifier');
  const opt = new SGD(
    [
      { params: [a], lrMult: 1 },
      { params: [b], lrMult: 10 },
    ],
    { momentum: 0.9, weightDecay: 0.1 },
  );
  const ga = [0.3, 0.4];
  const gb = [-1];
  // by hand, lr 0.1 then 0.05
  let pa = [1, -2];
  let pb = [0.5];
  let ba = [0, 0];
  let bb = [0];
  for (const lr of [0.1, 0.05]) {
    opt.step(
      new Map([
        ['a', tf.tensor1d(ga)],
        ['b', tf.tensor1d(gb)],
      ]),
      lr,
    );
    ba = ba.map((v, i) => 0.9 * v + ga[i]! + 0.1 * pa[i]!);
    pa = pa.map((v, i) => v - lr * ba[i]!);
    bb = bb.map((v, i) => 0.9 * v + gb[i]! + 0.1 * pb[i]!);
    pb = pb.map((v, i) => v - lr * 10 * bb[i]!);
  }
  assertClose(a.variable.dataSync(), pa, 1e-6, 'a');
  assertClose(b.variable.dataSync(), pb, 1e-6, 'b');
  const state = opt.getState();
  assertClose(state.slots.get('momentum:a')!.dataSync(), ba, 1e-6, 'momentum a');
  assert.throws(() => opt.step(new Map([['a', tf.tensor1d(ga)]]), 0.1), /optimizer: no gradient for parameter 'b'/);
  opt.dispose();
  a.variable.dispose();
  b.variable.dispose();
});

test('Adam follows PyTorch with betas (0.9, 0.99) and bias correction (two steps by hand)', async () => {
  await useBackend('cpu');
  const p = param('d', [0.2, -0.7], 'discriminator');
  const opt = new Adam([{ params: [p], lrMult: 1 }]);
  const grads = [
    [0.5, -0.1],
    [0.2, 0.3],
  ];
  let w = [0.2, -0.7];
  let m = [0, 0];
  let v = [0, 0];
  grads.forEach((g, t) => {
    opt.step(new Map([['d', tf.tensor1d(g)]]), 1e-2);
    m = m.map((x, i) => 0.9 * x + 0.1 * g[i]!);
    v = v.map((x, i) => 0.99 * x + 0.01 * g[i]! ** 2);
    const c1 = 1 - 0.9 ** (t + 1);
    const c2 = 1 - 0.99 ** (t + 1);
    w = w.map((x, i) => x - ((1e-2 / c1) * m[i]!) / (Math.sqrt(v[i]!) / Math.sqrt(c2) + 1e-8));
  });
  assertClose(p.variable.dataSync(), w, 1e-6, 'adam');
  opt.dispose();
  p.variable.dispose();
});

test('optimizer state round-trips through getState/setState and allocates no tensor per step', async () => {
  await useBackend('cpu');
  const p = param('w', [1, 2, 3], 'backbone');
  const opt = new SGD([{ params: [p], lrMult: 1 }]);
  const before = tf.memory().numTensors;
  for (let i = 0; i < 5; i++) {
    const g = tf.tensor1d([0.1, 0.2, 0.3]);
    opt.step(new Map([['w', g]]), 0.1);
    g.dispose();
  }
  assert.equal(tf.memory().numTensors, before);
  const copy = new SGD([{ params: [p], lrMult: 1 }]);
  copy.setState(opt.getState());
  assert.equal(copy.steps, 5);
  assertClose(copy.getState().slots.get('momentum:w')!.dataSync(), opt.getState().slots.get('momentum:w')!.dataSync(), 0, 'momentum');
  assert.throws(() => copy.setState({ kind: 'adam', step: 0, slots: new Map() }), /optimizer: state of kind 'adam' cannot load into 'sgd'/);
  opt.dispose();
  copy.dispose();
  p.variable.dispose();
});

test('constructing, loading state into and disposing optimisers leaves no tensor behind', async () => {
  await useBackend('cpu');
  const p = param('z', [1, 2], 'backbone');
  const base = tf.memory().numTensors;
  const sgd = new SGD([{ params: [p], lrMult: 1 }]);
  const adam = new Adam([{ params: [p], lrMult: 1 }]);
  // one slot per parameter for SGD (momentum), two for Adam (m, v)
  assert.equal(tf.memory().numTensors, base + 3);
  const other = new Adam([{ params: [p], lrMult: 1 }]);
  other.setState(adam.getState());
  assert.equal(tf.memory().numTensors, base + 5);
  for (const o of [sgd, adam, other]) o.dispose();
  assert.equal(tf.memory().numTensors, base);
  p.variable.dispose();
});

/** Differences between two arrays by Object.is: [count, first index]. */
function bitDifferences(a: Float32Array, b: Float32Array): [number, number] {
  let count = 0;
  let first = -1;
  for (let i = 0; i < a.length; i++)
    if (!Object.is(a[i], b[i])) {
      count++;
      if (first < 0) first = i;
    }
  return [count, first];
}

for (const backend of ['cpu', 'wasm'] as const) {
  test(`optimisers on ${backend}: the host loop gives the kernels' weights and slots bit for bit over 20 steps`, async () => {
    await useBackend(backend);
    // values over many binades (to 1e-30, subnormal products included), signs mixed, some exact zeros
    const spread = (n: number, seed: number, scale: number) =>
      seededValues(n, seed).map((v, i) => (i % 17 === 0 ? 0 : v * scale * 10 ** -((i * 7) % 31)));
    const make = (hostLoop: boolean) => {
      const ps = [
        { name: 'conv.weight', group: 'backbone' as const, n: 3 * 3 * 4 * 5, shape: [3, 3, 4, 5] },
        { name: 'conv.bias', group: 'backbone' as const, n: 5, shape: [5] },
        { name: 'classifier.weight', group: 'classifier' as const, n: 1000, shape: [10, 100] },
        // past the wasm loop's size: kernels there, the loop on cpu
        { name: 'wide.weight', group: 'backbone' as const, n: 5000, shape: [50, 100] },
      ].map(
        ({ name, group, n, shape }, k): Param => ({
          name,
          group,
          role: 'weight',
          variable: tf.variable(tf.tensor(spread(n, 10 + k, 1), shape), true, `opt-${backend}-${hostLoop}-${name}`),
        }),
      );
      const optimisers = [
        new SGD([
          { params: [ps[0]!, ps[1]!, ps[3]!], lrMult: 1 },
          { params: [ps[2]!], lrMult: 10 },
        ]),
        new SGD([{ params: ps, lrMult: 1 }], { momentum: 0, weightDecay: 0 }),
        new Adam([{ params: ps, lrMult: 1 }], { beta1: 0.9, beta2: 0.99 }),
      ];
      return { ps, optimisers };
    };
    const runs = [true, false].map((hostLoop) => {
      const run = make(hostLoop);
      withSwitch(setHostUpdates, hostLoop, () => {
        const before = tf.memory().numTensors;
        for (let step = 0; step < 20; step++) {
          run.optimisers.forEach((opt, o) => {
            const grads = new Map(
              run.ps.map((p, k) => [p.name, tf.tensor(spread(p.variable.size, 100 * step + 10 * o + k, 3), p.variable.shape)]),
            );
            opt.step(grads, 2.5e-4 * (1 - step / 40) ** 0.9);
            tf.dispose([...grads.values()]);
          });
        }
        assert.equal(tf.memory().numTensors, before, `${hostLoop ? 'host loop' : 'kernels'}: tensors after 20 steps`);
      });
      return run;
    });
    const [host, kernels] = runs;
    host!.ps.forEach((p, k) => {
      const [n, at] = bitDifferences(p.variable.dataSync() as Float32Array, kernels!.ps[k]!.variable.dataSync() as Float32Array);
      assert.equal(n, 0, `${p.name}: ${n} weights differ, first at ${at}`);
    });
    host!.optimisers.forEach((opt, o) => {
      const other = kernels!.optimisers[o]!.getState().slots;
      for (const [key, t] of opt.getState().slots) {
        const [n, at] = bitDifferences(t.dataSync() as Float32Array, other.get(key)!.dataSync() as Float32Array);
        assert.equal(n, 0, `optimiser ${o}, slot ${key}: ${n} values differ, first at ${at}`);
      }
    });
    // the loop ran: the weights moved, and far (20 Adam steps of ~lr each)
    assert.ok(Math.abs(host!.ps[2]!.variable.dataSync()[1]! - spread(1000, 12, 1)[1]!) > 1e-3, 'classifier weight 1 moved');
    for (const run of runs) {
      for (const opt of run!.optimisers) opt.dispose();
      for (const p of run!.ps) p.variable.dispose();
    }
  });
}

test('optimiser host loop: a gradient of another shape is an error naming the parameter', async () => {
  await useBackend('wasm');
  const p = param('w', [1, 2, 3], 'backbone');
  const opt = new SGD([{ params: [p], lrMult: 1 }]);
  assert.throws(
    () => opt.step(new Map([['w', tf.tensor1d([0.1, 0.2])]]), 0.1),
    /^Error: optimizer: gradient of 'w' is float32 \[2\], expected float32 \[3\] like the parameter$/,
  );
  opt.dispose();
  p.variable.dispose();
});

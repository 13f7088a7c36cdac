import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { segCrossEntropy, contrastiveLoss, bceWithLogits, normalizeFeatures, setHostCrossEntropy } from '../../src/ops/losses.ts';
import { assertClose, finiteDiff, seededValues, useBackend, withSwitch } from '../helpers.ts';

type Shape4 = [number, number, number, number];

/** Random labels in 0..k-1 with about one pixel in five ignored (255). */
function randomLabels(n: number, k: number, seed: number): Int32Array {
  return Int32Array.from(seededValues(n, seed), (x, i) => (i % 5 === 2 ? 255 : Math.min(k - 1, Math.floor(((x + 1) / 2) * k))));
}

/** Plain-loop softmax cross-entropy of rows z[N,K] against labels (255 skipped), mean over valid rows. */
function ceRef(z: ArrayLike<number>, labels: ArrayLike<number>, k: number): number {
  let sum = 0;
  let n = 0;
  for (let i = 0; i < labels.length; i++) {
    const y = labels[i]!;
    if (y === 255) continue;
    let m = -Infinity;
    for (let j = 0; j < k; j++) m = Math.max(m, z[i * k + j]!);
    let s = 0;
    for (let j = 0; j < k; j++) s += Math.exp(z[i * k + j]! - m);
    sum += m + Math.log(s) - z[i * k + y]!;
    n++;
  }
  return n === 0 ? 0 : sum / n;
}

/** Plain-loop logits of the contrastive loss: normalise each pixel feature, dot with prototype rows, / T. */
function contrastiveLogitsRef(f: Float32Array, p: Float32Array, c: number, k: number, temperature: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < f.length / c; i++) {
    let norm = 0;
    for (let j = 0; j < c; j++) norm += f[i * c + j]! ** 2;
    norm = Math.max(Math.sqrt(norm), 1e-12);
    for (let q = 0; q < k; q++) {
      let d = 0;
      for (let j = 0; j < c; j++) d += (f[i * c + j]! / norm) * p[q * c + j]!;
      out.push(d / temperature);
    }
  }
  return out;
}

function scalar(t: tf.Scalar): number {
  const v = t.dataSync()[0]!;
  t.dispose();
  return v;
}

for (const backend of ['cpu', 'wasm'] as const) {
  test(`segCrossEntropy on ${backend}: value equals a plain loop, gradient equals (softmax - onehot)/(N T) and finite differences`, async () => {
    await useBackend(backend);
    const shape: Shape4 = [2, 3, 4, 5];
    const k = shape[3];
    const z = seededValues(2 * 3 * 4 * 5, 11).map((x) => x * 3);
    const lv = randomLabels(2 * 3 * 4, k, 12);
    const labels = tf.tensor3d(lv, [2, 3, 4], 'int32');
    for (const temperature of [1, 1.8]) {
      const logits = tf.tensor4d(z, shape);
      const before = tf.memory().numTensors;
      const got = scalar(segCrossEntropy(logits, labels, { temperature }));
      assert.equal(tf.memory().numTensors, before, 'segCrossEntropy leaks tensors');
      const want = ceRef(
        z.map((x) => x / temperature),
        lv,
        k,
      );
      assertClose([got], [want], 1e-6, `value T=${temperature}`);

      const g = tf.tidy(() =>
        tf
          .grad((x: tf.Tensor) => segCrossEntropy(x as tf.Tensor4D, labels, { temperature }))(logits)
          .dataSync()
          .slice(),
      );
      assert.equal(tf.memory().numTensors, before, 'segCrossEntropy gradient leaks tensors');
      // Reference gradient: (softmax(z/T) - onehot) / (N_valid * T), zero at ignored pixels.
      const nValid = lv.filter((y) => y !== 255).length;
      const ref = new Float64Array(z.length);
      for (let i = 0; i < lv.length; i++) {
        if (lv[i] === 255) continue;
        let s = 0;
        for (let j = 0; j < k; j++) s += Math.exp(z[i * k + j]! / temperature);
        for (let j = 0; j < k; j++)
          ref[i * k + j] = (Math.exp(z[i * k + j]! / temperature) / s - (j === lv[i] ? 1 : 0)) / (nValid * temperature);
      }
      assertClose(
        g.map((x) => x * nValid),
        ref.map((x) => x * nValid),
        1e-5,
        `analytic gradient T=${temperature}`,
      );
      // Central differences of nValid * loss, so that the compared numbers are O(1).
      const idx = [0, 3, 17, 42, 64, 99, 119];
      const f = (a: Float32Array) => tf.tidy(() => nValid * segCrossEntropy(tf.tensor4d(a, shape), labels, { temperature }).dataSync()[0]!);
      assertClose(
        idx.map((i) => g[i]! * nValid),
        finiteDiff(f, z, idx, 1e-2),
        2e-3,
        `finite differences T=${temperature}`,
      );
      logits.dispose();
    }
    labels.dispose();
  });

  test(`contrastiveLoss on ${backend}: value equals a plain loop, gradient matches finite differences, prototypes get none`, async () => {
    await useBackend(backend);
    const shape: Shape4 = [2, 3, 3, 6];
    const [b, h, w, c] = shape;
    const k = 4;
    const fv = seededValues(b * h * w * c, 21);
    const pv = seededValues(k * c, 22).map((x) => x * 0.8);
    const lv = randomLabels(b * h * w, k, 23);
    const features = tf.tensor4d(fv, shape);
    const mask = tf.tensor3d(lv, [b, h, w], 'int32');
    const protos = tf.tensor2d(pv, [k, c]);
    for (const temperature of [100, 0.3]) {
      const before = tf.memory().numTensors;
      const got = scalar(contrastiveLoss(features, mask, protos, { temperature }));
      assert.equal(tf.memory().numTensors, before, 'contrastiveLoss leaks tensors');
      assertClose([got], [ceRef(contrastiveLogitsRef(fv, pv, c, k, temperature), lv, k)], 1e-5, `value T=${temperature}`);
    }
    // Gradient w.r.t. features vs central differences (T = 0.3 so that the gradient is not tiny);
    // the prototypes are constants: their gradient is exactly zero.
    const temperature = 0.3;
    const nValid = lv.filter((y) => y !== 255).length;
    const before = tf.memory().numTensors;
    const [gf, gp] = tf.tidy(() =>
      tf
        .grads((x: tf.Tensor, p: tf.Tensor) => contrastiveLoss(x as tf.Tensor4D, mask, p as tf.Tensor2D, { temperature }))([
          features,
          protos,
        ])
        .map((t) => t.dataSync().slice()),
    );
    assert.equal(tf.memory().numTensors, before, 'contrastiveLoss gradient leaks tensors');
    assert.ok(
      gp!.every((v) => v === 0),
      'prototypes must receive no gradient',
    );
    const idx = [0, 5, 13, 40, 61, 77, 100, 107];
    const f = (a: Float32Array) =>
      tf.tidy(() => nValid * contrastiveLoss(tf.tensor4d(a, shape), mask, protos, { temperature }).dataSync()[0]!);
    assertClose(
      idx.map((i) => gf![i]! * nValid),
      finiteDiff(f, fv, idx, 1e-2),
      2e-3,
      'finite differences',
    );
    tf.dispose([features, mask, protos]);
  });
}

for (const backend of ['cpu', 'wasm'] as const) {
  test(`segCrossEntropy on ${backend}: the host op (one softmax, a loop) equals the tensor formula in value and gradient, weights, odd labels and underflow included`, async () => {
    await useBackend(backend);
    const shape: Shape4 = [2, 16, 24, 19];
    const [b, h, w, k] = shape;
    const n = b * h * w;
    const z = seededValues(n * k, 21).map((x) => x * 4);
    // rows 5 and 6: the label's logit 150 below the others (softmax underflows in float32, log-softmax does not)
    for (const row of [5, 6]) for (let j = 0; j < k; j++) z[row * k + j] = j === 3 ? -150 : z[row * k + j]!;
    const lv = randomLabels(n, k, 22);
    lv[5] = 3;
    lv[6] = 3;
    lv[7] = -1;
    lv[8] = k; // out of range: ignored like 255
    const labels = tf.tensor3d(lv, [b, h, w], 'int32');
    const pixelWeights = tf.tensor3d(
      seededValues(n, 23).map((x) => (x + 1) / 2),
      [b, h, w],
    );
    const logits = tf.tensor4d(z, shape);
    for (const opts of [{}, { temperature: 1.8 }, { pixelWeights }]) {
      const run = (host: boolean) =>
        withSwitch(setHostCrossEntropy, host, () =>
          tf.tidy(() => {
            const { value, grad } = tf.valueAndGrad(
              (x: tf.Tensor) => tf.mul(segCrossEntropy(x as tf.Tensor4D, labels, opts), 3) as tf.Scalar,
            )(logits);
            return { value: value.dataSync()[0]!, grad: grad.dataSync().slice() as Float32Array };
          }),
        );
      const before = tf.memory().numTensors;
      const host = run(true);
      assert.equal(tf.memory().numTensors, before, 'the host op leaks tensors');
      const formula = run(false);
      const what = `${JSON.stringify(Object.keys(opts))}`;
      assert.ok(
        Number.isFinite(host.value) && host.value > (3 * (150 * 2)) / n,
        `${what}: value ${host.value} counts the underflowing rows`,
      );
      assertClose([host.value], [formula.value], 1e-6, `value ${what}`);
      // gradient of 3 * loss (dy = 3 reaches the op): rows are O(1 / valid), compare at that scale
      const valid = lv.filter((y) => y >= 0 && y < k).length;
      assertClose(
        host.grad.map((x) => x * valid),
        formula.grad.map((x) => x * valid),
        1e-5,
        `gradient ${what}`,
      );
      for (const row of [7, 8]) for (let j = 0; j < k; j++) assert.equal(host.grad[row * k + j], 0, `${what}: ignored row ${row}`);
    }
    tf.dispose([labels, pixelWeights, logits]);
  });
}

test('contrastiveLoss at random init with temperature 100 is about ln K per domain, 2 ln K for source + target', async () => {
  await useBackend('cpu');
  const k = 19;
  const c = 64;
  // Post-ReLU-like features (non-negative) and prototypes that are class means of normalised features.
  const src = tf.tensor4d(seededValues(2 * 8 * 8 * c, 31).map(Math.abs), [2, 8, 8, c]);
  const tgt = tf.tensor4d(seededValues(2 * 8 * 8 * c, 32).map(Math.abs), [2, 8, 8, c]);
  const ms = tf.tensor3d(randomLabels(2 * 8 * 8, k, 33), [2, 8, 8], 'int32');
  const mt = tf.tensor3d(randomLabels(2 * 8 * 8, k, 34), [2, 8, 8], 'int32');
  const protos = tf.tidy(() => normalizeFeatures(tf.tensor2d(seededValues(k * c, 35).map(Math.abs), [k, c])).mul(0.9)) as tf.Tensor2D;
  const ls = scalar(contrastiveLoss(src, ms, protos));
  const lt = scalar(contrastiveLoss(tgt, mt, protos));
  assert.ok(Math.abs(ls - Math.log(k)) < 0.01, `source ${ls} vs ln 19 = ${Math.log(k)}`);
  assert.ok(Math.abs(ls + lt - 2 * Math.log(k)) < 0.01, `source + target ${ls + lt} vs 2 ln 19 = 5.889`);
  tf.dispose([src, tgt, ms, mt, protos]);
});

test('both CE losses return 0 (not NaN) with zero gradient when every pixel is ignored; zero features give finite gradients', async () => {
  await useBackend('cpu');
  const logits = tf.tensor4d(seededValues(2 * 2 * 2 * 3, 41), [2, 2, 2, 3]);
  const none = tf.fill([2, 2, 2], 255, 'int32') as tf.Tensor3D;
  const protos = tf.tensor2d(seededValues(3 * 3, 42), [3, 3]);
  assert.equal(scalar(segCrossEntropy(logits, none)), 0);
  assert.equal(scalar(contrastiveLoss(logits, none, protos)), 0);
  const g = tf.tidy(() =>
    tf
      .grad((x: tf.Tensor) => segCrossEntropy(x as tf.Tensor4D, none))(logits)
      .dataSync()
      .slice(),
  );
  assert.ok(g.every((v) => v === 0));
  // An all-zero pixel feature (dead ReLU): value and gradient stay finite (normalised by max(‖f‖, 1e-12)).
  const zf = tf.tensor4d([0, 0, 0, 1, 2, 3], [1, 1, 2, 3]);
  const zm = tf.tensor3d([1, 2], [1, 1, 2], 'int32');
  const zl = scalar(contrastiveLoss(zf, zm, protos, { temperature: 0.5 }));
  const zg = tf.tidy(() =>
    tf
      .grad((x: tf.Tensor) => contrastiveLoss(x as tf.Tensor4D, zm, protos, { temperature: 0.5 }))(zf)
      .dataSync()
      .slice(),
  );
  assert.ok(Number.isFinite(zl) && zg.every(Number.isFinite), `loss ${zl}, gradient ${Array.from(zg)}`);
  tf.dispose([logits, none, protos, zf, zm]);
});

for (const backend of ['cpu', 'wasm'] as const) {
  test(`bceWithLogits on ${backend} equals -[t log s(x) + (1-t) log(1 - s(x))], stable for large |x|`, async () => {
    await useBackend(backend);
    const xv = seededValues(30, 51).map((x) => x * 6);
    const x = tf.tensor3d(xv, [2, 3, 5]);
    for (const t of [0, 1]) {
      const before = tf.memory().numTensors;
      const got = scalar(bceWithLogits(x, t));
      assert.equal(tf.memory().numTensors, before, 'bceWithLogits leaks tensors');
      let want = 0;
      for (const v of xv) {
        const s = 1 / (1 + Math.exp(-v));
        want -= t * Math.log(s) + (1 - t) * Math.log(1 - s);
      }
      assertClose([got], [want / xv.length], 1e-6, `t=${t}`);
      // d/dx mean BCE = (sigmoid(x) - t) / n
      const g = tf.tidy(() =>
        tf
          .grad((a: tf.Tensor) => bceWithLogits(a, t))(x)
          .dataSync()
          .slice(),
      );
      assertClose(
        Array.from(g, (v) => v * xv.length),
        Array.from(xv, (v) => 1 / (1 + Math.exp(-v)) - t),
        1e-5,
        `gradient t=${t}`,
      );
    }
    const big = tf.tensor1d([200, -200]);
    assertClose([scalar(bceWithLogits(big, 0))], [100], 1e-6, 'large logits, t=0');
    assertClose([scalar(bceWithLogits(big, 1))], [100], 1e-6, 'large logits, t=1');
    tf.dispose([x, big]);
  });
}

test('losses reject bad ranks, shapes and options with messages that name the argument', async () => {
  await useBackend('cpu');
  const f = tf.zeros([2, 5, 5, 8]) as tf.Tensor4D;
  const p = tf.zeros([19, 8]) as tf.Tensor2D;
  const m = tf.zeros([2, 4, 4], 'int32') as tf.Tensor3D;
  const m5 = tf.zeros([2, 5, 5], 'int32') as tf.Tensor3D;
  const bad = tf.zeros([2, 3]);
  assert.throws(
    () => contrastiveLoss(bad as unknown as tf.Tensor4D, m5, p),
    /^Error: contrastiveLoss: features must be rank 4 \[B,h,w,C\], got shape \[2,3\]$/,
  );
  assert.throws(() => contrastiveLoss(f, m, p), /^Error: contrastiveLoss: mask \[2,4,4\] does not match features \[2,5,5,8\]$/);
  assert.throws(
    () => contrastiveLoss(f, bad as unknown as tf.Tensor3D, p),
    /contrastiveLoss: mask must be rank 3 \[B,h,w\], got shape \[2,3\]/,
  );
  assert.throws(() => contrastiveLoss(f, tf.zeros([2, 5, 5]) as tf.Tensor3D, p), /contrastiveLoss: mask must be int32, got float32/);
  assert.throws(
    () => contrastiveLoss(f, m5, tf.zeros([19, 7]) as tf.Tensor2D),
    /contrastiveLoss: prototypes \[19,7\] have 7 channels but features \[2,5,5,8\] have 8/,
  );
  assert.throws(
    () => contrastiveLoss(f, m5, tf.zeros([19]) as unknown as tf.Tensor2D),
    /contrastiveLoss: prototypes must be rank 2 \[K,C\], got shape \[19\]/,
  );
  assert.throws(() => contrastiveLoss(f, m5, p, { temperature: 0 }), /contrastiveLoss: temperature must be > 0, got 0/);
  assert.throws(
    () => segCrossEntropy(bad as unknown as tf.Tensor4D, m5),
    /segCrossEntropy: logits must be rank 4 \[B,h,w,K\], got shape \[2,3\]/,
  );
  assert.throws(() => segCrossEntropy(f, m), /segCrossEntropy: labels \[2,4,4\] does not match logits \[2,5,5,8\]/);
  assert.throws(() => segCrossEntropy(f, m5, { temperature: -1 }), /segCrossEntropy: temperature must be > 0, got -1/);
  assert.throws(() => bceWithLogits(f, 0.5), /bceWithLogits: target must be 0 or 1, got 0.5/);
  tf.dispose([f, p, m, m5, bad]);
});

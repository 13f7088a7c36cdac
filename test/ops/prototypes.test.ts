import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { updatePrototypes, PrototypeAccumulator } from '../../src/ops/prototypes.ts';
import { useBackend, seededValues, assertClose } from '../helpers.ts';

/** Random labels in 0..k-2 (class k-1 never appears), about one pixel in six ignored. */
function labelsWithoutLast(n: number, k: number, seed: number): Int32Array {
  return Int32Array.from(seededValues(n, seed), (x, i) => (i % 6 === 1 ? 255 : Math.min(k - 2, Math.floor(((x + 1) / 2) * (k - 1)))));
}

function normalised(f: Float32Array, c: number): Float64Array {
  const out = new Float64Array(f.length);
  for (let i = 0; i < f.length / c; i++) {
    let n = 0;
    for (let j = 0; j < c; j++) n += f[i * c + j]! ** 2;
    n = Math.max(Math.sqrt(n), 1e-12);
    for (let j = 0; j < c; j++) out[i * c + j] = f[i * c + j]! / n;
  }
  return out;
}

/** Plain-loop class means of normalised features over the pixels [from, to); null for absent classes. */
function classMeans(fh: Float64Array, labels: Int32Array, from: number, to: number, k: number, c: number): (number[] | null)[] {
  const sums = Array.from({ length: k }, () => new Array<number>(c).fill(0));
  const counts = new Array<number>(k).fill(0);
  for (let i = from; i < to; i++) {
    const y = labels[i]!;
    if (y === 255) continue;
    counts[y]!++;
    for (let j = 0; j < c; j++) sums[y]![j]! += fh[i * c + j]!;
  }
  return sums.map((s, q) => (counts[q] ? s.map((v) => v / counts[q]!) : null));
}

for (const backend of ['cpu', 'wasm'] as const) {
  test(`updatePrototypes on ${backend}: pixel-weighted EMA of normalised class means; absent classes kept or decayed`, async () => {
    await useBackend(backend);
    const [b, h, w, c, k] = [2, 3, 4, 5, 4];
    const fv = seededValues(b * h * w * c, 1);
    const lv = labelsWithoutLast(b * h * w, k, 2);
    const pv = seededValues(k * c, 3);
    const features = tf.tensor4d(fv, [b, h, w, c]);
    const mask = tf.tensor3d(lv, [b, h, w], 'int32');
    const protos = tf.tensor2d(pv, [k, c]);
    const means = classMeans(normalised(fv, c), lv, 0, b * h * w, k, c);
    assert.equal(means[k - 1], null, 'the test needs an absent class');
    for (const alpha of [0.1, 0.35]) {
      for (const absent of ['keep', 'decay'] as const) {
        const before = tf.memory().numTensors;
        const out = updatePrototypes(protos, features, mask, { alpha, absent });
        const got = out.dataSync().slice();
        out.dispose();
        assert.equal(tf.memory().numTensors, before, 'updatePrototypes leaks tensors');
        const want: number[] = [];
        for (let q = 0; q < k; q++) {
          for (let j = 0; j < c; j++) {
            const p = pv[q * c + j]!;
            const m = means[q];
            want.push(m ? alpha * p + (1 - alpha) * m[j]! : absent === 'keep' ? p : alpha * p);
          }
        }
        assertClose(got, want, 1e-6, `alpha ${alpha} absent ${absent}`);
      }
    }
    // Default options: alpha 0.1, absent 'keep'.
    const d = tf.tidy(() => updatePrototypes(protos, features, mask).dataSync().slice());
    const e = tf.tidy(() => updatePrototypes(protos, features, mask, { alpha: 0.1, absent: 'keep' }).dataSync().slice());
    assert.deepEqual(d, e);
    // The features are detached: no gradient flows through the update.
    const g = tf.tidy(() =>
      tf
        .grad((x: tf.Tensor) => updatePrototypes(protos, x as tf.Tensor4D, mask).sum())(features)
        .dataSync()
        .slice(),
    );
    assert.ok(
      g.every((v) => v === 0),
      'features must receive no gradient from the prototype update',
    );
    tf.dispose([features, mask, protos]);
  });

  test(`PrototypeAccumulator on ${backend}: mean over images of per-image class means; missing classes reported`, async () => {
    await useBackend(backend);
    const [h, w, c, k] = [3, 3, 4, 5];
    const acc = new PrototypeAccumulator(k, c);
    const batches = [
      { b: 2, f: seededValues(2 * h * w * c, 11), l: labelsWithoutLast(2 * h * w, k, 12) },
      { b: 3, f: seededValues(3 * h * w * c, 13), l: labelsWithoutLast(3 * h * w, k, 14) },
    ];
    // Class 2 appears in one image only: its count must be 1, not the number of images or pixels.
    for (const batch of batches) batch.l = batch.l.map((y) => (y === 2 ? 0 : y));
    batches[1]!.l[5] = 2;
    batches[1]!.l[6] = 2;
    const sums = Array.from({ length: k }, () => new Array<number>(c).fill(0));
    const images = new Array<number>(k).fill(0);
    for (const { b, f, l } of batches) {
      const fh = normalised(f, c);
      for (let i = 0; i < b; i++) {
        classMeans(fh, l, i * h * w, (i + 1) * h * w, k, c).forEach((m, q) => {
          if (!m) return;
          images[q]!++;
          m.forEach((v, j) => {
            sums[q]![j]! += v;
          });
        });
      }
      const ft = tf.tensor4d(f, [b, h, w, c]);
      const lt = tf.tensor3d(l, [b, h, w], 'int32');
      const before = tf.memory().numTensors;
      acc.add(ft, lt);
      assert.equal(tf.memory().numTensors, before, 'PrototypeAccumulator.add leaks tensors');
      tf.dispose([ft, lt]);
    }
    const before = tf.memory().numTensors;
    const r = acc.result();
    assert.equal(tf.memory().numTensors, before + 1, 'result() returns exactly one tensor');
    assert.deepEqual(r.prototypes.shape, [k, c]);
    assert.deepEqual(r.counts, images);
    assert.equal(images[2], 1);
    assert.deepEqual(r.missing, [k - 1]);
    const want = sums.flatMap((s, q) => s.map((v) => (images[q] ? v / images[q]! : 0)));
    assertClose(r.prototypes.dataSync(), want, 1e-6, 'prototypes');
    r.prototypes.dispose();
    acc.dispose();
    assert.equal(tf.memory().numTensors, before);
  });
}

test('prototype ops reject bad shapes and options with clear messages', async () => {
  await useBackend('cpu');
  const p = tf.zeros([4, 5]) as tf.Tensor2D;
  const f = tf.zeros([2, 3, 3, 5]) as tf.Tensor4D;
  const m = tf.zeros([2, 3, 3], 'int32') as tf.Tensor3D;
  assert.throws(
    () => updatePrototypes(tf.zeros([4]) as unknown as tf.Tensor2D, f, m),
    /updatePrototypes: prototypes must be rank 2 \[K,C\], got shape \[4\]/,
  );
  assert.throws(
    () => updatePrototypes(p, tf.zeros([2, 3, 3, 6]) as tf.Tensor4D, m),
    /updatePrototypes: features \[2,3,3,6\] have 6 channels, expected 5/,
  );
  assert.throws(
    () => updatePrototypes(p, tf.zeros([3, 5]) as unknown as tf.Tensor4D, m),
    /updatePrototypes: features must be rank 4 \[B,h,w,C\], got shape \[3,5\]/,
  );
  assert.throws(
    () => updatePrototypes(p, f, tf.zeros([2, 3, 4], 'int32') as tf.Tensor3D),
    /updatePrototypes: mask \[2,3,4\] does not match features \[2,3,3,5\]/,
  );
  assert.throws(() => updatePrototypes(p, f, tf.zeros([2, 3, 3]) as tf.Tensor3D), /updatePrototypes: mask must be int32, got float32/);
  assert.throws(() => updatePrototypes(p, f, m, { alpha: 1.5 }), /updatePrototypes: alpha must be in \[0, 1\], got 1.5/);
  assert.throws(
    () => updatePrototypes(p, f, m, { absent: 'zero' as 'keep' }),
    /updatePrototypes: absent must be 'keep' or 'decay', got 'zero'/,
  );
  const acc = new PrototypeAccumulator(4, 5);
  assert.throws(
    () => acc.add(tf.zeros([2, 3, 3, 7]) as tf.Tensor4D, m),
    /PrototypeAccumulator.add: features \[2,3,3,7\] have 7 channels, expected 5/,
  );
  assert.throws(
    () => acc.add(f, tf.zeros([1, 3, 3], 'int32') as tf.Tensor3D),
    /PrototypeAccumulator.add: mask \[1,3,3\] does not match features \[2,3,3,5\]/,
  );
  assert.throws(() => new PrototypeAccumulator(0, 5), /numClasses must be a positive integer, got 0/);
  // Nothing added: every class is missing, prototypes are zeros (no crash).
  const r = acc.result();
  assert.deepEqual(r.missing, [0, 1, 2, 3]);
  assert.ok(r.prototypes.dataSync().every((v) => v === 0));
  tf.dispose([p, f, m, r.prototypes]);
});

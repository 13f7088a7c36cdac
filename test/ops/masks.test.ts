import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { validateMask, downsampleLabels, refineSourceMask, maskOneHot } from '../../src/ops/masks.ts';
import { useBackend, seededValues } from '../helpers.ts';

/** Random int labels in 0..k-1, with about 1 in 7 set to 255. */
function randomLabels(shape: [number, number, number], k: number, seed: number): Int32Array {
  const v = seededValues(shape[0] * shape[1] * shape[2], seed);
  return Int32Array.from(v, (x, i) => (i % 7 === 3 ? 255 : Math.floor(((x + 1) / 2) * k)));
}

/** Plain-loop PyTorch legacy nearest: out[b,i,j] = in[b, floor(i*H/h), floor(j*W/w)]. */
function nearestRef(src: Int32Array, [b, H, W]: [number, number, number], [h, w]: [number, number]): number[] {
  const out: number[] = [];
  for (let n = 0; n < b; n++) {
    for (let i = 0; i < h; i++) {
      for (let j = 0; j < w; j++) out.push(src[n * H * W + Math.floor((i * H) / h) * W + Math.floor((j * W) / w)]!);
    }
  }
  return out;
}

function checkDownsample(shape: [number, number, number], size: [number, number], seed: number): void {
  const src = randomLabels(shape, 19, seed);
  const labels = tf.tensor3d(src, shape, 'int32');
  const before = tf.memory().numTensors;
  const out = downsampleLabels(labels, size);
  assert.deepEqual(out.shape, [shape[0], size[0], size[1]]);
  assert.equal(out.dtype, 'int32');
  assert.deepEqual(Array.from(out.dataSync()), nearestRef(src, shape, size), `${shape} -> ${size}`);
  out.dispose();
  assert.equal(tf.memory().numTensors, before, 'downsampleLabels leaks tensors');
  labels.dispose();
}

for (const backend of ['cpu', 'wasm'] as const) {
  test(`downsampleLabels on ${backend} equals floor(i*H/h), floor(j*W/w) (factor 8, odd ratios, upsampling)`, async () => {
    await useBackend(backend);
    checkDownsample([2, 24, 40], [3, 5], 1); // factor 8: picks (8i, 8j)
    checkDownsample([1, 7, 9], [3, 4], 2);
    checkDownsample([2, 13, 11], [5, 6], 3);
    checkDownsample([1, 3, 4], [7, 9], 4); // upsampling
    checkDownsample([1, 5, 6], [5, 6], 5); // identity
  });
}

test('downsampleLabels factor 8 takes the top-left pixel of each 8x8 block', async () => {
  await useBackend('cpu');
  const src = Int32Array.from({ length: 16 * 16 }, (_, i) => i % 250);
  const out = tf.tidy(() => Array.from(downsampleLabels(tf.tensor3d(src, [1, 16, 16], 'int32'), [2, 2]).dataSync()));
  assert.deepEqual(out, [src[0], src[8], src[8 * 16], src[8 * 16 + 8]]);
});

for (const backend of ['cpu', 'wasm'] as const) {
  test(`refineSourceMask on ${backend}: disagreeing labels become 255, 255 stays 255`, async () => {
    await useBackend(backend);
    // 1 image, 1x4 pixels, K = 3. argmax = [2, 0, 1, 1].
    const logits = tf.tensor4d([0, 1, 5, 3, 2, 1, 0, 4, 1, 0.5, 0.9, 0.1], [1, 1, 4, 3]);
    const labels = tf.tensor3d([2, 1, 255, 1], [1, 1, 4], 'int32');
    const before = tf.memory().numTensors;
    const out = refineSourceMask(labels, logits);
    assert.equal(out.dtype, 'int32');
    assert.deepEqual(Array.from(out.dataSync()), [2, 255, 255, 1]);
    out.dispose();
    assert.equal(tf.memory().numTensors, before);
    tf.dispose([logits, labels]);
  });

  test(`validateMask on ${backend}: accepts 0..K-1 and 255, names an offending value and the count`, async () => {
    await useBackend(backend);
    const ok = tf.tensor3d([0, 18, 255, 5], [1, 2, 2], 'int32');
    const before = tf.memory().numTensors;
    validateMask(ok, 19, 'ok.png');
    assert.equal(tf.memory().numTensors, before, 'validateMask leaks on success');
    const high = tf.tensor3d([0, 19, 255, 19], [1, 2, 2], 'int32');
    assert.throws(
      () => validateMask(high, 19, 'a.png'),
      (e: Error) => {
        assert.equal(e.message, 'a.png: mask contains value 19 outside 0..18 and 255 (2 pixels)');
        return true;
      },
    );
    const neg = tf.tensor2d(
      [
        [0, -3],
        [1, 2],
      ],
      [2, 2],
      'int32',
    );
    assert.throws(() => validateMask(neg, 19, 'b'), /^Error: b: mask contains value -3 outside 0\.\.18 and 255 \(1 pixel\)$/);
    const mid = tf.tensor1d([254, 0], 'int32');
    assert.throws(() => validateMask(mid, 16, 'pseudo'), /pseudo: mask contains value 254 outside 0\.\.15 and 255/);
    const flt = tf.tensor1d([0, 1], 'float32');
    assert.throws(
      () => validateMask(flt, 19, 'c.png'),
      /c\.png: mask must be int32 \(train IDs, 255 = ignore\), got float32 of shape \[2\]/,
    );
    assert.equal(tf.memory().numTensors, before + 4, 'validateMask leaks when it throws');
    tf.dispose([ok, high, neg, mid, flt]);
  });
}

test('mask ops reject wrong ranks, dtypes and sizes with clear messages', async () => {
  await useBackend('cpu');
  const l2 = tf.zeros([4, 4], 'int32') as unknown as tf.Tensor3D;
  assert.throws(() => downsampleLabels(l2, [2, 2]), /downsampleLabels: labels must be rank 3 \[B,h,w\], got shape \[4,4\]/);
  const lf = tf.zeros([1, 4, 4]) as tf.Tensor3D;
  assert.throws(() => downsampleLabels(lf, [2, 2]), /downsampleLabels: labels must be int32, got float32/);
  const l3 = tf.zeros([1, 4, 4], 'int32') as tf.Tensor3D;
  assert.throws(() => downsampleLabels(l3, [0, 2]), /size must be two positive integers \[h, w\], got \[0,2\]/);
  const lg = tf.zeros([1, 4, 5, 3]) as tf.Tensor4D;
  assert.throws(() => refineSourceMask(l3, lg), /refineSourceMask: labels \[1,4,4\] do not match logits \[1,4,5,3\]/);
  assert.throws(
    () => refineSourceMask(l3, tf.zeros([4, 4, 3]) as unknown as tf.Tensor4D),
    /logits must be rank 4 \[B,h,w,K\], got shape \[4,4,3\]/,
  );
  tf.dispose([l2, lf, l3, lg]);
});

test('maskOneHot gives zero rows for 255 and out-of-range values (cpu and wasm)', async () => {
  for (const backend of ['cpu', 'wasm'] as const) {
    await useBackend(backend);
    const m = tf.tensor1d([0, 2, 255, -1, 3, 1], 'int32');
    const out = tf.tidy(() => Array.from(maskOneHot(m, 3).dataSync()));
    assert.deepEqual(out, [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], backend);
    m.dispose();
  }
});

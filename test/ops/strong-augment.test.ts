import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import {
  blurKernelSize,
  drawStrongAugment,
  gaussianKernel,
  hueMatrix,
  strongAugment,
  STRONG_AUGMENT_DEFAULTS,
  type StrongDraw,
} from '../../src/ops/strong-augment.ts';
import { Rng } from '../../src/data/rng.ts';
import { assertClose, seededValues, useBackend } from '../helpers.ts';

const NORM = { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };

/** Plain-loop reference of one image (H x W x 3 normalised values, row-major) under one draw. */
function reference(img: Float32Array, h: number, w: number, d: StrongDraw): Float32Array {
  const n = h * w;
  let x = Array.from({ length: n }, (_, p) => [0, 1, 2].map((c) => img[3 * p + c]! * NORM.std[c]! + NORM.mean[c]!));
  const clip = (v: number) => Math.min(1, Math.max(0, v));
  const luma = (p: number[]) => 0.299 * p[0]! + 0.587 * p[1]! + 0.114 * p[2]!;
  if (d.jitter) {
    const j = d.jitter;
    x = x.map((p) => p.map((v) => clip(v * j.brightness)));
    const m = x.reduce((s, p) => s + luma(p), 0) / n;
    x = x.map((p) => p.map((v) => clip((v - m) * j.contrast + m)));
    x = x.map((p) => {
      const l = luma(p);
      return p.map((v) => clip((v - l) * j.saturation + l));
    });
    const hm = hueMatrix(j.hue);
    x = x.map((p) => hm.map((row) => clip(row[0]! * p[0]! + row[1]! * p[1]! + row[2]! * p[2]!)));
  }
  if (d.blurSigma !== null) {
    const reflect = (i: number, len: number) => (i < 0 ? -i : i >= len ? 2 * len - 2 - i : i);
    const pass = (kLen: number, vertical: boolean) => {
      const k = gaussianKernel(kLen, d.blurSigma!);
      const r = (kLen - 1) / 2;
      return x.map((_, p) => {
        const y = Math.floor(p / w);
        const xx = p % w;
        return [0, 1, 2].map((c) =>
          Array.from(k).reduce((s, kv, t) => {
            const q = vertical ? reflect(y + t - r, h) * w + xx : y * w + reflect(xx + t - r, w);
            return s + kv * x[q]![c]!;
          }, 0),
        );
      });
    };
    x = pass(blurKernelSize(h), true);
    x = pass(blurKernelSize(w), false);
  }
  return Float32Array.from(x.flatMap((p) => p.map((v, c) => (v - NORM.mean[c]!) / NORM.std[c]!)));
}

test('strongAugment equals a plain-loop reference: jitter (brightness, contrast, saturation, hue) and reflect-padded Gaussian blur, per image', async () => {
  await useBackend('cpu');
  const [h, w] = [24, 32]; // kernels 3 (ceil 2.4) and 3 (ceil 3.2 = 4, the odd one below)
  const raw = seededValues(3 * h * w * 3, 5); // [-1, 1): about the range of normalised pixels
  const draws: StrongDraw[] = [
    { jitter: { brightness: 1.15, contrast: 0.85, saturation: 1.1, hue: 0.07 }, blurSigma: 0.9 },
    { jitter: null, blurSigma: null }, // untouched
    { jitter: { brightness: 0.9, contrast: 1.2, saturation: 0.8, hue: -0.15 }, blurSigma: null },
  ];
  const before = tf.memory().numTensors;
  const x = tf.tensor4d(raw, [3, h, w, 3]);
  const y = strongAugment(x, draws, NORM);
  const got = y.dataSync();
  const per = h * w * 3;
  for (let i = 0; i < 3; i++) {
    const img = raw.subarray(i * per, (i + 1) * per);
    assertClose(got.subarray(i * per, (i + 1) * per), reference(img, h, w, draws[i]!), 2e-5, `image ${i}`);
  }
  // the untouched image comes back bit for bit
  assert.deepEqual(Array.from(got.subarray(per, 2 * per)), Array.from(raw.subarray(per, 2 * per)));
  tf.dispose([x, y]);
  assert.equal(tf.memory().numTensors, before, 'tensors leaked');
  assert.throws(() => strongAugment(tf.zeros([2, 4, 4, 3]) as tf.Tensor4D, draws, NORM), {
    message: 'strongAugment: 3 draws for 2 images',
  });
});

test('strong augmentation pieces by hand: kernel sizes, Gaussian weights, hue rotation keeps grey, blur keeps a flat image', async () => {
  await useBackend('cpu');
  assert.deepEqual([8, 20, 21, 24, 32, 64, 128, 512].map(blurKernelSize), [1, 1, 3, 3, 3, 7, 13, 51]);
  const k = gaussianKernel(3, 1);
  const e = Math.exp(-0.5);
  assertClose(k, [e / (1 + 2 * e), 1 / (1 + 2 * e), e / (1 + 2 * e)], 1e-7, 'gaussian 3, sigma 1');
  // a hue shift rotates chroma: grey stays grey, a full turn is the identity, the luma row is kept
  const m = hueMatrix(0.3);
  for (const row of m) assertClose([row.reduce((a, b) => a + b, 0)], [1], 1e-6, 'grey kept');
  hueMatrix(1).forEach((row, i) =>
    assertClose(
      row,
      [0, 1, 2].map((j) => (i === j ? 1 : 0)),
      1e-6,
      'full turn',
    ),
  );
  // a flat image under any blur is itself
  const flat = tf.fill([1, 24, 24, 3], 0.25) as tf.Tensor4D;
  assertClose(
    strongAugment(flat, [{ jitter: null, blurSigma: 1.1 }], NORM).dataSync(),
    new Float32Array(24 * 24 * 3).fill(0.25),
    1e-6,
    'flat',
  );
});

test('drawStrongAugment: seeded, jitter share 0.8 and blur share 0.5, factors in [1 - s, 1 + s], sigma in [0.15, 1.15]', () => {
  const a = drawStrongAugment(4, Rng.derive(3, 64, 10));
  assert.deepEqual(a, drawStrongAugment(4, Rng.derive(3, 64, 10)));
  assert.notDeepEqual(a, drawStrongAugment(4, Rng.derive(3, 64, 11)));
  const many = drawStrongAugment(20_000, new Rng(1));
  const jit = many.filter((d) => d.jitter).length / many.length;
  const blur = many.filter((d) => d.blurSigma !== null).length / many.length;
  // binomial std at n = 20000: 0.0028 (p 0.8) and 0.0035 (p 0.5); bounds at about 4 std
  assert.ok(Math.abs(jit - STRONG_AUGMENT_DEFAULTS.jitterProb) < 0.012, `jitter share ${jit}`);
  assert.ok(Math.abs(blur - STRONG_AUGMENT_DEFAULTS.blurProb) < 0.014, `blur share ${blur}`);
  for (const d of many) {
    if (d.jitter) {
      for (const f of [d.jitter.brightness, d.jitter.contrast, d.jitter.saturation]) assert.ok(f >= 0.8 && f < 1.2, `factor ${f}`);
      assert.ok(d.jitter.hue >= -0.2 && d.jitter.hue < 0.2);
    }
    if (d.blurSigma !== null) assert.ok(d.blurSigma >= 0.15 && d.blurSigma < 1.15);
  }
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { ConfusionMatrix, classCenterDistance, CITYSCAPES_CLASSES, SYNTHIA_CLASSES, TAIL_CLASSES_19 } from '../../src/ops/metrics.ts';
import { useBackend, seededValues, assertClose } from '../helpers.ts';

function randomInts(n: number, k: number, seed: number, ignoreEvery = 0): Int32Array {
  return Int32Array.from(seededValues(n, seed), (x, i) =>
    ignoreEvery && i % ignoreEvery === 1 ? 255 : Math.min(k - 1, Math.floor(((x + 1) / 2) * k)),
  );
}

/** Per-class IoU by a plain loop over pixels: I / (pred area + label area - I + 1e-10), 255 skipped. */
function iouRef(pred: Int32Array, label: Int32Array, k: number): number[] {
  const inter = new Array<number>(k).fill(0);
  const pa = new Array<number>(k).fill(0);
  const la = new Array<number>(k).fill(0);
  for (let i = 0; i < label.length; i++) {
    if (label[i] === 255) continue;
    la[label[i]!]!++;
    pa[pred[i]!]!++;
    if (pred[i] === label[i]) inter[label[i]!]!++;
  }
  return inter.map((v, c) => v / (pa[c]! + la[c]! - v + 1e-10));
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

test('class name constants follow REFERENCE 6.2 and 7', () => {
  assert.equal(CITYSCAPES_CLASSES.length, 19);
  assert.equal(SYNTHIA_CLASSES.length, 16);
  assert.deepEqual(
    TAIL_CLASSES_19.map((c) => CITYSCAPES_CLASSES[c]),
    ['wall', 'fence', 'traffic light', 'traffic sign', 'terrain', 'rider', 'truck', 'bus', 'train', 'motorcycle', 'bicycle'],
  );
});

test('ConfusionMatrix on a hand example: IoU, mIoU with an absent class, accuracies, accumulation over adds', async () => {
  await useBackend('cpu');
  // K = 4 (class 3 never occurs). Rows = label: 0 -> preds [0,1,0]; 1 -> [1,1]; 2 -> [0,2]; one 255 pixel.
  const cm = new ConfusionMatrix(4);
  const p1 = tf.tensor2d([0, 1, 1, 1], [2, 2], 'int32');
  const l1 = tf.tensor2d([0, 0, 1, 1], [2, 2], 'int32');
  const p2 = tf.tensor1d([0, 2, 2, 0], 'int32');
  const l2 = tf.tensor1d([2, 255, 2, 0], 'int32');
  const before = tf.memory().numTensors;
  cm.add(p1, l1);
  cm.add(p2, l2);
  assert.equal(tf.memory().numTensors, before, 'add leaks tensors');
  assert.deepEqual(cm.counts(), [
    [2, 1, 0, 0],
    [0, 2, 0, 0],
    [1, 0, 1, 0],
    [0, 0, 0, 0],
  ]);
  // I = [2,2,1,0]; label areas [3,2,2,0]; pred areas [3,3,1,0]; U = [4,3,2,0].
  assertClose(cm.iou(), [0.5, 2 / 3, 0.5, 0], 1e-9, 'iou');
  assertClose([cm.miou()], [(0.5 + 2 / 3 + 0.5) / 4], 1e-9, 'miou counts the absent class as 0');
  assertClose([cm.miou([0, 1, 2])], [(0.5 + 2 / 3 + 0.5) / 3], 1e-9, 'miou over chosen classes');
  assertClose([cm.pixelAccuracy()], [5 / 7], 1e-9, 'pixel accuracy');
  assertClose([cm.meanAccuracy()], [(2 / 3 + 1 + 0.5 + 0) / 4], 1e-9, 'mean accuracy');
  const back = ConfusionMatrix.fromJSON(JSON.parse(JSON.stringify(cm)));
  assert.deepEqual(back.counts(), cm.counts());
  assert.deepEqual(back.iou(), cm.iou());
  cm.reset();
  assert.deepEqual(cm.iou(), [0, 0, 0, 0]);
  tf.dispose([p1, l1, p2, l2]);
});

for (const backend of ['cpu', 'wasm'] as const) {
  test(`ConfusionMatrix on ${backend}: random 19-class set equals a pixel loop; tail mIoU; 16-class mIoU*`, async () => {
    await useBackend(backend);
    const shape: [number, number, number] = [2, 40, 50];
    const n = 2 * 40 * 50;
    const label = randomInts(n, 19, 61, 9);
    // Predictions right about half the time.
    const pred = Int32Array.from(randomInts(n, 19, 62), (p, i) => (i % 2 === 0 && label[i] !== 255 ? label[i]! : p));
    const cm = new ConfusionMatrix(19);
    const before = tf.memory().numTensors;
    const lt = tf.tensor3d(label, shape, 'int32');
    const pt = tf.tensor3d(pred, shape, 'int32');
    cm.add(pt, lt);
    tf.dispose([lt, pt]);
    assert.equal(tf.memory().numTensors, before, 'add leaks tensors');
    const want = iouRef(pred, label, 19);
    assertClose(cm.iou(), want, 1e-12, 'iou');
    assertClose([cm.miou()], [mean(want)], 1e-12, 'miou');
    assertClose([cm.tailMiou()], [mean([3, 4, 6, 7, 9, 12, 14, 15, 16, 17, 18].map((c) => want[c]!))], 1e-12, 'tail miou');

    const l16 = randomInts(n, 16, 63, 7);
    const p16 = Int32Array.from(randomInts(n, 16, 64), (p, i) => (i % 3 === 0 && l16[i] !== 255 ? l16[i]! : p));
    const cm16 = new ConfusionMatrix(16);
    tf.tidy(() => cm16.add(tf.tensor1d(p16, 'int32'), tf.tensor1d(l16, 'int32')));
    const w16 = iouRef(p16, l16, 16);
    assertClose([cm16.miou()], [mean(w16)], 1e-12, '16-class miou');
    assertClose([cm16.miou13()], [mean(w16.filter((_, c) => c !== 3 && c !== 4 && c !== 5))], 1e-12, '13-class miou');
  });
}

test('ConfusionMatrix rejects bad inputs with clear messages and counts nothing from a bad batch', async () => {
  await useBackend('cpu');
  const cm = new ConfusionMatrix(19);
  const ok = tf.tensor1d([0, 1, 2], 'int32');
  const badLabel = tf.tensor1d([0, 19, 2], 'int32');
  const badPred = tf.tensor1d([0, 1, 255], 'int32');
  assert.throws(() => cm.add(ok, badLabel), /ConfusionMatrix.add: label has 1 pixel with values outside 0\.\.18 and 255/);
  assert.throws(
    () => cm.add(badPred, ok),
    /ConfusionMatrix.add: pred has 1 pixel \(where the label is not 255\) with values outside 0\.\.18/,
  );
  assert.deepEqual(
    cm
      .counts()
      .flat()
      .reduce((a, b) => a + b, 0),
    0,
  );
  // A prediction of 255 where the label is ignored is fine.
  const lIgn = tf.tensor1d([0, 1, 255], 'int32');
  cm.add(badPred, lIgn);
  assert.equal(
    cm
      .counts()
      .flat()
      .reduce((a, b) => a + b, 0),
    2,
  );
  assert.throws(() => cm.add(ok, tf.tensor2d([0, 1, 2], [1, 3], 'int32')), /ConfusionMatrix.add: pred \[3\] does not match label \[1,3\]/);
  assert.throws(() => cm.add(ok, tf.tensor1d([0, 1, 2])), /pred and label must be int32, got int32 and float32/);
  assert.throws(() => new ConfusionMatrix(4).tailMiou(), /tailMiou: needs the 19 Cityscapes classes, have 4/);
  assert.throws(() => new ConfusionMatrix(19).miou13(), /miou13: needs the 16 SYNTHIA classes, have 19/);
  assert.throws(() => cm.miou([19]), /ConfusionMatrix.miou: class 19 outside 0..18/);
  assert.throws(() => ConfusionMatrix.fromJSON({ numClasses: 2, counts: [[1, 2]] }), /fromJSON: counts must be a 2x2 array/);
  tf.dispose([ok, badLabel, badPred, lIgn]);
});

/** CCD by a plain loop over the formula of REFERENCE 9, over the classes present. */
function ccdRef(x: Float32Array, labels: Int32Array, k: number, c: number): number[] {
  const mu = Array.from({ length: k }, () => new Array<number>(c).fill(0));
  const n = new Array<number>(k).fill(0);
  labels.forEach((y, i) => {
    if (y === 255) return;
    n[y]!++;
    for (let j = 0; j < c; j++) mu[y]![j]! += x[i * c + j]!;
  });
  mu.forEach((m, q) =>
    m.forEach((_, j) => {
      m[j] = n[q] ? m[j]! / n[q]! : 0;
    }),
  );
  const intra = new Array<number>(k).fill(0);
  labels.forEach((y, i) => {
    if (y === 255) return;
    for (let j = 0; j < c; j++) intra[y]! += (x[i * c + j]! - mu[y]![j]!) ** 2 / n[y]!;
  });
  const present = n.map((v, q) => (v > 0 ? q : -1)).filter((q) => q >= 0);
  return mu.map((mc, a) => {
    if (!n[a]) return Number.NaN;
    let s = 0;
    for (const b of present) {
      if (b === a) continue;
      s += intra[a]! / mc.reduce((acc, v, j) => acc + (v - mu[b]![j]!) ** 2, 0);
    }
    return s / (present.length - 1);
  });
}

for (const backend of ['cpu', 'wasm'] as const) {
  test(`classCenterDistance on ${backend} equals the formula by hand and by a plain loop; NaN for absent classes`, async () => {
    await useBackend(backend);
    // 1-D features. Class 0 = {0, 2}: mu 1, spread 1. Class 1 = {10}: spread 0. Class 2 = {4, 6}: mu 5, spread 1.
    // Class 3 absent, one ignored pixel. K' = 3.
    const f = tf.tensor2d([0, 2, 10, 4, 6, 100], [6, 1]);
    const l = tf.tensor1d([0, 0, 1, 2, 2, 255], 'int32');
    const before = tf.memory().numTensors;
    const got = classCenterDistance(f, l, 4);
    assert.equal(tf.memory().numTensors, before, 'classCenterDistance leaks tensors');
    assertClose(got.slice(0, 3), [(1 / 81 + 1 / 16) / 2, 0, (1 / 16 + 1 / 25) / 2], 1e-7, 'hand example');
    assert.ok(Number.isNaN(got[3]!));
    // Random NHWC features against the loop.
    const [b, h, w, c, k] = [2, 4, 5, 6, 5];
    const xv = seededValues(b * h * w * c, 71);
    const lv = Int32Array.from(randomInts(b * h * w, k - 1, 72, 6)); // class k-1 absent
    const xt = tf.tensor4d(xv, [b, h, w, c]);
    const lt = tf.tensor3d(lv, [b, h, w], 'int32');
    const res = classCenterDistance(xt, lt, k);
    const ref = ccdRef(xv, lv, k, c);
    assertClose(res.slice(0, k - 1), ref.slice(0, k - 1), 1e-5, 'random features');
    assert.ok(Number.isNaN(res[k - 1]!) && Number.isNaN(ref[k - 1]!));
    tf.dispose([f, l, xt, lt]);
  });
}

test('classCenterDistance: one present class gives NaN; bad shapes are rejected clearly', async () => {
  await useBackend('cpu');
  const f = tf.tensor2d([1, 2, 3, 4], [2, 2]);
  const l = tf.tensor1d([1, 1], 'int32');
  assert.ok(classCenterDistance(f, l, 3).every(Number.isNaN));
  assert.throws(
    () => classCenterDistance(tf.zeros([2, 2, 2]), l, 3),
    /classCenterDistance: features must be rank 2 \[N,C\] or rank 4 \[B,h,w,C\], got shape \[2,2,2\]/,
  );
  assert.throws(
    () => classCenterDistance(f, tf.tensor1d([1, 1, 1], 'int32'), 3),
    /classCenterDistance: labels \[3\] do not match features \[2,2\]/,
  );
  assert.throws(() => classCenterDistance(f, tf.tensor1d([1, 1]), 3), /classCenterDistance: labels must be int32, got float32/);
  tf.dispose([f, l]);
});

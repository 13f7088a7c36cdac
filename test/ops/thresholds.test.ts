import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { ConfidenceHistogram, pseudoLabels, upperMedianIndex } from '../../src/ops/thresholds.ts';
import { useBackend, seededValues } from '../helpers.ts';

/**
 * Softmax probabilities [b,h,w,k] of random logits; class 0 is boosted (confident, median above the
 * 0.9 cap) and the last class is never the argmax (no pixels).
 */
function randomProbs(shape: [number, number, number, number], seed: number): tf.Tensor4D {
  const k = shape[3];
  const v = seededValues(
    shape.reduce((a, b) => a * b, 1),
    seed,
  ).map((x, i) => (i % k === k - 1 ? -100 : x * 4 + (i % k === 0 ? 6 : 0)));
  return tf.tidy(() => tf.softmax(tf.tensor4d(v, shape)));
}

/** Per-pixel max and first argmax, by a plain loop over the downloaded probabilities. */
function maxArgmax(p: Float32Array, k: number): { conf: number[]; cls: number[] } {
  const conf: number[] = [];
  const cls: number[] = [];
  for (let i = 0; i < p.length / k; i++) {
    let best = 0;
    for (let j = 1; j < k; j++) if (p[i * k + j]! > p[i * k + best]!) best = j;
    conf.push(p[i * k + best]!);
    cls.push(best);
  }
  return { conf, cls };
}

test('upperMedianIndex is numpy round(n/2), ties to even', () => {
  assert.deepEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 11].map(upperMedianIndex), [0, 1, 2, 2, 2, 3, 4, 4, 4, 6]);
});

test('ConfidenceHistogram thresholds are within 1e-3 of the exact sorted upper median over ~100k pixels, in O(K x bins) memory', async () => {
  await useBackend('cpu');
  const k = 7;
  const hist = new ConfidenceHistogram(k);
  const size0 = hist.storageSize;
  assert.equal(size0, k * 4096);
  const perClass: number[][] = Array.from({ length: k }, () => []);
  for (const [i, shape] of (
    [
      [2, 100, 250, k],
      [1, 125, 400, k],
    ] as [number, number, number, number][]
  ).entries()) {
    const probs = randomProbs(shape, 100 + i);
    const { conf, cls } = maxArgmax(probs.dataSync() as Float32Array, k);
    conf.forEach((p, j) => perClass[cls[j]!]!.push(p));
    const before = tf.memory().numTensors;
    hist.add(probs);
    assert.equal(tf.memory().numTensors, before, 'add leaks tensors');
    assert.equal(hist.storageSize, size0, 'storage must not grow with the pixels added');
    probs.dispose();
  }
  const total = perClass.reduce((a, c) => a + c.length, 0);
  assert.equal(total, 100000);
  const exact = perClass.map((c) => {
    if (c.length === 0) return 0;
    const s = [...c].sort((a, b) => a - b);
    return s[upperMedianIndex(s.length)]!;
  });
  assert.deepEqual(
    hist.counts(),
    perClass.map((c) => c.length),
  );
  const raw = hist.thresholds({ cap: 1 });
  const capped = hist.thresholds();
  assert.equal(raw[k - 1], 0, 'a class with no pixels gets threshold 0');
  for (let j = 0; j < k; j++) {
    assert.ok(Math.abs(raw[j]! - exact[j]!) < 1e-3, `class ${j}: ${raw[j]} vs exact ${exact[j]}`);
    assert.equal(capped[j], Math.min(raw[j]!, 0.9));
  }
  assert.ok(exact.some((e) => e > 0.9) && exact.some((e) => e > 0 && e < 0.9), 'the test should exercise the cap and an uncapped class');
  // Checkpoint round trip through JSON text.
  const back = ConfidenceHistogram.fromJSON(JSON.parse(JSON.stringify(hist)));
  assert.deepEqual(back.thresholds(), capped);
  assert.deepEqual(back.counts(), hist.counts());
  assert.equal(back.bins, hist.bins);
});

test('ConfidenceHistogram with 1000 bins (width 1e-3), 100k pixels in 3 batches, still within 1e-3', async () => {
  await useBackend('cpu');
  const k = 4;
  const hist = new ConfidenceHistogram(k, { bins: 1000 });
  const all: number[][] = Array.from({ length: k }, () => []);
  for (let i = 0; i < 3; i++) {
    const probs = randomProbs([1, 100, 334, k], 200 + i);
    const { conf, cls } = maxArgmax(probs.dataSync() as Float32Array, k);
    conf.forEach((p, j) => all[cls[j]!]!.push(p));
    hist.add(probs);
    probs.dispose();
  }
  assert.equal(hist.storageSize, k * 1000);
  const got = hist.thresholds({ cap: 1 });
  all.forEach((c, j) => {
    const s = [...c].sort((a, b) => a - b);
    const e = s.length ? s[upperMedianIndex(s.length)]! : 0;
    assert.ok(Math.abs(got[j]! - e) < 1e-3, `class ${j}: ${got[j]} vs exact ${e}`);
  });
});

test('ConfidenceHistogram on wasm counts the same cells as on cpu', async () => {
  const shape: [number, number, number, number] = [2, 30, 40, 5];
  // Same float32 probabilities on both backends: softmax once on cpu, then uploaded to each.
  await useBackend('cpu');
  const pv = tf.tidy(() =>
    tf
      .softmax(
        tf.tensor4d(
          seededValues(2 * 30 * 40 * 5, 7).map((x) => x * 3),
          shape,
        ),
      )
      .dataSync()
      .slice(),
  );
  const runs: { counts: number[]; thr: number[]; json: string }[] = [];
  for (const backend of ['cpu', 'wasm'] as const) {
    await useBackend(backend);
    const probs = tf.tensor4d(pv, shape);
    const hist = new ConfidenceHistogram(5, { bins: 512 });
    const before = tf.memory().numTensors;
    hist.add(probs);
    hist.add(probs);
    assert.equal(tf.memory().numTensors, before, `${backend}: add leaks tensors`);
    runs.push({ counts: hist.counts(), thr: hist.thresholds(), json: JSON.stringify(hist) });
    // from the max and argmax the threshold pass keeps anyway: the same cells
    const top = new ConfidenceHistogram(5, { bins: 512 });
    const [conf, cls] = [probs.max(-1), probs.argMax(-1)];
    top.addTop(conf, cls);
    top.addTop(conf, cls);
    assert.equal(JSON.stringify(top), runs.at(-1)!.json, `${backend}: addTop`);
    tf.dispose([probs, conf, cls]);
  }
  assert.deepEqual(runs[1], runs[0]);
  assert.equal(
    runs[0]!.counts.reduce((a, b) => a + b, 0),
    2 * 2 * 30 * 40,
  );
});

test('ConfidenceHistogram on a hand example: ranks inside a bin are spread evenly', async () => {
  await useBackend('cpu');
  // K = 2, bins = 10. Class 0 confidences 0.55, 0.62, 0.64, 0.66 (n = 4, index 2 -> 0.64):
  // bin 6 holds 3 values; the target is its 2nd (rank 1): 0.6 + (1 + 0.5)/3 * 0.1 = 0.65.
  // Class 1: a single pixel with confidence 0.95 -> index 0 -> bin 9, 0.95; capped at 0.9.
  const rows = [
    [0.55, 0.45],
    [0.62, 0.38],
    [0.64, 0.36],
    [0.66, 0.34],
    [0.05, 0.95],
  ];
  const probs = tf.tensor4d(rows.flat(), [1, 1, 5, 2]);
  const hist = new ConfidenceHistogram(2, { bins: 10 });
  hist.add(probs);
  const t = hist.thresholds({ cap: 1 });
  assert.ok(Math.abs(t[0]! - 0.65) < 1e-9, `${t[0]}`);
  assert.ok(Math.abs(t[1]! - 0.95) < 1e-9, `${t[1]}`);
  assert.deepEqual(hist.thresholds(), [t[0], 0.9]);
  hist.reset();
  assert.deepEqual(hist.thresholds(), [0, 0]);
  probs.dispose();
});

for (const backend of ['cpu', 'wasm'] as const) {
  test(`pseudoLabels on ${backend}: argmax, 255 where max prob < threshold of its class (equal kept)`, async () => {
    await useBackend(backend);
    // K = 3; pixels: argmax 0 p .5 | argmax 1 p .7 | argmax 2 p .4 | argmax 0 p .9 | argmax 1 p .6
    const rows = [
      [0.5, 0.3, 0.2],
      [0.2, 0.7, 0.1],
      [0.3, 0.3, 0.4],
      [0.9, 0.05, 0.05],
      [0.25, 0.6, 0.15],
    ];
    const probs = tf.tensor4d(rows.flat(), [1, 1, 5, 3]);
    const sigma = [0.5, 0.65, 0.45]; // 0.5 >= 0.5 kept; 0.4 < 0.45 dropped; 0.6 < 0.65 dropped
    const before = tf.memory().numTensors;
    const a = pseudoLabels(probs, sigma);
    assert.equal(a.dtype, 'int32');
    assert.deepEqual(a.shape, [1, 1, 5]);
    assert.deepEqual(Array.from(a.dataSync()), [0, 1, 255, 0, 255]);
    a.dispose();
    assert.equal(tf.memory().numTensors, before, 'pseudoLabels leaks tensors');
    const st = tf.tensor1d(sigma);
    const b = pseudoLabels(probs, st);
    assert.deepEqual(Array.from(b.dataSync()), [0, 1, 255, 0, 255]);
    tf.dispose([b, st, probs]);
  });
}

test('threshold ops reject bad shapes and options with clear messages', async () => {
  await useBackend('cpu');
  const p3 = tf.zeros([2, 3, 4]) as unknown as tf.Tensor4D;
  const p4 = tf.zeros([1, 2, 2, 3]) as tf.Tensor4D;
  const hist = new ConfidenceHistogram(4);
  assert.throws(() => hist.add(p3), /ConfidenceHistogram.add: probs must be rank 4 \[B,H,W,K\], got shape \[2,3,4\]/);
  assert.throws(() => hist.add(p4), /ConfidenceHistogram.add: probs \[1,2,2,3\] have 3 classes, expected 4/);
  assert.throws(() => new ConfidenceHistogram(4, { bins: 0 }), /bins must be a positive integer, got 0/);
  assert.throws(
    () => hist.addTop(tf.zeros([1, 2, 2]), tf.zeros([1, 2, 3], 'int32')),
    /ConfidenceHistogram.addTop: confidence \[1,2,2\] and int32 classes \[1,2,3\] \(int32\) must have one value per pixel each/,
  );
  assert.throws(() => pseudoLabels(p3, [0, 0, 0, 0]), /pseudoLabels: probs must be rank 4 \[B,H,W,K\], got shape \[2,3,4\]/);
  assert.throws(() => pseudoLabels(p4, [0.5, 0.5]), /pseudoLabels: thresholds must have one value per class \(3\), got 2 values/);
  const t2 = tf.zeros([3, 1]) as unknown as tf.Tensor1D;
  assert.throws(() => pseudoLabels(p4, t2), /pseudoLabels: thresholds must have one value per class \(3\), got shape \[3,1\]/);
  assert.throws(
    () => ConfidenceHistogram.fromJSON({ numClasses: 2, bins: 4, counts: [[8, 1]] }),
    /fromJSON: bad entry \[8,1\] for 2 classes x 4 bins/,
  );
  tf.dispose([p3, p4, t2]);
});

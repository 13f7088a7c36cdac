import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import {
  chooseMixClasses,
  classMixMask,
  confidenceWeight,
  confidentLabels,
  emaUpdate,
  mixImages,
  mixLabels,
  mixedPixelWeights,
  presentClasses,
} from '../../src/ops/mean-teacher.ts';
import { segCrossEntropy } from '../../src/ops/losses.ts';
import { Rng } from '../../src/data/rng.ts';
import { assertClose, useBackend } from '../helpers.ts';

test('emaUpdate: teacher <- alpha teacher + (1 - alpha) student, by hand; alpha 1 keeps, alpha 0 copies; mismatches named', async () => {
  await useBackend('cpu');
  const before = tf.memory().numTensors;
  const t = tf.tidy(() => [tf.variable(tf.tensor1d([1, 2])), tf.variable(tf.tensor2d([[4]]))]);
  const s = [tf.tensor1d([3, 6]), tf.tensor2d([[-6]])];
  emaUpdate(t, s, 0.9);
  assertClose(t[0]!.dataSync(), [0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * 6], 1e-6, 'ema 0');
  assertClose(t[1]!.dataSync(), [0.9 * 4 + 0.1 * -6], 1e-6, 'ema 1');
  emaUpdate(t, s, 1);
  assertClose(t[0]!.dataSync(), [1.2, 2.4], 1e-6, 'alpha 1');
  emaUpdate(t, s, 0);
  assertClose(t[0]!.dataSync(), [3, 6], 1e-6, 'alpha 0');
  assert.throws(() => emaUpdate(t, s, 1.5), { message: 'emaUpdate: alpha must be in [0, 1], got 1.5' });
  assert.throws(() => emaUpdate(t, [s[0]!], 0.5), { message: 'emaUpdate: 2 teacher variables but 1 student tensors' });
  assert.throws(() => emaUpdate(t, [s[1]!, s[0]!], 0.5), { message: 'emaUpdate: variable 0 is [2] in the teacher, [1,1] in the student' });
  tf.dispose([...t, ...s]);
  assert.equal(tf.memory().numTensors, before);
});

test('ClassMix: present classes, half of them drawn (ceil), the mask, the mixed image and labels, by hand', async () => {
  await useBackend('cpu');
  const before = tf.memory().numTensors;
  // two 2x3 maps: classes {0, 3, 5} (and ignore), {2}
  const raw = Int32Array.from([0, 0, 255, 3, 5, 5, 2, 2, 2, 2, 2, 2]);
  assert.deepEqual(presentClasses(raw, 2, 6), [[0, 3, 5], [2]]);
  assert.deepEqual(presentClasses(Uint8Array.from([255, 255]), 1, 2), [[]]);
  // a stand-in rng whose shuffle reverses: of [0, 3, 5] the first ceil(3/2) = 2 after reversal are 5, 3
  const reverse = { shuffle: <T>(items: T[]) => items.reverse() };
  assert.deepEqual(chooseMixClasses([[0, 3, 5], [2], []], reverse), [[3, 5], [2], []]);
  // with a real rng: always ceil(n/2) distinct classes from the map, and the same draw for the same seed
  const drawn = chooseMixClasses([[0, 1, 2, 3, 4, 5, 6]], new Rng(7))[0]!;
  assert.equal(drawn.length, 4);
  assert.equal(new Set(drawn).size, 4);
  assert.deepEqual(chooseMixClasses([[0, 1, 2, 3, 4, 5, 6]], new Rng(7))[0], drawn);

  const labels = tf.tensor3d(raw, [2, 2, 3], 'int32');
  const mask = classMixMask(labels, [[3, 5], [2]]);
  assert.deepEqual(Array.from(mask.dataSync()), [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
  const empty = classMixMask(labels, [[], [7]]);
  assert.deepEqual(Array.from(empty.dataSync()), new Array(12).fill(0));
  // images: source pixel values 10 + i, target -1; mixed takes the source where the mask is 1
  const src = tf.tensor4d(
    Float32Array.from({ length: 12 }, (_, i) => 10 + i),
    [2, 2, 3, 1],
  );
  const tgt = tf.fill([2, 2, 3, 1], -1) as tf.Tensor4D;
  const mixed = mixImages(mask, src, tgt);
  assert.deepEqual(Array.from(mixed.dataSync()), [-1, -1, -1, 13, 14, 15, 16, 17, 18, 19, 20, 21]);
  const pseudo = tf.fill([2, 2, 3], 9, 'int32') as tf.Tensor3D;
  const mixedLabels = mixLabels(mask, labels, pseudo);
  assert.deepEqual(Array.from(mixedLabels.dataSync()), [9, 9, 9, 3, 5, 5, 2, 2, 2, 2, 2, 2]);
  assert.equal(mixedLabels.dtype, 'int32');
  assert.throws(() => classMixMask(labels, [[1]]), { message: 'classMixMask: 1 class lists for a batch of 2' });
  const small = tf.zeros([2, 2, 2, 1]) as tf.Tensor4D;
  assert.throws(() => mixImages(mask, src, small), { message: 'mixImages: source [2,2,3,1] and target [2,2,2,1] differ' });
  small.dispose();
  tf.dispose([labels, mask, empty, src, tgt, mixed, pseudo, mixedLabels]);
  assert.equal(tf.memory().numTensors, before);
});

test('confidence weight: the share of pixels above the threshold per image; mixed pixel weights 1 on pasted pixels', async () => {
  await useBackend('cpu');
  const before = tf.memory().numTensors;
  // image 0: confidences 0.97, 0.6 -> 1/2 above 0.968; image 1: 0.99, 0.98 -> 1
  const probs = tf.tensor4d([0.97, 0.03, 0.6, 0.4, 0.01, 0.99, 0.98, 0.02], [2, 1, 2, 2]);
  const w = confidenceWeight(probs, 0.968);
  assertClose(w.dataSync(), [0.5, 1], 1e-7, 'weights');
  // the pixel-level alternative: argmax where confident (0.97 -> 0; 0.99 -> 1; 0.98 -> 0), 255 elsewhere (0.6)
  const confident = confidentLabels(probs, 0.968);
  assert.deepEqual(Array.from(confident.dataSync()), [0, 255, 1, 0]);
  assert.equal(confident.dtype, 'int32');
  confident.dispose();
  const mask = tf.tensor3d([1, 0, 0, 0], [2, 1, 2]);
  const pw = mixedPixelWeights(mask, w);
  assertClose(pw.dataSync(), [1, 0.5, 1, 1], 1e-7, 'pixel weights');
  // the weighted cross-entropy: sum of w * CE over the valid pixels / their count (255 excluded)
  const logits = tf.tensor4d([2, 0, 0, 1, 1, 1, 0, 3], [2, 1, 2, 2]);
  const labels = tf.tensor3d([0, 1, 255, 1], [2, 1, 2], 'int32');
  const ce = (z: number[], k: number) => -(z[k]! - Math.log(z.reduce((a, v) => a + Math.exp(v), 0)));
  const expected = (1 * ce([2, 0], 0) + 0.5 * ce([0, 1], 1) + 1 * ce([0, 3], 1)) / 3;
  const loss = segCrossEntropy(logits, labels, { pixelWeights: pw });
  assertClose(loss.dataSync(), [expected], 1e-6, 'weighted CE');
  const wrong = tf.ones([2, 2, 1]) as tf.Tensor3D;
  assert.throws(() => segCrossEntropy(logits, labels, { pixelWeights: wrong }), {
    message: 'segCrossEntropy: pixelWeights [2,2,1] do not match labels [2,1,2]',
  });
  wrong.dispose();
  tf.dispose([probs, w, mask, pw, logits, labels, loss]);
  assert.equal(tf.memory().numTensors, before);
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { from, lastValueFrom, of } from 'rxjs';
import { deeplabV2, type SegModel } from '../../src/ops/model/deeplab.ts';
import { adaptBatchNorm } from '../../src/stages/adapt-bn.ts';
import type { Batch } from '../../src/stages/collate.ts';
import { assertClose, seededValues, useBackend } from '../helpers.ts';

function imageBatch(n: number, h: number, w: number): Batch {
  return {
    n,
    height: h,
    width: w,
    images: seededValues(n * h * w * 3, 7),
    labelHeight: h,
    labelWidth: w,
    labels: null,
    keys: Array.from({ length: n }, (_, i) => `img${i}`),
    decodeSeconds: 0,
    release: () => {},
  };
}

const values = (m: SegModel, role: string) =>
  [...m.store.params.values()].filter((p) => p.role === role).map((p) => Array.from(p.variable.dataSync()));

test('adaptBatchNorm: after N identical batches every BN layer holds (1 - 0.9^N) x its batch mean and the matching variance; weights untouched, no tensor leaks', async () => {
  await useBackend('cpu');
  const batch = imageBatch(2, 24, 24);
  // One batch from the initial buffers (mean 0, var 1): m1 = 0.1 mu, v1 = 0.9 + 0.1 u, per channel.
  // Training mode normalises with the batch's own statistics, so every layer sees the same input on
  // every pass of the same batch, and after N passes m_N = (1 - 0.9^N) mu, v_N = 0.9^N + (1 - 0.9^N) u.
  const one = deeplabV2({ backbone: 'small', numClasses: 3, bn: 'trainable' });
  const r1 = await lastValueFrom(of(batch).pipe(adaptBatchNorm({ model: one, release: () => {} })));
  assert.deepEqual(r1, { images: 2, batches: 1 });
  const m1 = values(one, 'bn-stat');
  const N = 5;
  const decay = 0.9 ** N;
  const model = deeplabV2({ backbone: 'small', numClasses: 3, bn: 'trainable' });
  const weightsBefore = values(model, 'weight');
  const tensorsBefore = tf.memory().numTensors;
  let released = 0;
  const r = await lastValueFrom(
    from(Array.from({ length: N }, () => batch)).pipe(
      adaptBatchNorm({
        model,
        release: () => {
          released++;
        },
      }),
    ),
  );
  assert.deepEqual(r, { images: 2 * N, batches: N });
  assert.equal(released, N);
  assert.equal(tf.memory().numTensors, tensorsBefore);
  const mN = values(model, 'bn-stat');
  // bn-stat params alternate running_mean, running_var per layer (the store's insertion order)
  const names = [...model.store.params.values()].filter((p) => p.role === 'bn-stat').map((p) => p.name);
  assert.ok(names.length >= 4 && names.every((n, i) => n.endsWith(i % 2 === 0 ? 'running_mean' : 'running_var')), names.join(','));
  for (let i = 0; i < names.length; i++) {
    const expected = i % 2 === 0 ? m1[i]!.map((m) => (1 - decay) * 10 * m) : m1[i]!.map((v) => decay + (1 - decay) * 10 * (v - 0.9));
    assertClose(mN[i]!, expected, 1e-4, names[i]!);
  }
  assert.ok(
    mN[0]!.some((v) => Math.abs(v) > 1e-3),
    "the first layer's running mean moved",
  );
  assert.deepEqual(values(model, 'weight'), weightsBefore);
  one.dispose();
  model.dispose();
});

test('adaptBatchNorm: a frozen-BN model is an error naming the mode', async () => {
  await useBackend('cpu');
  const model = deeplabV2({ backbone: 'small', numClasses: 3, bn: 'frozen' });
  await assert.rejects(lastValueFrom(of(imageBatch(1, 8, 8)).pipe(adaptBatchNorm({ model, release: () => {} }))), {
    message: "adaptBatchNorm: the model's BN is 'frozen'; only trainable BN has running statistics to adapt",
  });
});

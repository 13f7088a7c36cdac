/**
 * src/parallel/shared-step.ts: a batch mean over labelled pixels counted on the host before the step.
 * The counts against hand counts (and the float32 rank-order sum the replicas' all-reduce makes), the
 * same bits as the all-reduce path, no cross-replica sum called (so no replica waits mid-step), and
 * the error for an input that is not a split int32 input. The gradient sum cut into pieces, one per
 * replica, against one thread adding the slots in rank order.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { labelledPixels } from '../../src/ops/masks.ts';
import { labelledCounts, shardContext, sharedAreas, sumGradientPiece } from '../../src/parallel/shared-step.ts';
import { Barrier, AllReduce } from '../../src/parallel/collective.ts';
import { seededValues, useBackend } from '../helpers.ts';

test('labelledCounts: labelled pixels (not 255) per shard of each int32 input, as labelledPixels counts them, the batch total as a float32 rank-order sum; float inputs skipped', async () => {
  const shards = [
    {
      labels: { data: Int32Array.from([0, 255, 3, 255, 255, 18]), shape: [1, 2, 3] },
      images: { data: new Float32Array(3), shape: [1, 3] },
    },
    {
      labels: { data: Int32Array.from([255, 255, 255, 255, 255, 7]), shape: [1, 2, 3] },
      images: { data: new Float32Array(3), shape: [1, 3] },
    },
    { labels: { data: Int32Array.from([1, 2, 3, 4, 5, 6]), shape: [1, 2, 3] }, images: { data: new Float32Array(3), shape: [1, 3] } },
  ];
  assert.deepEqual(labelledCounts(shards), [{ labels: [3, 10] }, { labels: [1, 10] }, { labels: [6, 10] }]);
  // the count a replica's loss would take from the tensor (masks.ts labelledPixels), shard by shard
  await useBackend('cpu');
  for (const [r, s] of shards.entries()) {
    const t = tf.tensor(s.labels.data, s.labels.shape, 'int32');
    assert.equal(labelledPixels(t), labelledCounts(shards)[r]!.labels![0]);
    t.dispose();
  }
  // above 2^24 a float32 sum rounds (to even): 2^24 + 1 is 2^24, as the all-reduce's Float32Array would give
  const big = 2 ** 24;
  const many = (n: number) => ({ labels: { data: new Int32Array(n), shape: [1, n] } });
  assert.deepEqual(labelledCounts([many(big), many(1)]), [{ labels: [big, big] }, { labels: [1, big] }]);
  assert.deepEqual(labelledCounts([]), []);
});

test('batchMean with { labelledIn }: the bits of the all-reduce path, without calling the cross-replica sum', async () => {
  await useBackend('cpu');
  const mean = tf.scalar(1.2345678);
  // what the all-reduce path gives with this shard's 3 labelled pixels of a batch's 7 (the other shard's 4)
  const viaSum = shardContext((v) => Float32Array.of(v[0]! + 4), new Map()).batchMean(mean, 3);
  const noSum = (): Float32Array => {
    throw new Error('the cross-replica sum was called');
  };
  const counted = shardContext(noSum, new Map(), { labels: [3, 7] }).batchMean(mean, { labelledIn: 'labels' });
  assert.ok(Object.is(counted.dataSync()[0], viaSum.dataSync()[0]));
  assert.equal(counted.dataSync()[0], Math.fround(Math.fround(1.2345678) * Math.fround(3 / 7)));
  // no labelled pixel anywhere: 0, as the all-reduce path gives
  const none = shardContext(noSum, new Map(), { labels: [0, 0] }).batchMean(mean, { labelledIn: 'labels' });
  assert.equal(none.dataSync()[0], 0);
  tf.dispose([mean, viaSum, counted, none]);
});

test('batchMean with { labelledIn } of an input the step did not split: an error naming it and the inputs there are', async () => {
  await useBackend('cpu');
  const sum = (v: Float32Array) => v;
  const one = tf.scalar(1);
  assert.throws(
    () => shardContext(sum, new Map(), { labels: [1, 2], sourceLabels: [3, 4] }).batchMean(one, { labelledIn: 'mixedLabels' }),
    {
      message:
        "data-parallel: batchMean counts the labelled pixels of 'mixedLabels', which is not a split int32 input of this step (those: labels, sourceLabels)",
    },
  );
  assert.throws(() => shardContext(sum, new Map()).batchMean(one, { labelledIn: 'labels' }), {
    message: "data-parallel: batchMean counts the labelled pixels of 'labels', which is not a split int32 input of this step (it has none)",
  });
  one.dispose();
});

test('sumGradientPiece: the pieces of every replica together are the rank-order float32 sum of the slots, element for element; untrained parameters and the other slots untouched', () => {
  // three parameters (sorted layout: a 5, b 7, c 1), b not trained this step; 3 and 5 replicas, so the
  // pieces (12 trained elements) cut inside parameters and one piece may be empty
  const sizes = new Map([
    ['a', 5],
    ['b', 7],
    ['c', 1],
  ]);
  const layout = {
    names: ['a', 'b', 'c'],
    offsets: new Map([
      ['a', 0],
      ['b', 5],
      ['c', 12],
    ]),
    sizes,
    total: 13,
  };
  const trained = ['a', 'c'];
  for (const parties of [2, 3, 5, 13]) {
    const areas = sharedAreas(parties, layout.total, Barrier.buffer(), AllReduce.buffer(parties, 4), 4);
    const slots = new Float32Array(areas.grads);
    // magnitudes from 1e-8 to 1e8: any other order of addition, a missed or a repeated slot changes the float32 result
    const [values, exponents] = [seededValues(slots.length, 7 + parties), seededValues(slots.length, 70 + parties)];
    for (let i = 0; i < slots.length; i++) slots[i] = values[i]! * 10 ** Math.floor((exponents[i]! + 1) * 8.5 - 8);
    const before = Float32Array.from(slots);
    const expected = Float32Array.from(before.subarray(0, layout.total));
    for (const name of trained) {
      const at = layout.offsets.get(name)!;
      for (let r = 1; r < parties; r++)
        for (let i = at; i < at + sizes.get(name)!; i++) expected[i] = Math.fround(expected[i]! + before[r * layout.total + i]!);
    }
    // the replicas run at once in any order: their pieces do not overlap
    for (let rank = parties - 1; rank >= 0; rank--) sumGradientPiece(areas, layout, trained, rank, parties);
    for (let i = 0; i < layout.total; i++)
      assert.ok(Object.is(slots[i], expected[i]), `${parties} replicas, element ${i}: ${slots[i]} vs ${expected[i]}`);
    // b (5..11) is as its replica wrote it, and slots 1.. are read, never written
    assert.deepEqual(slots.subarray(5, 12), before.subarray(5, 12));
    assert.deepEqual(slots.subarray(layout.total), before.subarray(layout.total));
  }
});

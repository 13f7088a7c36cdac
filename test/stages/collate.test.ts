import { test } from 'node:test';
import assert from 'node:assert/strict';
import { from, lastValueFrom, toArray } from 'rxjs';
import { Credits } from '../../src/graph/flow.ts';
import { collate } from '../../src/stages/collate.ts';
import { recycled, fakeReader, sample } from './fixtures.ts';

test('collate: batches in order with NHWC copies, int32 labels; release recycles and returns credits; drop_last or partial', async () => {
  recycled.length = 0;
  const credits = new Credits(5);
  for (let i = 0; i < 5; i++) credits.taken();
  const batches = await lastValueFrom(
    from([1, 2, 3, 4, 5].map((v) => sample(`k${v}`, v))).pipe(collate(2, { reader: fakeReader, credits }), toArray()),
  );
  assert.equal(batches.length, 2);
  assert.deepEqual(batches[1]!.keys, ['k3', 'k4']);
  assert.deepEqual([batches[0]!.images[0], batches[0]!.images[2 * 3 * 3]], [1, 2]);
  assert.ok(batches[0]!.labels instanceof Int32Array);
  assert.deepEqual([batches[1]!.labels![0], batches[1]!.labels![6]], [3, 4]);
  assert.equal(batches[0]!.decodeSeconds, 1);
  // k5 was dropped (drop_last): its buffers went back and its credit too
  assert.deepEqual(
    recycled.map((s) => s.key),
    ['k5'],
  );
  assert.equal(credits.inFlight, 4);
  batches[0]!.release();
  batches[0]!.release(); // idempotent
  assert.equal(credits.inFlight, 2);
  const partial = await lastValueFrom(
    from([sample('a', 1), sample('b', 2), sample('c', 3, 2, 3, false)]).pipe(
      collate(2, { reader: fakeReader, credits: new Credits(3), partial: true }),
      toArray(),
    ),
  );
  assert.deepEqual(
    partial.map((b) => b.n),
    [2, 1],
  );
  assert.equal(partial[1]!.labels, null);
  await assert.rejects(
    lastValueFrom(from([sample('a', 1), sample('b', 2, 4, 4)]).pipe(collate(2, { reader: fakeReader, credits: new Credits(2) }))),
    /collate: sample 'b' is 4x4 \(label 4x4\) but the batch is 2x3 \(label 2x3\)/,
  );
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { from, lastValueFrom, toArray } from 'rxjs';
import type { SampleReader } from '../../src/data/reader.ts';
import { Credits } from '../../src/graph/flow.ts';
import { sample } from './fixtures.ts';

test('decodeAugment: ordered output under concurrency; failing samples are skipped with their reason, credits returned; repairs reported', async () => {
  const { decodeAugment, skipLine, repairLine } = await import('../../src/stages/decode-augment.ts');
  const { SampleFault } = await import('../../src/data/faults.ts');
  const delays: Record<string, number> = { a: 30, b: 5, c: 15, d: 1, e: 8 };
  const fixed = {
    reason: 'unknown_label_ids' as const,
    file: 'shard-00000.lmdb',
    key: 'd',
    message: "shard-00000.lmdb: record 'd': label has 2 pixels with unknown IDs (40), expected train IDs 0..18 or 255; set to 255",
  };
  const reader = {
    threads: 2,
    read: async (_ds: unknown, key: string) => {
      await new Promise((r) => setTimeout(r, delays[key]));
      if (key === 'c')
        throw new SampleFault({
          reason: 'corrupt_image',
          file: 'shard-00000.lmdb',
          key,
          message: "shard-00000.lmdb: record 'c': image does not decode (truncated)",
        });
      if (key === 'e') throw new Error('a bug');
      return { ...sample(key, 1), repaired: key === 'd' ? fixed : null };
    },
  } as unknown as SampleReader;
  const credits = new Credits(5);
  for (let i = 0; i < 5; i++) credits.taken();
  const skipped: string[] = [];
  const repairs: string[] = [];
  const out = await lastValueFrom(
    from(['a', 'b', 'c', 'd', 'e'].map((key, index) => ({ key, index, seed: 0, dataset: {} as never }))).pipe(
      decodeAugment({
        reader,
        spec: { resize: [2, 3] },
        credits,
        concurrency: 4,
        onSkip: (e) => skipped.push(skipLine(e)),
        onRepair: (st, f) => repairs.push(repairLine(st, f)),
      }),
      toArray(),
    ),
  );
  assert.deepEqual(
    out.map((s) => s.key),
    ['a', 'b', 'd'],
  );
  assert.deepEqual(
    out.map((s) => s.ref.index),
    [0, 1, 3],
  );
  // the reason travels with the error; an error without one is 'other' (skips are reported as they happen: sorted)
  assert.deepEqual(skipped.sort(), [
    "skipped (corrupt_image): stage decode-augment (sample c): shard-00000.lmdb: record 'c': image does not decode (truncated)",
    'skipped (other): stage decode-augment (sample e): a bug',
  ]);
  assert.deepEqual(repairs, [
    "repaired (unknown_label_ids): stage decode-augment (sample d): shard-00000.lmdb: record 'd': label has 2 pixels with unknown IDs (40), expected train IDs 0..18 or 255; set to 255",
  ]);
  assert.equal(credits.inFlight, 3);
});

test('decodeAugment: by default every credit has its read in flight (a batch of 8 on 2 workers is read at once, not 4 at a time)', async () => {
  const { decodeAugment } = await import('../../src/stages/decode-augment.ts');
  const started: string[] = [];
  const finish: Array<() => void> = [];
  const reader = {
    threads: 2,
    read: (_ds: unknown, key: string) => {
      started.push(key);
      return new Promise((resolve) => finish.push(() => resolve({ ...sample(key, 1), repaired: null })));
    },
  } as unknown as SampleReader;
  const keys = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j'];
  const credits = new Credits(8);
  const out: string[] = [];
  // the source hands out 10 refs, as read-shards would if it ignored credits: the stage alone bounds the reads
  const sub = from(keys.map((key, index) => ({ key, index, seed: 0, dataset: {} as never })))
    .pipe(decodeAugment({ reader, spec: { resize: [2, 3] }, credits }))
    .subscribe((s) => out.push(s.key));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(started, keys.slice(0, 8));
  finish.splice(0, 8).forEach((f) => f());
  await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(started, keys);
  finish.splice(0).forEach((f) => f());
  await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(out, keys);
  sub.unsubscribe();
});

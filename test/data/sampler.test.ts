import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ClassBalancedSampler, ShuffleSampler } from '../../src/data/sampler.ts';
import { Rng } from '../../src/data/rng.ts';

const keys = Array.from({ length: 10 }, (_, i) => `k${i}`);
const take = (s: { next(): string }, n: number) => Array.from({ length: n }, () => s.next());

test('Rng: deterministic, state round-trips, uniform mean, shuffle is a permutation', () => {
  const a = new Rng(42);
  const b = new Rng(42);
  assert.deepEqual(take({ next: () => String(a.nextU32()) }, 5), take({ next: () => String(b.nextU32()) }, 5));
  const c = new Rng(a.state());
  assert.equal(c.next(), a.next());
  const r = new Rng(1);
  let sum = 0;
  for (let i = 0; i < 100_000; i++) sum += r.next();
  assert.ok(Math.abs(sum / 100_000 - 0.5) < 0.005);
  assert.deepEqual(new Rng(3).shuffle([...keys]).sort(), [...keys].sort());
});

test('ShuffleSampler: each epoch is a permutation, epochs differ, same seed same stream, state resumes exactly', () => {
  const s = new ShuffleSampler(keys, { seed: 7 });
  const e0 = take(s, 10);
  const e1 = take(s, 10);
  assert.deepEqual([...e0].sort(), [...keys].sort());
  assert.deepEqual([...e1].sort(), [...keys].sort());
  assert.notDeepEqual(e0, e1);
  assert.deepEqual(take(new ShuffleSampler(keys, { seed: 7 }), 20), [...e0, ...e1]);
  const t = new ShuffleSampler(keys, { seed: 7 });
  take(t, 13);
  const resumed = new ShuffleSampler(keys, { seed: 7, state: t.state() });
  assert.deepEqual(take(resumed, 15), take(t, 15));
});

test('ShuffleSampler shards: readers get disjoint parts that cover the epoch', () => {
  const a = take(new ShuffleSampler(keys, { seed: 1, shard: { index: 0, count: 3 } }), 4);
  const b = take(new ShuffleSampler(keys, { seed: 1, shard: { index: 1, count: 3 } }), 3);
  const c = take(new ShuffleSampler(keys, { seed: 1, shard: { index: 2, count: 3 } }), 3);
  assert.deepEqual([...a, ...b, ...c].sort(), [...keys].sort());
  assert.throws(
    () => new ShuffleSampler(keys, { seed: 1, shard: { index: 3, count: 3 } }),
    /sampler: shard 3 of 3: expected 0 <= index < count/,
  );
  assert.throws(() => new ShuffleSampler([], { seed: 1 }), /sampler: no keys to sample from/);
});

// 100 images: every image has class 0; class 1 in 50 images; class 2 in exactly one; class 3 in none.
const samples: [string, number[]][] = Array.from({ length: 100 }, (_, i) => [`img${i}`, i === 0 ? [0, 2] : i % 2 ? [0, 1] : [0]]);

test('ClassBalancedSampler: weights 1/ln(1.01 + d) by hand, 0 for a class without images', () => {
  const s = new ClassBalancedSampler(samples, 4, { seed: 0 });
  // no draws yet: d = 0 for all classes -> equal weights over the 3 classes with images
  assert.deepEqual(
    s.weights().map((w) => +w.toFixed(6)),
    [1 / 3, 1 / 3, 1 / 3, 0].map((w) => +w.toFixed(6)),
  );
  const first = s.next();
  const classes = samples.find(([k]) => k === first)![1];
  const c = [0, 0, 0, 0];
  for (const k of classes) c[k]!++;
  const total = c.reduce((a, b) => a + b, 0);
  const raw = c.map((v, k) => (k === 3 ? 0 : 1 / Math.log(1.01 + v / total)));
  const sum = raw.reduce((a, b) => a + b, 0);
  assert.deepEqual(
    s.weights().map((w) => +w.toFixed(9)),
    raw.map((w) => +(w / sum).toFixed(9)),
  );
});

test('ClassBalancedSampler: a rare class is drawn far above its frequency; lists of length 1 wrap without crashing', () => {
  const s = new ClassBalancedSampler(samples, 4, { seed: 3, subEpoch: 3000 });
  const drawn = take(s, 3000);
  const rare = drawn.filter((k) => k === 'img0').length / drawn.length;
  // img0 is 1% of the images; the sampler gives class 2 (only in img0) a large share of the draws.
  assert.ok(rare > 0.15, `rare class share ${rare}`);
  const c1 = drawn.filter((k) => Number(k.slice(3)) % 2 === 1).length / drawn.length;
  assert.ok(c1 > 0.4 && c1 < 0.7, `class 1 share ${c1}`);
});

test('ClassBalancedSampler: same seed same stream, state resumes exactly, shards split one stream', () => {
  const a = take(new ClassBalancedSampler(samples, 4, { seed: 9, subEpoch: 50 }), 200);
  const b = new ClassBalancedSampler(samples, 4, { seed: 9, subEpoch: 50 });
  assert.deepEqual(take(b, 200), a);
  const c = new ClassBalancedSampler(samples, 4, { seed: 9, subEpoch: 50 });
  take(c, 77);
  const resumed = new ClassBalancedSampler(samples, 4, { seed: 9, subEpoch: 50, state: JSON.parse(JSON.stringify(c.state())) });
  assert.deepEqual(take(resumed, 123), take(c, 123));
  const s0 = take(new ClassBalancedSampler(samples, 4, { seed: 9, subEpoch: 50, shard: { index: 0, count: 2 } }), 100);
  const s1 = take(new ClassBalancedSampler(samples, 4, { seed: 9, subEpoch: 50, shard: { index: 1, count: 2 } }), 100);
  assert.deepEqual(
    s0,
    a.filter((_, i) => i % 2 === 0),
  );
  assert.deepEqual(
    s1,
    a.filter((_, i) => i % 2 === 1),
  );
  assert.throws(() => new ClassBalancedSampler([['x', []]], 3, { seed: 0 }), /sampler: no labelled image contains any class/);
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { lastValueFrom, take, toArray } from 'rxjs';
import { ingestDataset } from '../../src/data/ingest.ts';
import { openDataset } from '../../src/data/reader.ts';
import { writeSyntheticArrivals } from '../../src/synthetic/render.ts';
import { lookAtTarget, watchTarget, WATCH_PREFIX } from '../../src/stages/watch-target.ts';

const quiet = { log: () => {}, progressStream: null, threads: 1 } as const;

/** A label-free Cityscapes-layout target of `n` synthetic images, ingested into `<dir>/target`. */
async function smallTarget(dir: string, n: number): Promise<string> {
  await writeSyntheticArrivals(join(dir, 'raw'), { from: 0, count: n, city: 'base', size: [32, 64] });
  const out = join(dir, 'target');
  await ingestDataset({ ...quiet, dataset: 'cityscapes', root: join(dir, 'raw'), out, labels: 'none' });
  return out;
}

test('watch: settled files of the watched folder are ingested under watch/ keys; a corrupt file is named once and retried only when it changes', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'spcl-watch-'));
  const dataset = await openDataset(await smallTarget(dir, 4));
  const watch = join(dir, 'watch');
  let clock = Date.now();
  const lines: string[] = [];
  const look = lookAtTarget({ dataset, watch, pollSeconds: 1, settleSeconds: 5, now: () => clock, log: (l) => lines.push(l) });
  assert.equal(await look(), null, 'nothing new');

  const paths = await writeSyntheticArrivals(watch, { from: 10, count: 3, size: [32, 64] });
  const mtime = (await stat(paths[2]!)).mtimeMs;
  clock = mtime + 1000; // 1 s after the last write: not settled (5 s)
  assert.equal(await look(), null, 'files still being written are left alone');

  clock = mtime + 6000;
  const a = await look();
  assert.ok(a);
  assert.deepEqual([a.added, a.ingested, a.problems, a.dataset.keys.length], [3, 3, 0, 7]);
  assert.deepEqual(
    a.dataset.keys.filter((k) => k.startsWith(WATCH_PREFIX)),
    ['arrivals/arrivals_000010_000019', 'arrivals/arrivals_000011_000019', 'arrivals/arrivals_000012_000019'].map((k) => WATCH_PREFIX + k),
  );
  assert.match(a.dataset.shardOf(`${WATCH_PREFIX}arrivals/arrivals_000010_000019`), /shard-99999\.lmdb$/);
  assert.equal(await look(), null, 'ingested files are not taken twice');

  // a truncated PNG: counted and named once, not retried while unchanged
  const bad = join(watch, 'leftImg8bit/train/arrivals/arrivals_000099_000019_leftImg8bit.png');
  const good = await readFile(paths[0]!);
  await writeFile(bad, good.subarray(0, 60));
  const old = new Date(clock - 60_000);
  await utimes(bad, old, old);
  const b = await look();
  assert.ok(b);
  assert.deepEqual([b.added, b.ingested, b.problems], [0, 0, 1]);
  const named = lines.filter((l) => l.includes(bad));
  assert.equal(named.length, 1, lines.join('\n'));
  assert.match(named[0]!, /^watch: problem \(/);
  assert.equal(await look(), null, 'the corrupt file is not retried');
  assert.equal(lines.filter((l) => l.includes(bad)).length, 1);
  // the file is completed (new size and mtime): taken
  await writeFile(bad, good);
  await utimes(bad, old, old);
  const c = await look();
  assert.ok(c);
  assert.deepEqual([c.added, c.ingested, c.problems, c.dataset.keys.length], [1, 1, 0, 8]);
  await rm(dir, { recursive: true });
});

test('watch: records appended by another ingest show up when it rewrites the manifest; watchTarget polls and emits', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'spcl-watch-'));
  const target = await smallTarget(dir, 4);
  const dataset = await openDataset(target);
  const look = lookAtTarget({ dataset, watch: null, pollSeconds: 1, settleSeconds: 0, log: () => {} });
  assert.equal(await look(), null);
  // another process's ingest: more images of another city, into the same folder's shard 0
  await writeSyntheticArrivals(join(dir, 'more'), { from: 50, count: 5, city: 'other', size: [32, 64] });
  await ingestDataset({ ...quiet, dataset: 'cityscapes', root: join(dir, 'more'), out: target, labels: 'none' });
  const a = await look();
  assert.ok(a);
  assert.deepEqual([a.added, a.ingested, a.problems, a.dataset.keys.length], [5, 0, 0, 9]);
  assert.equal(await look(), null);

  // the polling stage: two more arrivals while it runs, emitted once
  const polled = lastValueFrom(
    watchTarget({ dataset: a.dataset, watch: null, pollSeconds: 0.05, settleSeconds: 0, log: () => {} }).pipe(take(1), toArray()),
  );
  await writeSyntheticArrivals(join(dir, 'more2'), { from: 70, count: 2, city: 'third', size: [32, 64] });
  await ingestDataset({ ...quiet, dataset: 'cityscapes', root: join(dir, 'more2'), out: target, labels: 'none' });
  const [e] = await polled;
  assert.deepEqual([e!.added, e!.dataset.keys.length], [2, 11]);
  await rm(dir, { recursive: true });
});

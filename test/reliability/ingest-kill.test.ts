/**
 * Mid-ingest kill -9 (issue 6): `pipelines/ingest.ts` on a generated GTA5-layout tree is killed at the
 * `ingest` crash point (after a record's write transaction was queued: some committed, some not) and at
 * seeded-random instants, and re-run until it completes. After every kill the shard opens and its two
 * databases agree (a record and its index entry are written in one transaction), and no committed
 * record is lost; every re-run skips exactly what is there. The final manifest and every record equal
 * those of a clean, uninterrupted ingest.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openShardReadOnly, shardFileName, type Manifest } from '../../src/data/shards.ts';
import { seededValues } from '../helpers.ts';
import { writeBands, writeRgb } from '../data/trees.ts';
import { exists, root, runNode, type RunOptions } from './harness.ts';

const IMAGES = 40;

async function shardContents(dir: string): Promise<{ records: Map<string, unknown>; index: Map<string, number> }> {
  const h = openShardReadOnly(join(dir, shardFileName(0)));
  try {
    return {
      records: new Map([...h.records.getRange()].map(({ key, value }) => [key, value])),
      index: new Map([...h.index.getRange()].map(({ key, value }) => [key, value])),
    };
  } finally {
    await h.close();
  }
}

test('ingest killed -9 at the ingest crash point and at random instants, re-run until done: manifest and records equal a clean ingest', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'spcl-ingest-kill-'));
  t.after(() => rm(dir, { recursive: true, force: true })); // also when an assertion fails
  const tree = join(dir, 'gta5');
  for (let i = 1; i <= IMAGES; i++) {
    const name = String(i).padStart(5, '0');
    await writeRgb(join(tree, 'images', `${name}.png`), 64, 32, i);
    await writeBands(join(tree, 'labels', `${name}.png`), 64, 32, [23, [7, 26, 24, 11][i % 4]!, 7]);
  }
  const ingest = (out: string, opts: RunOptions = {}) =>
    runNode(
      [join(root, 'pipelines/ingest.ts'), '--dataset', 'gta5', '--root', tree, '--out', out, '--threads', '1', '--metrics-port', '0'],
      opts,
    );

  const clean = await ingest(join(dir, 'clean'));
  assert.equal(clean.code, 0, clean.stderr);
  // how long a record takes here, from the line that says what there is to do to the exit: the random
  // kills fall within the first half of what the remaining records should take, so a fast machine does
  // not finish before its kill (a fixed window did, once, on an idle CI machine)
  const toDo = clean.lines.find((l) => /^ingest: .* to do \d+$/.test(l.line));
  assert.ok(toDo, `no 'to do' line: ${clean.stderr}`);
  const perRecordMs = (clean.ms - toDo.ms) / IMAGES;
  const expected = await shardContents(join(dir, 'clean'));
  assert.equal(expected.records.size, IMAGES);

  const out = join(dir, 'killed');
  // seeded: crash-point occurrences (records this process queued: 1-8) and, for the random kills, the
  // fraction (0-1) of half the time the records still to do should take, counted from the 'to do' line
  const u = seededValues(8, 21);
  const plan: (RunOptions | { fraction: number })[] = [];
  for (let i = 0; i < 4; i++) {
    plan.push({ env: { SPCL_CRASH_AT: `ingest:${1 + Math.floor(4 * (u[i]! + 1))}` } });
    plan.push({ fraction: (u[4 + i]! + 1) / 2 });
  }
  let have = 0;
  const kills = { point: 0, random: 0 };
  for (const planned of plan) {
    // nothing left to kill mid-ingest: on a loaded machine a random kill can land after the last record
    // (in the run's teardown), and a crash point past the records still to do is never reached
    if (have === IMAGES) break;
    const point = 'fraction' in planned ? null : Number(/^ingest:(\d+)$/.exec(planned.env!.SPCL_CRASH_AT!)![1]);
    if (point !== null && point > IMAGES - have) continue;
    const step: RunOptions =
      'fraction' in planned
        ? { signal: { afterLine: /^ingest: .* to do \d+$/, afterMs: Math.round(planned.fraction * 0.5 * perRecordMs * (IMAGES - have)) } }
        : planned;
    const r = await ingest(out, step);
    assert.equal(r.signal, 'SIGKILL', `${JSON.stringify(step)}: not killed (exit ${r.code}): ${r.stderr}`);
    if (step.env) assert.match(r.stderr, /^crash-point: ingest:\d+: SIGKILL$/m);
    kills[step.env ? 'point' : 'random']++;
    const already = /already written (\d+), to do (\d+)/.exec(r.stderr);
    if (already) assert.equal(Number(already[1]), have, `re-run skipped ${already[1]} records, the shard held ${have}`);
    if (!(await exists(join(out, shardFileName(0))))) continue; // killed before the shard was created
    const got = await shardContents(out);
    assert.deepEqual([...got.records.keys()], [...got.index.keys()], 'records and index disagree');
    assert.ok(got.records.size >= have, `records lost: ${got.records.size} < ${have}`);
    for (const [k, v] of got.records) assert.deepEqual(v, expected.records.get(k), `record ${k}`);
    have = got.records.size;
  }
  assert.ok(kills.point >= 1 && kills.point + kills.random >= 2, `only ${JSON.stringify(kills)} kills`);
  const last = await ingest(out);
  assert.equal(last.code, 0, last.stderr);
  assert.match(last.stderr, new RegExp(`already written ${have}, to do ${IMAGES - have}`));
  const got = await shardContents(out);
  assert.deepEqual(got.records, expected.records);
  assert.deepEqual(got.index, expected.index);
  const manifest = async (d: string) => {
    const m = JSON.parse(await readFile(join(d, 'manifest.json'), 'utf8')) as Partial<Manifest>;
    delete m.updatedAt;
    return m;
  };
  assert.deepEqual(await manifest(out), await manifest(join(dir, 'clean')));
  t.diagnostic(
    `ingest kills survived: ${kills.point + kills.random} (${kills.point} at the ingest crash point, ${kills.random} at random instants; ${IMAGES} records)`,
  );
});

/**
 * `bench:step --isolate`: every wasm setting timed in a process of its own (bench/step-process.ts), the
 * ratios to one thread taken round by round. Tiny sizes: this checks the plumbing and the arithmetic of
 * the report, not a speed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';

const root = new URL('../../', import.meta.url).pathname;

function bench(...flags: string[]) {
  return spawnSync(process.execPath, [join(root, 'bench/step.ts'), ...flags], { cwd: root, encoding: 'utf8', timeout: 120_000 });
}

interface Row {
  engine: string;
  threads: number;
  kernelThreads: number;
  msPerStep: number | null;
  note?: string;
  ratioToOneThread?: number;
  ratioToOneThreadRange?: [number, number];
  msPerRound?: number[];
  independent?: true;
}

const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)]!;

test('bench:step --isolate times each setting in its own process: one row per setting, ratios within their rounds, a failing setting named', () => {
  const r = bench(
    ...['--nets', 'plain', '--sizes', '16x32', '--batch', '2', '--backends', 'wasm', '--steps', '2'],
    ...['--threads', '1,2,3', '--kernel-threads', '1,2', '--python', '/nonexistent/python3', '--isolate', '--rounds', '3', '--json'],
  );
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { isolate: unknown; results: Row[] };
  assert.deepEqual(out.isolate, { rounds: 3 });
  const wasm = (t: number, k: number) => out.results.find((x) => x.engine === 'tfjs-wasm' && x.threads === t && x.kernelThreads === k)!;
  const one = wasm(1, 1);
  assert.equal(one.ratioToOneThread, undefined);
  for (const row of [one, wasm(2, 1), wasm(1, 2)]) {
    // a figure per round (one process each), the setting's figure their median
    assert.equal(row.msPerRound!.length, 3, JSON.stringify(row));
    assert.ok(row.msPerRound!.every((ms) => ms > 0));
    assert.equal(row.msPerStep, median(row.msPerRound!));
  }
  for (const row of [wasm(2, 1), wasm(1, 2)]) {
    // each round against the same round's one-thread process
    const ratios = row.msPerRound!.map((ms, i) => ms / one.msPerRound![i]!);
    assert.equal(row.ratioToOneThread, median(ratios));
    assert.deepEqual(row.ratioToOneThreadRange, [Math.min(...ratios), Math.max(...ratios)]);
  }
  // 3 replicas cannot split a batch of 2: that setting's process fails, the others are timed
  assert.deepEqual(wasm(3, 1), {
    ...wasm(3, 1),
    msPerStep: null,
    note: "its process failed: data-parallel: 'images' has 2 rows, it cannot be split over 3 threads (train.threads at most the batch size)",
  });
  assert.equal(out.results.find((x) => x.engine === 'pytorch')!.note, '/nonexistent/python3 not found');
});

test('bench:step --floor times the shards as independent steps at once beside the data-parallel step, a split it cannot make named', () => {
  const r = bench(
    ...['--nets', 'plain', '--sizes', '16x32', '--batch', '2', '--backends', 'wasm', '--steps', '3'],
    ...['--threads', '1,2,3', '--kernel-threads', '1', '--python', '/nonexistent/python3', '--floor', '--json'],
  );
  assert.equal(r.status, 0, r.stderr);
  const rows = (JSON.parse(r.stdout) as { results: Row[] }).results.filter((x) => x.engine === 'tfjs-wasm');
  // 1, 2 and 3 replicas, then the floor at 2 and 3
  assert.deepEqual(
    rows.map((x) => [x.threads, x.independent ?? false, x.msPerStep === null ? x.note : 'timed']),
    [
      [1, false, 'timed'],
      [2, false, 'timed'],
      [3, false, "data-parallel: 'images' has 2 rows, it cannot be split over 3 threads (train.threads at most the batch size)"],
      [2, true, 'timed'],
      [3, true, 'a batch of 2 rows cannot be split over 3 threads'],
    ],
  );
  const floor = rows[3]!;
  assert.ok(floor.msPerStep! > 0 && floor.ratioToOneThread! > 0, JSON.stringify(floor));
  assert.ok(floor.ratioToOneThreadRange![0] <= floor.ratioToOneThread! && floor.ratioToOneThread! <= floor.ratioToOneThreadRange![1]);
});

test('bench:step --floor with --isolate is refused (exit 2)', () => {
  const r = bench('--floor', '--isolate');
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--floor times in one process: it cannot be combined with --isolate/);
});

test('bench:step --rounds below 1 is refused with the flag named (exit 2)', () => {
  const r = bench('--isolate', '--rounds', '0');
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--rounds must be an integer >= 1, got '0'/);
});

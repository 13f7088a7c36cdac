/**
 * Disk full, on a real file system: the run folder is a tmpfs of 11 MiB mounted in a private mount
 * namespace (`unshare -rm`, no root needed), driven by `disk-full-driver.ts` inside it.
 *
 * 1. The warm-up's third checkpoint (4.6 MB each, two kept) does not fit: the save fails with ENOSPC,
 *    the process exits 1 naming the file, the bytes it needed, the free space (the same figure statfs
 *    gives afterwards) and the complete checkpoint latest.json still names; no temporary file is left.
 * 2. The tmpfs grows to 24 MiB (space freed); `--resume` continues from that checkpoint to the end.
 * 3. Then the disk fills up (a second file takes every byte) while a pseudo-label generation is being
 *    written, while the threshold pass writes its scratch, and between a checkpoint's rename and its
 *    latest.json: each time exit 1 with the file and the free space, current.json still names the
 *    previous complete generation (24 records), latest.json a complete checkpoint, nothing partial left.
 * 4. With the space back, the same phase completes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { lastRecordPerStep, readStepLog } from '../../src/observe/step-log.ts';
import { node, root, smallData, smallRunArgs } from './harness.ts';
import { writeBands, writeRgb } from '../data/trees.ts';
import type { CheckpointPointer } from '../../src/stages/checkpoint.ts';
import type { GenerationInfo } from '../../src/data/pseudo-labels.ts';

interface Snapshot {
  step: { run?: string[]; env?: Record<string, string>; remount?: string; unfill?: boolean };
  code?: number | null;
  signal?: string | null;
  stdout?: string;
  stderr?: string;
  filled?: number | null;
  free: number;
  files: Record<string, number>;
  committed: { latest: CheckpointPointer | null; current: GenerationInfo | null } | { error: string };
}

/** Runs the driver in a private mount namespace with a tmpfs of `size` at `mount`; its snapshots. */
function drive(mount: string, size: string, steps: object[], out: string): Snapshot[] {
  const driver = spawnSync(
    'unshare',
    [
      '-rm',
      'sh',
      '-c',
      `mount -t tmpfs -o size=${size} tmpfs "$1" && exec "$2" "$3" "$1" "$4" "$5"`,
      'sh',
      mount,
      node,
      join(root, 'test/reliability/disk-full-driver.ts'),
      JSON.stringify(steps),
      out,
    ],
    { cwd: root, encoding: 'utf8', timeout: 600_000, maxBuffer: 1 << 26 },
  );
  assert.equal(driver.status, 0, `driver: ${driver.stderr.slice(-3000)}`);
  const snaps = driver.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Snapshot);
  assert.equal(snaps.length, steps.length);
  return snaps;
}

const mountWorks = (dir: string) =>
  spawnSync('unshare', ['-rm', 'sh', '-c', `mount -t tmpfs -o size=1m tmpfs '${dir}'`], { encoding: 'utf8' });
const re = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const MIB = '\\d+ bytes \\(\\d+\\.\\d\\d MiB\\)';
// lmdb-js's native code prints 'Write error: ...' without a newline: the messages below may follow it on a line
const freeIn = (message: string) => Number(/[,:] (\d+) bytes \(\d+\.\d\d MiB\) free in /.exec(message)?.[1] ?? NaN);

test('disk full: a checkpoint, a pseudo-label generation, the threshold scratch and latest.json hit ENOSPC on a real tmpfs; the previous state stays whole; --resume continues', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'spcl-diskfull-'));
  t.after(() => rm(dir, { recursive: true, force: true })); // also when an assertion fails
  const mount = join(dir, 'mnt');
  await mkdir(mount);
  const probe = mountWorks(mount);
  if (probe.status !== 0) {
    t.skip(`cannot mount a tmpfs in a private mount namespace here (unshare -rm: ${(probe.stderr || probe.error?.message || '').trim()})`);
    return;
  }
  const data = await smallData(join(dir, 'data'));
  const out = join(mount, 'run');
  const stepLog = join(dir, 'steps.log');
  const base = smallRunArgs(data, out, stepLog);
  const phase2 = [...base, '--phase', 'pseudo-labels-2'];
  const steps = [
    { run: base },
    { remount: '24m' },
    { run: [...base, '--resume'] },
    { run: phase2, env: { SPCL_CRASH_AT: 'pseudo-write:5:SIGSTOP' }, fillOnStop: true },
    { unfill: true },
    { run: phase2, env: { SPCL_CRASH_AT: 'thresholds:2:SIGSTOP' }, fillOnStop: true },
    { unfill: true },
    { run: phase2, env: { SPCL_CRASH_AT: 'checkpoint-commit:1:SIGSTOP' }, fillOnStop: true },
    { unfill: true },
    { run: phase2 },
  ];
  const snaps = drive(mount, '11m', steps, out);
  const tmpFiles = (s: Snapshot) => Object.keys(s.files).filter((f) => /\.tmp-\d+$/.test(f));
  const committed = (s: Snapshot) => {
    assert.ok(!('error' in s.committed), `committed state: ${JSON.stringify(s.committed)}`);
    return s.committed as { latest: CheckpointPointer; current: GenerationInfo | null };
  };
  const ckpts = (s: Snapshot) => Object.keys(s.files).filter((f) => f.startsWith('run/checkpoints/ckpt-'));

  // 1. the third warm-up checkpoint does not fit
  const [a1, , a2, b1, , c1, , d1, , e] = snaps as [
    Snapshot,
    Snapshot,
    Snapshot,
    Snapshot,
    Snapshot,
    Snapshot,
    Snapshot,
    Snapshot,
    Snapshot,
    Snapshot,
  ];
  assert.equal(a1.code, 1, a1.stderr);
  const size6 = a1.files['run/checkpoints/ckpt-warmup-00000006.safetensors']!;
  const m1 = new RegExp(
    `^spcl: checkpoint ${re(out)}/checkpoints/ckpt-warmup-00000008\\.safetensors: no space left on the device \\(ENOSPC\\): ` +
      `(\\d+) bytes \\(\\d+\\.\\d\\d MiB\\) to write, ${re(`${a1.free}`)} bytes \\(${(a1.free / 2 ** 20).toFixed(2)} MiB\\) free in ${re(out)}/checkpoints; ` +
      `latest\\.json names ckpt-warmup-00000006\\.safetensors \\(warmup, iteration 6\\), which is complete\\n` +
      'spcl: free space, then run again with --resume: it continues from the checkpoint latest.json names$',
    'm',
  ).exec(a1.stderr!);
  assert.ok(m1, a1.stderr!.slice(-1500));
  assert.ok(Math.abs(Number(m1[1]) - size6) < 64, `needed ${m1[1]} bytes, a checkpoint of this phase is ${size6}`);
  assert.ok(a1.free < Number(m1[1]), `${a1.free} bytes free, ${m1[1]} needed`);
  assert.equal(committed(a1).latest.file, 'ckpt-warmup-00000006.safetensors');
  assert.deepEqual(tmpFiles(a1), []);
  assert.deepEqual(ckpts(a1), ['run/checkpoints/ckpt-warmup-00000003.safetensors', 'run/checkpoints/ckpt-warmup-00000006.safetensors']);

  // 2. space freed: --resume continues from warm-up iteration 6 and completes
  assert.equal(a2.code, 0, a2.stderr!.slice(-2000));
  assert.match(
    a2.stderr!,
    /^resume: ckpt-warmup-00000006\.safetensors \(phase warmup, iteration 6; done: nothing; pseudo-labels: none\)$/m,
  );
  const log = readStepLog(stepLog);
  assert.deepEqual(
    log.slice(0, 9).map((r) => `${r.phase} ${r.iteration}`),
    [1, 2, 3, 4, 5, 6, 7, 8, 7].map((i) => `warmup ${i}`),
    'steps 7-8 redone after the failure',
  );
  assert.equal(lastRecordPerStep(log).length, 16);
  assert.equal(committed(a2).latest.file, 'ckpt-ssl-00000004.safetensors');
  assert.equal(committed(a2).current!.file, 'gen-000002.lmdb');
  assert.ok('run/report.json' in a2.files);

  // 3a. the disk fills up while generation 3 is written
  assert.ok(b1.filled! > 0, 'nothing filled');
  assert.equal(b1.code, 1, b1.stderr!.slice(-2000));
  const m2 = new RegExp(
    `spcl: pseudo-label generation ${re(out)}/pseudo-labels/gen-000003\\.lmdb: ` +
      `(no space left on the device \\(ENOSPC\\)|write failed \\([^)]+\\) with the file system full): ${MIB} free in ${re(out)}/pseudo-labels; ` +
      'the partial gen-000003\\.lmdb was deleted; current\\.json still names gen-000002\\.lmdb, which is complete$',
    'm',
  ).exec(b1.stderr!);
  assert.ok(m2, b1.stderr!.slice(-1500));
  assert.ok(freeIn(m2[0]) < 2 ** 20, `free at the failure: ${freeIn(m2[0])}`);
  assert.deepEqual([committed(b1).current!.file, committed(b1).current!.count], ['gen-000002.lmdb', 24]);
  assert.equal(committed(b1).latest.file, 'ckpt-ssl-00000004.safetensors');
  assert.deepEqual(
    Object.keys(b1.files).filter((f) => f.includes('gen-000003')),
    [],
  );
  assert.deepEqual(tmpFiles(b1), []);

  // 3b. ... while the threshold pass writes its scratch predictions
  assert.equal(c1.code, 1, c1.stderr!.slice(-2000));
  const m3 = new RegExp(
    `spcl: threshold pass scratch ${re(out)}/scratch-predictions\\.lmdb: ` +
      `(no space left on the device \\(ENOSPC\\)|write failed \\([^)]+\\) with the file system full): ${MIB} free in ${re(out)}$`,
    'm',
  ).exec(c1.stderr!);
  assert.ok(m3, c1.stderr!.slice(-1500));
  assert.deepEqual([committed(c1).current!.file, committed(c1).latest.file], ['gen-000002.lmdb', 'ckpt-ssl-00000004.safetensors']);
  assert.deepEqual(tmpFiles(c1), []);

  // 3c. ... between a checkpoint's rename and latest.json
  assert.equal(d1.code, 1, d1.stderr!.slice(-2000));
  const m4 = new RegExp(
    `^spcl: checkpoint pointer ${re(out)}/checkpoints/latest\\.json: no space left on the device \\(ENOSPC\\): ${MIB} to write, ` +
      `${MIB} free in ${re(out)}/checkpoints; latest\\.json names ckpt-ssl-00000004\\.safetensors \\(ssl, iteration 4\\), which is complete$`,
    'm',
  ).exec(d1.stderr!);
  assert.ok(m4, d1.stderr!.slice(-1500));
  assert.equal(committed(d1).latest.file, 'ckpt-ssl-00000004.safetensors');
  assert.deepEqual(tmpFiles(d1), []);

  // 4. with the space back the phase completes
  assert.equal(e.code, 0, e.stderr!.slice(-2000));
  assert.equal(committed(e).latest.file, 'ckpt-pseudo-labels-2-00000000.safetensors');
  assert.deepEqual(tmpFiles(e), []);
  t.diagnostic(
    `ENOSPC: checkpoint (${m1[1]} bytes to write, ${a1.free} free), generation (filled ${b1.filled} bytes), scratch (filled ${c1.filled}), latest.json (filled ${d1.filled})`,
  );
});

test('disk full during ingest: the error names the shard and the free space; the shard keeps its committed records; a re-run with space completes', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'spcl-diskfull-ingest-'));
  t.after(() => rm(dir, { recursive: true, force: true })); // also when an assertion fails
  const mount = join(dir, 'mnt');
  await mkdir(mount);
  const probe = mountWorks(mount);
  if (probe.status !== 0) {
    t.skip(`cannot mount a tmpfs in a private mount namespace here (unshare -rm: ${(probe.stderr || probe.error?.message || '').trim()})`);
    return;
  }
  const tree = join(dir, 'gta5');
  for (let i = 1; i <= 40; i++) {
    const name = String(i).padStart(5, '0');
    await writeRgb(join(tree, 'images', `${name}.png`), 64, 32, i);
    await writeBands(join(tree, 'labels', `${name}.png`), 64, 32, [23, 7]);
  }
  const out = join(mount, 'shards');
  const ingest = [
    join(root, 'pipelines/ingest.ts'),
    '--dataset',
    'gta5',
    '--root',
    tree,
    '--out',
    out,
    '--threads',
    '1',
    '--metrics-port',
    '0',
  ];
  // 60 KiB: a few records fit, not 40
  const [full, , again] = drive(mount, '60k', [{ run: ingest }, { remount: '1m' }, { run: ingest }], out) as [Snapshot, Snapshot, Snapshot];
  assert.equal(full.code, 1, full.stderr);
  const m = new RegExp(
    `ingest: shard ${re(out)}/shard-00000\\.lmdb: (no space left on the device \\(ENOSPC\\)|write failed \\([^)]+\\) with the file system full): ` +
      `${MIB} free in ${re(out)}$`,
    'm',
  ).exec(full.stderr!);
  assert.ok(m, full.stderr);
  assert.ok(!('manifest.json' in full.files), 'a manifest was written for a failed ingest');
  assert.equal(again.code, 0, again.stderr);
  const kept = /already written (\d+), to do (\d+)/.exec(again.stderr!);
  assert.ok(kept && Number(kept[1]) > 0 && Number(kept[1]) + Number(kept[2]) === 40, again.stderr);
  assert.match(
    again.stdout!,
    new RegExp(`^ingest: written ${kept[2]}, already there ${kept[1]}, problems 0; .*dataset total 40 records`, 'm'),
  );
  t.diagnostic(`ingest on a full disk: ${kept[1]} records committed before ENOSPC, kept; the re-run wrote the other ${kept[2]}`);
});

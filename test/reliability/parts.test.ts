/**
 * The parts crash safety is built from, one at a time: crash-point parsing and firing, atomic writes
 * (a torn temporary file, its clean-up), disk-full errors, generation pins and recovery, the step log,
 * passes that stop on a signal, training that stops after the step in progress, header-only checkpoint
 * metadata.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { from, lastValueFrom, NEVER, of, Subject, toArray } from 'rxjs';
import { PseudoLabelWriter, currentGeneration, generationFile, recoverGenerations } from '../../src/data/pseudo-labels.ts';
import { AbortedError, failOnAbort, reduceItems } from '../../src/graph/flow.ts';
import { DiskFullError, describeWriteFailure, freeBytes, removeStaleTemporaries, writeFileAtomic } from '../../src/io/atomic.ts';
import { parseCrashAt } from '../../src/io/crash-points.ts';
import { readCheckpointMeta, saveCheckpoint } from '../../src/io/weights.ts';
import { lastRecordPerStep, readStepLog, stepLogEvents } from '../../src/observe/step-log.ts';
import { CheckpointStore } from '../../src/stages/checkpoint.ts';
import { trainStep, type StepReport } from '../../src/stages/train-step.ts';
import { writeGeneration } from '../../src/stages/write-pseudo-labels.ts';
import { useBackend } from '../helpers.ts';
import { node, root } from './harness.ts';

test('SPCL_CRASH_AT: NAME:N[:SIGNAL] parsed; a bad value names the variable, the value and what is expected', () => {
  assert.deepEqual(parseCrashAt('checkpoint-write:2'), { point: 'checkpoint-write', occurrence: 2, signal: 'SIGKILL' });
  assert.deepEqual(parseCrashAt('step:3:SIGTERM'), { point: 'step', occurrence: 3, signal: 'SIGTERM' });
  const points = 'step, checkpoint-write, checkpoint-commit, prototypes, thresholds, pseudo-write, pseudo-commit, evaluate, ingest';
  assert.throws(() => parseCrashAt('step'), {
    message: `SPCL_CRASH_AT=step: expected NAME:N[:SIGNAL] (e.g. checkpoint-write:2) with NAME one of ${points}`,
  });
  assert.throws(() => parseCrashAt('stepp:2'), {
    message: `SPCL_CRASH_AT=stepp:2: unknown crash point 'stepp' (expected one of ${points})`,
  });
  assert.throws(() => parseCrashAt('step:0'), { message: 'SPCL_CRASH_AT=step:0: the occurrence must be >= 1, got 0' });
  assert.throws(() => parseCrashAt('step:1:SIGHUP'), {
    message: "SPCL_CRASH_AT=step:1:SIGHUP: unknown signal 'SIGHUP' (expected one of SIGKILL, SIGTERM, SIGINT, SIGSTOP)",
  });
});

test('a crash point kills the process the N-th time it is reached, not before; unset, it does nothing', () => {
  const script = `import { crashPoint } from ${JSON.stringify(join(root, 'src/io/crash-points.ts'))};
for (let i = 1; i <= 3; i++) { crashPoint('evaluate'); crashPoint('step'); process.stdout.write('passed ' + i + '\\n'); }`;
  const run = (env: Record<string, string>) =>
    spawnSync(node, ['--input-type=module', '-e', script], { encoding: 'utf8', env: { ...process.env, ...env } });
  const killed = run({ SPCL_CRASH_AT: 'evaluate:2' });
  assert.equal(killed.signal, 'SIGKILL');
  assert.equal(killed.stdout, 'passed 1\n');
  assert.equal(killed.stderr, 'crash-point: evaluate:2: SIGKILL\n');
  const unset = run({ SPCL_CRASH_AT: '' });
  assert.deepEqual([unset.status, unset.stdout], [0, 'passed 1\npassed 2\npassed 3\n']);
});

test('writeFileAtomic: a kill half-way leaves the old file and a half-written temporary one, which removeStaleTemporaries deletes', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'spcl-atomic-'));
  const target = join(dir, 'ckpt.bin');
  await writeFile(target, 'old');
  // 10 chunks of 100 kB: the crash point fires after the chunk that reaches half the bytes
  const script = `import { writeFileAtomic } from ${JSON.stringify(join(root, 'src/io/atomic.ts'))};
await writeFileAtomic(${JSON.stringify(target)}, Array.from({ length: 10 }, (_, i) => new Uint8Array(100000).fill(i)), { crashPoint: 'checkpoint-write' });`;
  const child = spawn(node, ['--input-type=module', '-e', script], { env: { ...process.env, SPCL_CRASH_AT: 'checkpoint-write:1' } });
  const [, signal] = await new Promise<[number | null, string | null]>((resolve) => child.on('close', (c, s) => resolve([c, s])));
  assert.equal(signal, 'SIGKILL');
  assert.equal(await readFile(target, 'utf8'), 'old');
  const tmp = `ckpt.bin.tmp-${child.pid}`;
  assert.deepEqual((await readdir(dir)).sort(), ['ckpt.bin', tmp]);
  assert.equal((await stat(join(dir, tmp))).size, 500_000);
  // a temporary file of a live process (the test runner) stays, those of dead ones and of this PID go
  const live = `other.tmp-${process.ppid}`;
  const mine = `mine.tmp-${process.pid}`;
  await writeFile(join(dir, live), 'x');
  await writeFile(join(dir, mine), 'x');
  assert.deepEqual((await removeStaleTemporaries(dir)).sort(), [tmp, mine].sort());
  assert.deepEqual((await readdir(dir)).sort(), ['ckpt.bin', live]);
  // a complete write replaces the file; a failing one (no such folder) leaves no temporary file and keeps its error
  await writeFileAtomic(target, [new Uint8Array([1, 2, 3])]);
  assert.deepEqual([...(await readFile(target))], [1, 2, 3]);
  await assert.rejects(writeFileAtomic(join(dir, 'missing', 'f'), [new Uint8Array(4)]), { code: 'ENOENT' });
  await rm(dir, { recursive: true });
});

test('describeWriteFailure: ENOSPC (by name or by number, as lmdb-js gives it) becomes a DiskFullError with the file, the bytes and the free space; other errors stay', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'spcl-full-'));
  const path = join(dir, 'ckpt.safetensors');
  for (const code of ['ENOSPC', 28]) {
    const err = await describeWriteFailure('checkpoint', path, Object.assign(new Error('boom'), { code }), 3 * 2 ** 20);
    assert.ok(err instanceof DiskFullError);
    const free = await freeBytes(dir);
    const m = new RegExp(
      `^checkpoint ${path.replace(/[.]/g, '\\.')}: no space left on the device \\(ENOSPC\\): 3145728 bytes \\(3\\.00 MiB\\) to write, (\\d+) bytes \\((\\d+\\.\\d\\d) MiB\\) free in ${dir}$`,
    ).exec(err.message);
    assert.ok(m, err.message);
    assert.ok(Math.abs(Number(m[1]) - free!) < 64 * 2 ** 20, `free ${m[1]} vs statfs ${free}`);
    assert.equal(m[2], (Number(m[1]) / 2 ** 20).toFixed(2));
    assert.deepEqual([err.path, err.neededBytes], [path, 3 * 2 ** 20]);
  }
  const denied = Object.assign(new Error('EACCES: permission denied'), { code: 'EACCES' });
  assert.equal(await describeWriteFailure('checkpoint', path, denied), denied);
  await rm(dir, { recursive: true });
});

test('generations named by retained checkpoints are never pruned: a later generation committed before a kill, then another one with keep 1', async () => {
  await useBackend('cpu');
  const dir = await mkdtemp(join(tmpdir(), 'spcl-pins-'));
  const pseudo = join(dir, 'pseudo-labels');
  const store = new CheckpointStore(join(dir, 'checkpoints'), 2);
  const generation = async () => {
    const w = await PseudoLabelWriter.next(pseudo, 2);
    await w.put('a', { width: 2, height: 1, labels: new Uint8Array([0, 1]) });
    return w.commit([0.5, 0.5], {}, 1, await store.pseudoLabelGenerations());
  };
  const g1 = await generation();
  // the checkpoint that names generation 1 (as the contrastive phase's do)
  const w = tf.tensor1d([1]);
  await store.save({ model: new Map([['w', w]]), meta: { pseudo: join(pseudo, g1.file) } }, 'spcl', 3);
  const g2 = await generation(); // pseudo-labels-2 commits generation 2, then the process is killed
  const g3 = await generation(); // the resumed run makes generation 3
  assert.deepEqual([g1.generation, g2.generation, g3.generation], [1, 2, 3]);
  const files = (await readdir(pseudo)).filter((f) => f.endsWith('.lmdb')).sort();
  // keep 1: generation 2 went, generation 1 stayed because ckpt-spcl-00000003 names it
  assert.deepEqual(files, [generationFile(1), generationFile(3)]);
  assert.deepEqual([...(await store.pseudoLabelGenerations())], [generationFile(1)]);
  // without the pin it would have gone
  await (await PseudoLabelWriter.next(pseudo, 2)).commit([0.5, 0.5], {}, 1, []);
  assert.deepEqual((await readdir(pseudo)).filter((f) => f.endsWith('.lmdb')).sort(), [generationFile(4)]);
  w.dispose();
  await rm(dir, { recursive: true });
});

test('recoverGenerations: removes an uncommitted generation and temporary files, keeps current and older ones; a stopped writer leaves nothing', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'spcl-recover-'));
  const commit = async () => {
    const w = await PseudoLabelWriter.next(dir, 2);
    await w.put('a', { width: 1, height: 1, labels: new Uint8Array([1]) });
    return w.commit([0.5, 0.5], {}, 2);
  };
  await commit();
  await commit();
  const partial = await PseudoLabelWriter.next(dir, 2); // killed before its commit
  await partial.put('a', { width: 1, height: 1, labels: new Uint8Array([0]) });
  await writeFile(join(dir, 'current.json.tmp-999999999'), '{');
  const removed = await recoverGenerations(dir);
  assert.deepEqual(removed.sort(), ['current.json.tmp-999999999', generationFile(3), `${generationFile(3)}-lock`].sort());
  assert.deepEqual(
    (await readdir(dir)).sort(),
    ['current.json', generationFile(1), `${generationFile(1)}-lock`, generationFile(2), `${generationFile(2)}-lock`].sort(),
  );
  assert.equal((await currentGeneration(dir))!.generation, 2);
  // a generation stopped by a signal (SIGTERM): AbortedError, its file deleted, current.json unchanged
  const scratch = join(dir, 'scratch.lmdb');
  const { open } = await import('lmdb');
  const db = open({ path: scratch, compression: true, encoding: 'msgpack' });
  await db.put('a', { width: 1, height: 1, pred: new Uint8Array([1]), conf: new Uint8Array(new Uint16Array([60000]).buffer) });
  await db.close();
  const controller = new AbortController();
  controller.abort();
  await assert.rejects(
    writeGeneration(
      { thresholds: [0.5, 0.5], counts: [0, 1], images: 1, scratch },
      { dir, numClasses: 2, keep: 2, source: {}, signal: controller.signal },
    ),
    (err: Error) => err instanceof AbortedError && err.message === `pseudo-labels ${join(dir, generationFile(3))}: aborted`,
  );
  assert.ok(!(await readdir(dir)).includes(generationFile(3)));
  assert.equal((await currentGeneration(dir))!.generation, 2);
  await rm(dir, { recursive: true });
});

test('step log: one line per step, float32 losses read back bit-exactly, non-finite ones kept; the last record per (phase, iteration) wins; a bad line is named', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'spcl-steplog-'));
  const path = join(dir, 'sub', 'steps.jsonl');
  const f32 = Math.fround(1.2345678);
  const report = (phase: string, iteration: number, total: number): StepReport => ({
    phase,
    iteration,
    losses: { total, seg: f32 },
    lr: 0.01 * iteration,
    seconds: 0.1,
    waitSeconds: 0,
    skipped: !Number.isFinite(total),
  });
  const seen: number[] = [];
  const events = stepLogEvents(path, { log: () => {}, step: (r) => seen.push(r.iteration) });
  events.step!(report('warmup', 1, 2.5));
  events.step!(report('warmup', 2, Number.NaN));
  events.step!(report('warmup', 2, 1.75)); // the resumed run's step 2
  events.step!(report('spcl', 1, Number.POSITIVE_INFINITY));
  // a method's statistics ride along (the mean teacher's confidence share)
  events.step!({ ...report('mean-teacher', 1, 0.5), stats: { teacher_weight: f32, mixed_share: 0.25 } });
  assert.deepEqual(seen, [1, 2, 2, 1, 1]);
  const lines = (await readFile(path, 'utf8')).split('\n');
  assert.equal(lines[1], '{"phase":"warmup","iteration":2,"losses":{"total":"NaN","seg":1.2345677614212036},"lr":0.02,"skipped":true}');
  assert.equal(
    lines[4],
    '{"phase":"mean-teacher","iteration":1,"losses":{"total":0.5,"seg":1.2345677614212036},"lr":0.01,"skipped":false,"stats":{"teacher_weight":1.2345677614212036,"mixed_share":0.25}}',
  );
  const records = readStepLog(path);
  assert.equal(records.length, 5);
  assert.deepEqual(records[4]!.stats, { teacher_weight: f32, mixed_share: 0.25 });
  assert.equal(records[0]!.stats, undefined);
  assert.equal(records[0]!.losses.seg, f32);
  assert.ok(Number.isNaN(records[1]!.losses.total));
  assert.deepEqual(
    lastRecordPerStep(records).map((r) => [r.phase, r.iteration, r.losses.total]),
    [
      ['warmup', 1, 2.5],
      ['warmup', 2, 1.75],
      ['spcl', 1, Infinity],
      ['mean-teacher', 1, 0.5],
    ],
  );
  await writeFile(path, `${lines[0]}\n{"phase":"warmup","iter`);
  assert.throws(
    () => readStepLog(path),
    (err: Error) => err.message.startsWith(`${path}:2: not JSON (`) && err.message.endsWith('): {"phase":"warmup","iter'),
  );
  await rm(dir, { recursive: true });
});

test('failOnAbort: an abort mid-pass errors with AbortedError before the next item, the fold emits nothing; items waiting are not processed', async () => {
  const items = new Subject<number>();
  const controller = new AbortController();
  const folded: number[] = [];
  const result = lastValueFrom(
    items.pipe(
      failOnAbort(controller.signal, 'evaluation'),
      reduceItems(
        (v: number) => {
          folded.push(v);
          if (v === 2) controller.abort(); // a SIGTERM handled while item 2 is processed
        },
        () => folded.length,
      ),
    ),
  );
  for (const v of [1, 2, 3, 4]) items.next(v); // 3 and 4 are already waiting
  await assert.rejects(result, (err: Error) => err instanceof AbortedError && err.message === 'evaluation: aborted');
  assert.deepEqual(folded, [1, 2]);
  // already aborted: nothing at all; no signal: a pass-through
  await assert.rejects(lastValueFrom(NEVER.pipe(failOnAbort(controller.signal, 'prototypes'))), { message: 'prototypes: aborted' });
  assert.deepEqual(await lastValueFrom(of(1, 2).pipe(failOnAbort(undefined, 'x'), toArray())), [1, 2]);
});

test('trainStep with a stop signal: the step in progress completes (and its after hook), waiting batches are released untrained', async () => {
  const controller = new AbortController();
  const stepped: number[] = [];
  const released: number[] = [];
  const reports = await lastValueFrom(
    from([10, 11, 12, 13, 14]).pipe(
      trainStep<number>({
        phase: 'warmup',
        startIteration: 4,
        stop: controller.signal,
        step: (b) => {
          stepped.push(b);
          return { losses: { total: b }, lr: 0.1 };
        },
        release: (b) => released.push(b),
        after: async (r) => {
          if (r.iteration === 6) controller.abort(); // SIGTERM during step 6's checkpoint
          await new Promise((resolve) => setTimeout(resolve, 5));
        },
      }),
      toArray(),
    ),
  );
  assert.deepEqual(
    reports.map((r) => r.iteration),
    [5, 6],
  );
  assert.deepEqual(stepped, [10, 11]);
  assert.deepEqual(released, [10, 11, 12, 13, 14]);
});

test('readCheckpointMeta reads the meta from the header alone; a truncated file is named', async () => {
  await useBackend('cpu');
  const dir = await mkdtemp(join(tmpdir(), 'spcl-meta-'));
  const path = join(dir, 'c.safetensors');
  const w = tf.ones([64, 64]);
  await saveCheckpoint(path, { model: new Map([['w', w]]), meta: { phase: 'spcl', iteration: 7, pseudo: 'pl/gen-000002.lmdb' } });
  w.dispose();
  assert.deepEqual(await readCheckpointMeta(path), { phase: 'spcl', iteration: 7, pseudo: 'pl/gen-000002.lmdb' });
  await truncate(path, 40);
  await assert.rejects(readCheckpointMeta(path), {
    message: new RegExp(
      `^${path.replace(/[.]/g, '\\.')}: safetensors header length \\d+ exceeds the 32 bytes after the length prefix \\(truncated file\\?\\)$`,
    ),
  });
  await rm(dir, { recursive: true });
});

test('CheckpointStore: a missing latest.json means no checkpoint; an unreadable one is an error naming it, never a restart from scratch', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'spcl-pointer-'));
  const store = new CheckpointStore(dir, 2);
  assert.equal(await store.latest(), null);
  await writeFile(join(dir, 'latest.json'), '{"file": "ckpt-warmup-0000');
  await assert.rejects(
    store.latest(),
    (err: Error) =>
      err.message.startsWith(`${join(dir, 'latest.json')}: not valid JSON (`) &&
      err.message.endsWith(`); it should name a checkpoint file of ${dir}`),
  );
  await rm(dir, { recursive: true });
});

/**
 * Crash safety of `pipelines/spcl.ts` (issue 6): a small run is killed with SIGKILL many times, at
 * every crash point (`src/io/crash-points.ts`) and at seeded-random wall-clock instants, and resumed with
 * `--resume` each time until it completes; then stopped with SIGTERM in each kind of phase. After every
 * kill: latest.json names a complete checkpoint and current.json a complete generation; every resume
 * loads the checkpoint latest.json named, deletes (never reads) what interrupted writes left, and its
 * first training step is the one after that checkpoint. At the end the step log, de-duplicated by
 * (phase, iteration) keeping the last record, equals an uninterrupted run's loss for loss, exactly
 * (same wasm backend), and so do the report's per-phase mIoU and per-class IoU.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { lastRecordPerStep, readStepLog, type StepLogRecord } from '../../src/observe/step-log.ts';
import { readCheckpointMeta } from '../../src/io/weights.ts';
import type { RunReport } from '../../src/recipe/run.ts';
import { seededValues } from '../helpers.ts';
import {
  committedState,
  currentOf,
  exists,
  filesMatching,
  readJson,
  runNode,
  smallData,
  smallRunArgs,
  type Outcome,
  type RunOptions,
  type SmallData,
} from './harness.ts';

let dir = '';
let data: SmallData;
let reference: { log: StepLogRecord[]; report: RunReport };

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'spcl-crash-'));
  data = await smallData(join(dir, 'data'));
  const out = join(dir, 'reference');
  const r = await runNode(smallRunArgs(data, out, join(dir, 'reference.log')));
  assert.equal(r.code, 0, r.stderr.slice(-3000));
  const log = readStepLog(join(dir, 'reference.log'));
  // 8 + 4 + 4 steps, each logged once
  assert.deepEqual(
    log.map((x) => `${x.phase} ${x.iteration}`),
    [
      ...[1, 2, 3, 4, 5, 6, 7, 8].map((i) => `warmup ${i}`),
      ...[1, 2, 3, 4].map((i) => `spcl ${i}`),
      ...[1, 2, 3, 4].map((i) => `ssl ${i}`),
    ],
  );
  reference = { log, report: (await readJson<RunReport>(join(out, 'report.json')))! };
});

after(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

const leftovers = async (out: string) => {
  const current = (await currentOf(out))?.generation ?? 0;
  return [
    ...(await filesMatching(join(out, 'checkpoints'), /\.tmp-\d+$/)),
    ...(await filesMatching(join(out, 'pseudo-labels'), /\.tmp-\d+$/)),
    ...(await filesMatching(join(out, 'pseudo-labels'), /^gen-\d{6}\.lmdb(-lock)?$/)).filter((f) => Number(f.slice(4, 10)) > current),
  ];
};

/**
 * What every resume must show: it loaded the checkpoint `latest` named (when it got that far), removed
 * every leftover, and its first training step follows that checkpoint.
 */
function checkResume(
  r: Outcome,
  latest: { file: string; phase: string; iteration: number } | null,
  left: string[],
  steps: StepLogRecord[],
  what: string,
): void {
  const resumed = /^resume: (\S+) \(phase (\S+), iteration (\d+)/m.exec(r.stderr);
  if (latest && resumed)
    assert.deepEqual([resumed[1], resumed[2], Number(resumed[3])], [latest.file, latest.phase, latest.iteration], what);
  if (!latest) assert.ok(!resumed, `${what}: resumed from ${resumed?.[1]} with no latest.json`);
  if (resumed || /^resume: no checkpoint/m.test(r.stderr)) {
    const removed = [...r.stderr.matchAll(/^resume: removed (\S+) \(left by an interrupted write\)$/gm)].map((m) => m[1]);
    assert.deepEqual(removed.sort(), [...left].sort(), `${what}: leftovers removed`);
  }
  if (steps.length) {
    const first = steps[0]!;
    const expected = latest && first.phase === latest.phase ? latest.iteration + 1 : 1;
    assert.equal(
      first.iteration,
      expected,
      `${what}: first step ${first.phase} ${first.iteration} after ${latest?.file ?? 'no checkpoint'}`,
    );
  }
}

/** Runs the interrupted run's next process; returns its outcome and the step-log records it added. */
async function resumeOnce(out: string, stepLog: string, opts: RunOptions, what: string) {
  const latest = await latestOrNull(out);
  const left = await leftovers(out);
  const before = (await exists(stepLog)) ? readStepLog(stepLog).length : 0;
  const r = await runNode([...smallRunArgs(data, out, stepLog), '--resume'], opts);
  const steps = (await exists(stepLog)) ? readStepLog(stepLog).slice(before) : [];
  checkResume(r, latest, left, steps, what);
  return { r, steps, latest };
}

const latestOrNull = async (out: string) => (await committedState(out)).latest;

function compareWithReference(out: string, stepLog: string, report: RunReport): void {
  const got = lastRecordPerStep(readStepLog(stepLog));
  assert.equal(got.length, reference.log.length);
  for (let i = 0; i < got.length; i++)
    assert.deepStrictEqual(got[i], reference.log[i], `step ${reference.log[i]!.phase} ${reference.log[i]!.iteration}`);
  assert.deepEqual(
    report.phases.map((p) => p.phase),
    reference.report.phases.map((p) => p.phase),
  );
  for (const [i, p] of report.phases.entries()) {
    const q = reference.report.phases[i]!;
    assert.deepStrictEqual(
      [p.miou, p.classIoU, p.iterations, p.losses],
      [q.miou, q.classIoU, q.iterations, q.losses],
      `${out}: phase ${p.phase}`,
    );
  }
}

/** Nothing an interrupted write left, and every generation a retained checkpoint names is there. */
async function checkFinalFolder(out: string): Promise<void> {
  assert.deepEqual(await leftovers(out), []);
  for (const f of await filesMatching(join(out, 'checkpoints'), /^ckpt-.*\.safetensors$/)) {
    const pseudo = (await readCheckpointMeta(join(out, 'checkpoints', f))).pseudo as string | null;
    if (pseudo) assert.ok(await exists(join(out, 'pseudo-labels', basename(pseudo))), `${f} names ${pseudo}, which was pruned`);
  }
}

// The crash points in the order the recipe reaches them (occurrences count within one process).
const PLAN = [
  'step:5',
  'checkpoint-write:1',
  'checkpoint-commit:1',
  'evaluate:1', // warm-up: mid-step, torn checkpoint, uncommitted checkpoint, end evaluation
  'prototypes:2',
  'thresholds:3',
  'pseudo-write:10',
  'pseudo-commit:1', // prototypes, first generation
  'step:2',
  'checkpoint-write:1',
  'evaluate:1', // contrastive phase
  'thresholds:2',
  'pseudo-write:5',
  'pseudo-commit:1', // second generation
  'step:2',
  'checkpoint-commit:1',
  'evaluate:1', // self-training
];

test('kill -9 at every crash point and at seeded-random instants: each resume continues from latest.json; the result equals an uninterrupted run exactly', async (t) => {
  const out = join(dir, 'killed');
  const stepLog = join(dir, 'killed.log');
  // Seeded wall-clock delays (0.5-5 s after the spawn) before about half of the points; such a spawn is
  // also armed with the next planned point, so the run cannot get past a point before it was killed there.
  const coin = seededValues(PLAN.length, 7);
  const delays = [...seededValues(PLAN.length, 6)].map((u, i) => (coin[i]! < 0 ? null : Math.round(500 + 2250 * (u + 1))));
  const kills = { points: new Map<string, number>(), random: 0, randomAt: [] as number[] };
  for (const [i, at] of PLAN.entries()) {
    for (const timed of delays[i] === null ? [false] : [true, false]) {
      const { r, latest } = await resumeOnce(
        out,
        stepLog,
        { env: { SPCL_CRASH_AT: at }, signal: timed ? { afterMs: delays[i]! } : undefined },
        `${at}${timed ? ` or ${delays[i]} ms` : ''}`,
      );
      assert.equal(r.signal, 'SIGKILL', `${at}: the process was not killed (exit ${r.code}): ${r.stderr.slice(-2000)}`);
      const atPoint = r.stderr.includes(`crash-point: ${at}: SIGKILL`);
      // whatever instant it died at, the committed state is whole
      const { latest: now, current } = await committedState(out);
      if (!atPoint) {
        kills.random++;
        kills.randomAt.push(delays[i]!);
        continue; // killed by the timer: now run to the planned point
      }
      const name = at.split(':')[0]!;
      kills.points.set(name, (kills.points.get(name) ?? 0) + 1);
      const left = await leftovers(out);
      if (name === 'checkpoint-write')
        assert.ok(
          left.some((f) => /^ckpt-.*\.safetensors\.tmp-\d+$/.test(f)),
          `no torn checkpoint left: ${left}`,
        );
      if (name === 'checkpoint-commit') {
        assert.deepEqual(now, latest, 'latest.json changed although the kill came before it');
        const files = await filesMatching(join(out, 'checkpoints'), /^ckpt-.*\.safetensors$/);
        assert.ok(
          files.some((f) => f !== latest?.file),
          `no uncommitted checkpoint next to ${latest?.file}`,
        );
      }
      if (name === 'pseudo-write')
        assert.ok(
          left.some((f) => /^gen-\d{6}\.lmdb$/.test(f)),
          `no partial generation left: ${left}`,
        );
      if (name === 'pseudo-commit') {
        const named = (await readCheckpointMeta(join(out, 'checkpoints', now!.file))).pseudo as string | null;
        assert.notEqual(named && basename(named), current!.file, 'the committed generation is already named by a checkpoint');
      }
      break;
    }
  }
  const last = await resumeOnce(out, stepLog, {}, 'final run');
  assert.equal(last.r.code, 0, last.r.stderr.slice(-3000));
  compareWithReference(out, stepLog, (await readJson<RunReport>(join(out, 'report.json')))!);
  await checkFinalFolder(out);
  const total = [...kills.points.values()].reduce((a, b) => a + b, 0) + kills.random;
  assert.equal(
    [...kills.points.values()].reduce((a, b) => a + b, 0),
    PLAN.length,
  );
  t.diagnostic(
    `kills survived: ${total} (${PLAN.length} at crash points: ${[...kills.points].map(([k, n]) => `${k} ${n}`).join(', ')}; ` +
      `${kills.random} at random instants: ${kills.randomAt.join(', ')} ms after start); steps ${reference.log.length}`,
  );
});

test('SIGTERM in each kind of phase exits 0 within 15 s with the last complete state; --resume completes with the reference results', async (t) => {
  const BOUND_MS = 15_000;
  const out = join(dir, 'stopped');
  const stepLog = join(dir, 'stopped.log');
  // [crash point with SIGTERM, or 'outside': a SIGTERM sent by this test 300 ms after the first step; what the run says]
  const plan: [string, RegExp][] = [
    ['outside', /^warmup: stopped at iteration [1-5]\/8; checkpoint written/m],
    ['step:2:SIGTERM', /^warmup: stopped at iteration [3-7]\/8; checkpoint written/m],
    ['evaluate:1:SIGTERM', /^warmup: evaluation: stopped by a signal; nothing of this pass is kept/m],
    ['prototypes:2:SIGTERM', /^prototypes: stopped by a signal; nothing of this pass is kept/m],
    ['thresholds:2:SIGTERM', /^pseudo-labels: stopped by a signal; nothing of this pass is kept/m],
    ['pseudo-write:5:SIGTERM', /^pseudo-labels: stopped by a signal; nothing of this pass is kept/m],
    ['step:2:SIGTERM', /^spcl: stopped at iteration 2\/4; checkpoint written/m],
    ['evaluate:1:SIGTERM', /^spcl: evaluation: stopped by a signal; nothing of this pass is kept/m],
    ['pseudo-write:3:SIGTERM', /^pseudo-labels-2: stopped by a signal; nothing of this pass is kept/m],
    ['step:3:SIGTERM', /^ssl: stopped at iteration 3\/4; checkpoint written/m],
  ];
  const stopMs: number[] = [];
  for (const [at, stopped] of plan) {
    const generationBefore = await currentOf(out);
    const outside = at === 'outside';
    const opts: RunOptions = outside
      ? { signal: { afterLine: /^warmup 1\/8 /, afterMs: 300, signal: 'SIGTERM' } }
      : { env: { SPCL_CRASH_AT: at } };
    const { r, steps } = await resumeOnce(out, stepLog, opts, at);
    assert.equal(r.code, 0, `${at}: exit ${r.code} ${r.signal}: ${r.stderr.slice(-2000)}`);
    const sentAt = outside ? r.signalledAtMs : r.lines.find((l) => l.line === `crash-point: ${at.replace(/:(SIG[A-Z]+)$/, ': $1')}`)?.ms;
    assert.ok(sentAt !== null && sentAt !== undefined, `${at}: no signal sent: ${r.stderr.slice(-2000)}`);
    stopMs.push(Math.round(r.ms - sentAt));
    assert.ok(r.ms - sentAt < BOUND_MS, `${at}: exit ${(r.ms - sentAt).toFixed(0)} ms after the signal`);
    assert.match(r.stderr, stopped, at);
    const { latest, current } = await committedState(out);
    if (/^(step|outside)/.test(at))
      assert.deepEqual(
        [latest!.phase, latest!.iteration],
        [steps.at(-1)!.phase, steps.at(-1)!.iteration],
        `${at}: checkpoint of the last step`,
      );
    if (at.startsWith('pseudo-write')) assert.deepEqual(current, generationBefore, `${at}: current.json changed`);
    if (at.startsWith('evaluate'))
      assert.ok(
        !((await readCheckpointMeta(join(out, 'checkpoints', latest!.file))).done as string[]).includes(latest!.phase),
        `${at}: phase marked done`,
      );
    assert.deepEqual(await leftovers(out), [], `${at}: the stopped pass left files`);
  }
  const last = await resumeOnce(out, stepLog, {}, 'final run');
  assert.equal(last.r.code, 0, last.r.stderr.slice(-3000));
  compareWithReference(out, stepLog, (await readJson<RunReport>(join(out, 'report.json')))!);
  await checkFinalFolder(out);
  t.diagnostic(`SIGTERM -> exit 0 in ${stopMs.join(', ')} ms (max ${Math.max(...stopMs)} ms, bound ${BOUND_MS} ms)`);
});

test('a damaged or deleted latest checkpoint: --resume goes on from the newest intact one and says so; the run ends with the reference results', async () => {
  const ckpt = (out: string, name: string) => join(out, 'checkpoints', name);
  // killed at warm-up step 7: checkpoints at 3 and 6, latest.json names the one at 6
  const damaged = join(dir, 'damaged');
  const stepLog = join(dir, 'damaged.log');
  const k = await runNode(smallRunArgs(data, damaged, stepLog), { env: { SPCL_CRASH_AT: 'step:7' } });
  assert.equal(k.signal, 'SIGKILL', k.stderr.slice(-2000));
  const latest = (await committedState(damaged)).latest!;
  assert.deepEqual([latest.phase, latest.iteration], ['warmup', 6]);
  await truncate(ckpt(damaged, latest.file), 1000); // a torn copy, a bad disk
  const r = await runNode([...smallRunArgs(data, damaged, stepLog), '--resume']);
  assert.equal(r.code, 0, r.stderr.slice(-3000));
  const path = ckpt(damaged, latest.file);
  assert.match(
    r.stderr,
    new RegExp(
      `^resume: ${esc(path)}, which latest\\.json names, cannot be read \\(.+\\); going on from the newest intact checkpoint ` +
        `ckpt-warmup-00000003\\.safetensors \\(phase warmup, iteration 3\\); the damaged file is kept as ${esc(latest.file)}\\.damaged$`,
      'm',
    ),
  );
  assert.ok(await exists(`${path}.damaged`));
  // steps 4-6 again from the checkpoint at 3: the same losses as the uninterrupted run, to the end
  const got = lastRecordPerStep(readStepLog(stepLog));
  assert.deepEqual(
    got.map((x) => [x.phase, x.iteration, x.losses]),
    reference.log.map((x) => [x.phase, x.iteration, x.losses]),
  );
  const report = (await readJson<RunReport>(join(damaged, 'report.json')))!;
  assert.deepEqual(
    report.phases.map((p) => p.classIoU),
    reference.report.phases.map((p) => p.classIoU),
  );
  // deleted: the same fallback, without a file to set aside
  const deleted = join(dir, 'deleted');
  const d = await runNode(smallRunArgs(data, deleted, join(dir, 'deleted.log')), { env: { SPCL_CRASH_AT: 'step:7' } });
  assert.equal(d.signal, 'SIGKILL');
  await rm(ckpt(deleted, (await committedState(deleted)).latest!.file));
  const d2 = await runNode([...smallRunArgs(data, deleted, join(dir, 'deleted.log')), '--resume'], { env: { SPCL_CRASH_AT: 'step:1' } });
  assert.match(
    d2.stderr,
    new RegExp(
      `^resume: ${esc(ckpt(deleted, 'ckpt-warmup-00000006.safetensors'))}, which latest\\.json names, does not exist; ` +
        'going on from the newest intact checkpoint ckpt-warmup-00000003\\.safetensors \\(phase warmup, iteration 3\\)$',
      'm',
    ),
  );
});

const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * Crash safety of the continuous phase: a small `--continuous --phase continuous` run (40 steps, a
 * refresh every 5, checkpoints every 3) is killed with SIGKILL at crash points of each kind (mid step,
 * mid checkpoint write, mid threshold pass, mid generation write, between a generation's commit and the
 * checkpoint that names it) and at seeded-random instants, and resumed each time until it completes. The
 * step log, de-duplicated by iteration keeping the last record, must equal an uninterrupted run's loss for
 * loss, and the final generation's thresholds the uninterrupted run's: the refresh number seeds the
 * sampler, and a refresh is checkpointed, so a resume draws the same batches from the same labels.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { lastRecordPerStep, readStepLog, type StepLogRecord } from '../../src/observe/step-log.ts';
import type { RunReport } from '../../src/recipe/run.ts';
import type { ContinuousSummary } from '../../src/methods/continuous.ts';
import { disposeCheckpoint, loadCheckpoint } from '../../src/io/weights.ts';
import { seededValues } from '../helpers.ts';
import { committedState, currentOf, exists, readJson, root, runNode, smallData, type RunOptions, type SmallData } from './harness.ts';

let dir = '';
let data: SmallData;
let reference: { log: StepLogRecord[]; thresholds: number[]; report: RunReport };

function args(out: string, stepLog: string): string[] {
  const set = (kv: string) => ['--set', kv];
  return [
    join(root, 'pipelines/spcl.ts'),
    '--metrics-port',
    '0',
    '--backend',
    'wasm',
    '--out',
    out,
    '--step-log',
    stepLog,
    '--phase',
    'continuous',
    '--continuous',
    ...set(`data.source="${data.source}"`),
    ...set(`data.target="${data.target}"`),
    ...set(`data.targetVal="${data.targetVal}"`),
    ...set('continuous.steps=40'),
    ...set('continuous.refreshEvery=5'),
    ...set('continuous.refreshNewImages=0'),
    ...set('continuous.evalEvery=0'),
    // the reference runs without the source anchor (the preset's default is 1): the anchored path has its own test below
    ...set('continuous.sourceWeight=0'),
    ...set('continuous.pollSeconds=600'),
    ...set('checkpoint.every=3'),
    ...set('checkpoint.keep=2'),
    ...set('pseudo.keep=1'),
    ...set('logEvery=1'),
  ];
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'spcl-ckill-'));
  data = await smallData(join(dir, 'data'));
  const out = join(dir, 'reference');
  const r = await runNode(args(out, join(dir, 'reference.log')));
  assert.equal(r.code, 0, r.stderr.slice(-3000));
  const log = readStepLog(join(dir, 'reference.log'));
  assert.deepEqual(
    log.map((x) => `${x.phase} ${x.iteration}`),
    Array.from({ length: 40 }, (_, i) => `continuous ${i + 1}`),
  );
  // refreshes at 0 (start) and every 5 steps
  assert.deepEqual(
    [...r.stderr.matchAll(/^continuous (\d+): refresh (\d+) \((\w+)\)/gm)].map((m) => `${m[1]}:${m[2]}:${m[3]}`),
    ['0:1:start', '5:2:steps', '10:3:steps', '15:4:steps', '20:5:steps', '25:6:steps', '30:7:steps', '35:8:steps'],
  );
  reference = { log, thresholds: (await currentOf(out))!.thresholds, report: (await readJson<RunReport>(join(out, 'report.json')))! };
});

after(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('continuous phase: kill -9 at each kind of crash point and at seeded instants; resumed, it equals an uninterrupted run exactly', async (t) => {
  const out = join(dir, 'killed');
  const stepLog = join(dir, 'killed.log');
  const crash = (at: string): RunOptions => ({ env: { SPCL_CRASH_AT: at } });
  // the crash points first: where each lands does not depend on the machine's speed (from 0: killed at
  // step 4, in the refresh at 5, in the checkpoint write at 6, in the generation write and after the
  // commit of the refresh at 10), so the seeded instants after them still have steps 9..40 to land in.
  // They count from the process's first line of the continuous phase, not from the spawn: start-up time
  // varies more between machines than a few steps take (2 training threads: ~0.12 s a step here)
  const delays = Array.from(seededValues(3, 2026), (v) => 200 + Math.round((v + 1) * 500)); // 0.2..1.2 s into the phase
  const plan: [string, RunOptions][] = [
    ['step 4 (mid step, no checkpoint of this segment yet)', crash('step:4')],
    ['mid threshold pass (second refresh)', crash('thresholds:5')],
    ['mid checkpoint write', crash('checkpoint-write:2')],
    ['mid generation write', crash('pseudo-write:10')],
    ['generation committed, its checkpoint not written', crash('pseudo-commit:1')],
    ...delays.map((ms): [string, RunOptions] => [`${ms} ms into the phase`, { signal: { afterMs: ms, afterLine: /^continuous[: ]/ } }]),
  ];
  let kills = 0;
  const outcomes: string[] = [];
  for (const [what, opts] of plan) {
    const started = await exists(join(out, 'checkpoints'));
    const r = await runNode([...args(out, stepLog), ...(started ? ['--resume'] : [])], opts);
    outcomes.push(`${what}: code ${r.code} signal ${r.signal} after ${Math.round(r.ms)} ms; last line ${r.lines.at(-1)?.line}`);
    if (r.code === 0) break; // finished before this kill could land
    assert.equal(r.signal, 'SIGKILL', `${what}: ${r.stderr.slice(-2000)}`);
    kills++;
    // whatever the instant, the committed state is whole
    const { latest } = await committedState(out);
    if (latest) assert.equal(latest.phase, 'continuous', what);
  }
  const done = await runNode([...args(out, stepLog), '--resume']);
  assert.equal(done.code, 0, done.stderr.slice(-3000));
  t.diagnostic(`${kills} kills:\n${outcomes.join('\n')}`);
  assert.ok(kills >= 7, `only ${kills} kills landed:\n${outcomes.join('\n')}`);
  const got = lastRecordPerStep(readStepLog(stepLog));
  assert.deepEqual(
    got.map((x) => x.iteration),
    reference.log.map((x) => x.iteration),
  );
  for (let i = 0; i < got.length; i++) {
    assert.deepEqual(got[i]!.losses, reference.log[i]!.losses, `iteration ${got[i]!.iteration}`);
    assert.equal(got[i]!.lr, reference.log[i]!.lr);
  }
  assert.deepEqual((await currentOf(out))!.thresholds, reference.thresholds);
  const report = (await readJson<RunReport>(join(out, 'report.json')))!;
  assert.equal((report.continuous as ContinuousSummary).iterations, 40);
  assert.deepEqual(report.phases.at(-1)!.classIoU, reference.report.phases.at(-1)!.classIoU);
});

test('continuous phase with a source anchor: total = ssl + sourceWeight x source, and a stopped-and-resumed run draws the same batches', async () => {
  // without the anchor (sourceWeight 0, the reference's) there is no source term
  assert.deepEqual(Object.keys(reference.log[0]!.losses).sort(), ['ssl', 'total']);
  const anchored = (out: string, log: string, steps: number) => [
    ...args(out, log),
    '--set',
    `continuous.steps=${steps}`,
    '--set',
    'continuous.sourceWeight=0.5',
  ];
  const whole = join(dir, 'anchor-whole');
  const r = await runNode(anchored(whole, join(dir, 'anchor-whole.log'), 7));
  assert.equal(r.code, 0, r.stderr.slice(-3000));
  const log = readStepLog(join(dir, 'anchor-whole.log'));
  assert.equal(log.length, 7);
  for (const x of log) {
    const { total, ssl, source } = x.losses as { total: number; ssl: number; source: number };
    assert.ok(source > 0 && ssl > 0, JSON.stringify(x.losses));
    // float32 sum on the backend, float64 here
    assert.ok(Math.abs(total - (ssl + 0.5 * source)) <= 1e-6 * total, `iteration ${x.iteration}: ${JSON.stringify(x.losses)}`);
  }
  // the same first step as without the anchor would give another total: the source batch is really in it
  assert.notEqual(log[0]!.losses.total, reference.log[0]!.losses.total);
  // 3 steps, then --resume to 7 (across the refresh at 5): the same losses bit for bit
  const split = join(dir, 'anchor-split');
  const splitLog = join(dir, 'anchor-split.log');
  assert.equal((await runNode(anchored(split, splitLog, 3))).code, 0);
  const resumed = await runNode([...anchored(split, splitLog, 7), '--resume']);
  assert.equal(resumed.code, 0, resumed.stderr.slice(-3000));
  assert.deepEqual(
    lastRecordPerStep(readStepLog(splitLog)).map((x) => x.losses),
    log.map((x) => x.losses),
  );
});

test('continuous.teacher: factor 0 labels as the model itself; 0.999 labels from the teacher, which the checkpoint holds, and stop + resume equals uninterrupted', async () => {
  const withTeacher = (out: string, log: string, steps: number, alpha: number) => [
    ...args(out, log),
    '--set',
    `continuous.steps=${steps}`,
    '--set',
    'continuous.teacher=true',
    '--set',
    `continuous.teacherAlpha=${alpha}`,
  ];
  const losses = (log: string) => readStepLog(log).map((x) => x.losses);
  // factor 0: after every step the teacher is the model, so each refresh labels exactly as without a teacher
  const same = join(dir, 'teacher-0');
  const r0 = await runNode(withTeacher(same, join(dir, 'teacher-0.log'), 7, 0));
  assert.equal(r0.code, 0, r0.stderr.slice(-3000));
  assert.match(r0.stderr, /continuous: refreshes label from a mean teacher \(EMA factor 0 per step\)/);
  assert.deepEqual(
    losses(join(dir, 'teacher-0.log')),
    reference.log.slice(0, 7).map((x) => x.losses),
  );
  // factor 0.999: the first generation (the teacher is a copy of the model at the start) is the model's, so
  // steps 1-5 are the reference's; the refresh at 5 labels from the slow teacher, and steps 6-7 differ
  const whole = join(dir, 'teacher-whole');
  const r1 = await runNode(withTeacher(whole, join(dir, 'teacher-whole.log'), 7, 0.999));
  assert.equal(r1.code, 0, r1.stderr.slice(-3000));
  const log = losses(join(dir, 'teacher-whole.log'));
  assert.equal(log.length, 7);
  assert.deepEqual(
    log.slice(0, 5),
    reference.log.slice(0, 5).map((x) => x.losses),
  );
  for (const i of [5, 6]) assert.notDeepEqual(log[i], reference.log[i]!.losses, `iteration ${i + 1}`);
  assert.equal(((await readJson<RunReport>(join(whole, 'report.json')))!.continuous as ContinuousSummary).teacher, true);
  // 3 steps (the checkpoint at 3 holds the teacher, moved off the model by 3 EMA steps), then --resume to 7
  const split = join(dir, 'teacher-split');
  const splitLog = join(dir, 'teacher-split.log');
  assert.equal((await runNode(withTeacher(split, splitLog, 3, 0.999))).code, 0);
  const { latest } = await committedState(split);
  const state = await loadCheckpoint(join(split, 'checkpoints', latest!.file));
  try {
    assert.equal(latest!.iteration, 3);
    const teacher = [...state.extra!.keys()].filter((k) => k.startsWith('teacher/'));
    assert.equal(teacher.length, state.model.size);
    const name = [...state.model.keys()].find((k) => k.endsWith('conv1.weight'))!;
    const s = state.model.get(name)!.dataSync();
    const t = state.extra!.get(`teacher/${name}`)!.dataSync();
    assert.ok(
      s.some((v, i) => v !== t[i]),
      'the teacher equals the model after 3 EMA steps',
    );
  } finally {
    disposeCheckpoint(state);
  }
  const resumed = await runNode([...withTeacher(split, splitLog, 7, 0.999), '--resume']);
  assert.equal(resumed.code, 0, resumed.stderr.slice(-3000));
  assert.deepEqual(
    lastRecordPerStep(readStepLog(splitLog)).map((x) => x.losses),
    log,
  );
});

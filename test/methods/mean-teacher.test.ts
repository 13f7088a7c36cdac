/**
 * The mean-teacher method end to end at a small scale: the teacher is checkpointed beside the student, a
 * run stopped mid-phase and resumed takes exactly the steps of an uninterrupted one (every loss term,
 * the confidence weight, the mixed share, and the final mIoU bit for bit), and the teacher moves by EMA.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { meanTeacher } from '../../src/methods/mean-teacher.ts';
import { PRESETS, SYNTHETIC_QUICK_DATA, mergeConfig, quick, type SpclConfig } from '../../src/recipe/config.ts';
import { methodRules, withMethods } from '../../src/recipe/method.ts';
import { runRecipe, type RunReport } from '../../src/recipe/run.ts';
import { prepareSynthetic } from '../../src/synthetic/benchmark.ts';
import { loadCheckpoint, disposeCheckpoint } from '../../src/io/weights.ts';
import type { StepReport } from '../../src/stages/train-step.ts';

const root = new URL('../../', import.meta.url).pathname;
const STEPS = 12;

async function run(cfg: SpclConfig, opts: { stopAt?: number; resume?: boolean } = {}): Promise<{ steps: StepReport[]; report: RunReport }> {
  const steps: StepReport[] = [];
  const stop = new AbortController();
  const report = await runRecipe({
    cfg,
    recipe: [meanTeacher],
    resume: opts.resume,
    signal: stop.signal,
    events: {
      log: () => {},
      step: (r) => {
        steps.push(r);
        if (r.iteration === opts.stopAt) stop.abort();
      },
    },
  });
  return { steps, report };
}

test(`mean teacher, ${STEPS} steps: stopped at 5 and resumed equals uninterrupted bit for bit; the teacher is in the checkpoint`, async () => {
  const shards = await prepareSynthetic(join(root, SYNTHETIC_QUICK_DATA.root), SYNTHETIC_QUICK_DATA.counts, () => {});
  const dir = await mkdtemp(join(tmpdir(), 'spcl-mean-teacher-'));
  try {
    const base = withMethods(quick(PRESETS.synthetic!()), [meanTeacher]);
    const cfgOf = (out: string) =>
      mergeConfig(
        base,
        {
          out,
          data: { ...shards, workers: 1 },
          checkpoint: { every: 4 },
          logEvery: 1000,
          methods: { 'mean-teacher': { iterations: STEPS, maxIter: 18 } },
        },
        'test',
        methodRules([meanTeacher]),
      );
    const whole = await run(cfgOf(join(dir, 'whole')));
    assert.equal(whole.steps.length, STEPS);
    const stopped = await run(cfgOf(join(dir, 'parts')), { stopAt: 5 });
    assert.equal(stopped.report.stopped, true);
    assert.equal(stopped.steps.at(-1)!.iteration, 5);
    // the checkpoint of the stopped run holds the teacher beside the student; after 5 EMA steps they differ
    const pointer = JSON.parse(await readFile(join(dir, 'parts', 'checkpoints', 'latest.json'), 'utf8')) as { file: string };
    const state = await loadCheckpoint(join(dir, 'parts', 'checkpoints', pointer.file));
    try {
      const teacher = [...state.extra!.keys()].filter((k) => k.startsWith('teacher/'));
      assert.equal(teacher.length, state.model.size);
      const name = [...state.model.keys()].find((k) => k.endsWith('conv1.weight'))!;
      const s = state.model.get(name)!.dataSync();
      const t = state.extra!.get(`teacher/${name}`)!.dataSync();
      const diff = Math.max(...Array.from(s, (v, i) => Math.abs(v - t[i]!)));
      assert.ok(diff > 0, 'teacher equals student after EMA steps');
    } finally {
      disposeCheckpoint(state);
    }
    const resumed = await run(cfgOf(join(dir, 'parts')), { resume: true });
    assert.deepEqual(
      resumed.steps.map((s) => s.iteration),
      Array.from({ length: STEPS - 5 }, (_, i) => 6 + i),
    );
    const terms = (s: StepReport) => [s.iteration, s.losses, s.lr];
    assert.deepEqual([...stopped.steps, ...resumed.steps].map(terms), whole.steps.map(terms));
    assert.equal(resumed.report.phases.at(-1)!.miou, whole.report.phases.at(-1)!.miou);
    // the terms it reports: source CE and mixed CE; its statistics: the teacher's confidence weight and the mixed-pixel share
    assert.deepEqual(Object.keys(whole.steps.at(-1)!.losses).sort(), ['mixed', 'seg', 'total']);
    const last = whole.steps.at(-1)!.stats!;
    assert.deepEqual(Object.keys(last).sort(), ['mixed_share', 'teacher_weight']);
    assert.ok(
      last.teacher_weight! >= 0 && last.teacher_weight! <= 1 && last.mixed_share! > 0 && last.mixed_share! < 1,
      JSON.stringify(last),
    );
    assert.deepEqual(
      [...stopped.steps, ...resumed.steps].map((st) => st.stats),
      whole.steps.map((st) => st.stats),
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("mean teacher's label rules: 'class' without a thresholds pass before is refused by name; the settings' rules name the values allowed", async () => {
  const shards = await prepareSynthetic(join(root, SYNTHETIC_QUICK_DATA.root), SYNTHETIC_QUICK_DATA.counts, () => {});
  const dir = await mkdtemp(join(tmpdir(), 'spcl-mean-teacher-class-'));
  try {
    const base = withMethods(quick(PRESETS.synthetic!()), [meanTeacher]);
    const cfg = mergeConfig(
      base,
      { out: dir, data: { ...shards, workers: 1 }, methods: { 'mean-teacher': { iterations: 2, maxIter: 4, confidence: 'class' } } },
      'test',
      methodRules([meanTeacher]),
    );
    await assert.rejects(run(cfg), {
      message: "mean-teacher: methods.mean-teacher.confidence 'class' needs class thresholds: run a pseudo-labels phase before",
    });
    assert.throws(() => mergeConfig(base, { methods: { 'mean-teacher': { confidence: 'soft' } } }, '--set x', methodRules([meanTeacher])), {
      message: /methods\.mean-teacher\.confidence must be 'image', 'pixel' or 'class', got "soft"/,
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

/**
 * The Method contract, with a method written here (what a user adding one writes): runRecipe runs the
 * phases in recipe order, evaluates a 'train' phase, checkpoints every phase with the run's state and what
 * the method adds (here an extra tensor), resumes a stopped phase at its iteration with that tensor back,
 * and names an unknown phase with the recipe's phases.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { of, repeat, type Observable } from 'rxjs';
import { PRESETS, SYNTHETIC_QUICK_DATA, mergeConfig, quick } from '../../src/recipe/config.ts';
import { methodRules, withMethods, type Method } from '../../src/recipe/method.ts';
import { runRecipe } from '../../src/recipe/run.ts';
import { train, type ResumePoint } from '../../src/recipe/trainer.ts';
import { prepareSynthetic } from '../../src/synthetic/benchmark.ts';

const root = new URL('../../', import.meta.url).pathname;

/** A 'pass' method that records that it ran. */
function marker(name: string, ran: string[]): Method {
  return {
    name,
    kind: 'pass',
    run: async () => {
      ran.push(name);
      return { phase: name, seconds: 0, iterations: 0, eval: null, losses: {} };
    },
  };
}

/**
 * A 'train' method of `steps` steps that touches no weight: its loss is the iteration, and it keeps a
 * counter tensor in its checkpoints (extra/counter) that a resume must hand back.
 */
function counting(steps: number, seen: { resumedAt: number[]; counterAtResume: number[] }): Method {
  return {
    name: 'count',
    kind: 'train',
    run: async (ctx, resume: ResumePoint) => {
      seen.resumedAt.push(resume.iteration);
      const restored = resume.extra?.get('counter');
      seen.counterAtResume.push(restored ? restored.dataSync()[0]! : -1);
      tf.dispose([...(resume.extra?.values() ?? [])]);
      let counter = resume.iteration;
      const input: Observable<number> = of(0).pipe(repeat());
      const held = tf.variable(tf.scalar(counter));
      try {
        return await train(ctx, {
          phase: 'count',
          schedule: { iterations: steps, maxIter: steps, lr: 1 },
          resume,
          input,
          release: () => {},
          state: () => {
            tf.tidy(() => held.assign(tf.scalar(counter)));
            return { extra: new Map<string, tf.Tensor>([['counter', held]]) };
          },
          step: (_batch, iteration) => {
            counter = iteration + 1;
            return { losses: { total: iteration }, lr: 0 };
          },
        });
      } finally {
        held.dispose();
      }
    },
  };
}

test('a method written outside src/methods runs through runRecipe: order, evaluation, checkpoints, resume with its own state', async () => {
  const shards = await prepareSynthetic(join(root, SYNTHETIC_QUICK_DATA.root), SYNTHETIC_QUICK_DATA.counts, () => {});
  const dir = await mkdtemp(join(tmpdir(), 'spcl-method-'));
  try {
    const cfg = mergeConfig(
      quick(PRESETS.synthetic!()),
      { out: dir, data: { ...shards, workers: 1 }, checkpoint: { every: 2 }, logEvery: 1000 },
      'test',
    );
    const ran: string[] = [];
    const seen = { resumedAt: [] as number[], counterAtResume: [] as number[] };
    const recipe = [marker('first', ran), counting(5, seen), marker('last', ran)];
    const report = await runRecipe({ cfg, recipe, events: { log: () => {} } });
    assert.deepEqual(ran, ['first', 'last']);
    assert.deepEqual(
      report.phases.map((p) => [p.phase, p.iterations, p.miou === null]),
      [
        ['first', 0, true],
        ['count', 5, false],
        ['last', 0, true],
      ],
    );
    assert.equal(report.phases[1]!.losses.total, 4);
    assert.deepEqual(seen.resumedAt, [0]);

    // the run again from its checkpoint after iteration 4 of 'count' (every: 2): the phase goes on from 4 with its counter
    const again = mergeConfig(cfg, { out: join(dir, 'again') }, 'test');
    const stopAt4 = new AbortController();
    const stopping = { log: () => {}, step: (r: { phase: string; iteration: number }) => r.iteration === 4 && stopAt4.abort() };
    const stopped = await runRecipe({ cfg: again, recipe, events: stopping, signal: stopAt4.signal });
    assert.equal(stopped.stopped, true);
    const resumed = await runRecipe({ cfg: again, recipe, resume: true, events: { log: () => {} } });
    assert.deepEqual(seen.resumedAt, [0, 0, 4]);
    assert.deepEqual(seen.counterAtResume, [-1, -1, 4]);
    assert.deepEqual(
      resumed.phases.map((p) => [p.phase, p.iterations]),
      [
        ['first', 0],
        ['count', 5],
        ['last', 0],
      ],
    );

    await assert.rejects(
      runRecipe({ cfg: mergeConfig(cfg, { out: join(dir, 'bad') }, 'test'), recipe, only: ['cuont'], events: { log: () => {} } }),
      { message: 'no phase named cuont in this recipe (phases: first, count, last)' },
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("a method's own settings: defaults per preset under methods.<name>, its rules in every merge, errors that name the key", () => {
  const teacher: Method = {
    name: 'teacher',
    kind: 'train',
    run: async () => ({ phase: 'teacher', seconds: 0, iterations: 0, eval: null, losses: {} }),
    config: {
      defaults: (preset) => ({ alpha: preset === 'synthetic' ? 0.99 : 0.999, threshold: 0.968 }),
      rules: { alpha: [(v) => typeof v === 'number' && v >= 0 && v < 1, 'a number in [0, 1)'] },
    },
  };
  const synthetic = withMethods(PRESETS.synthetic!(), [teacher]);
  const paper = withMethods(PRESETS['gta5-cityscapes']!(), [teacher]);
  assert.deepEqual(synthetic.methods.teacher, { alpha: 0.99, threshold: 0.968 });
  assert.deepEqual(paper.methods.teacher, { alpha: 0.999, threshold: 0.968 });
  // settings already given are kept
  assert.deepEqual(withMethods({ ...synthetic, methods: { teacher: { alpha: 0.5 } } }, [teacher]).methods.teacher, {
    alpha: 0.5,
    threshold: 0.968,
  });
  const rules = methodRules([teacher]);
  assert.deepEqual(Object.keys(rules), ['methods.teacher.alpha']);
  assert.equal(mergeConfig(synthetic, { methods: { teacher: { alpha: 0.9 } } }, 'f', rules).methods.teacher!.alpha, 0.9);
  assert.throws(() => mergeConfig(synthetic, { methods: { teacher: { alpha: 1 } } }, 'f', rules), {
    message: 'f: methods.teacher.alpha must be a number in [0, 1), got 1',
  });
  assert.throws(() => mergeConfig(synthetic, { methods: { teacher: { alhpa: 0.9 } } }, 'f', rules), {
    message: "f: unknown key 'methods.teacher.alhpa' (did you mean 'methods.teacher.alpha'?)",
  });
  assert.throws(() => mergeConfig(synthetic, { methods: { teacher: { threshold: 'high' } } }, 'f', rules), {
    message: 'f: methods.teacher.threshold must be a number, got "high" (string)',
  });
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { lastValueFrom, of, toArray } from 'rxjs';
import { SGD } from '../../src/ops/optim.ts';
import type { Param } from '../../src/ops/model/params.ts';
import { applyIfFinite, trainStep } from '../../src/stages/train-step.ts';
import { useBackend, assertClose } from '../helpers.ts';

test('trainStep: counts iterations from the resume point, releases every batch, reports losses; an error releases too', async () => {
  const released: number[] = [];
  const reports = await lastValueFrom(
    of(10, 20, 30).pipe(
      trainStep({
        phase: 'p',
        startIteration: 5,
        step: (b, it) => ({ losses: { total: b + it }, lr: 0.1 }),
        release: (b) => released.push(b),
      }),
      toArray(),
    ),
  );
  assert.deepEqual(
    reports.map((r) => [r.iteration, r.losses.total]),
    [
      [6, 15],
      [7, 26],
      [8, 37],
    ],
  );
  assert.deepEqual(released, [10, 20, 30]);
  assert.ok(reports.every((r) => r.waitSeconds >= 0 && r.seconds >= 0 && r.phase === 'p'));
  const rel: number[] = [];
  await assert.rejects(
    lastValueFrom(
      of(1, 2).pipe(
        trainStep({
          phase: 'p',
          startIteration: 0,
          step: (b) => {
            if (b === 2) throw new Error('boom');
            return { losses: {}, lr: 0 };
          },
          release: (b) => rel.push(b),
        }),
      ),
    ),
    /boom/,
  );
  assert.deepEqual(rel, [1, 2]);
});

test('applyIfFinite: a NaN loss leaves the weights untouched; a finite one steps; no tensor leaks', async () => {
  await useBackend('cpu');
  const v = tf.variable(tf.tensor1d([1, 2]), true, `w-${Math.random()}`);
  const p: Param = { name: 'w', group: 'backbone', role: 'weight', variable: v };
  const opt = new SGD([{ params: [p], lrMult: 1 }], { momentum: 0, weightDecay: 0 });
  const before = tf.memory().numTensors;
  const bad = applyIfFinite(
    () => {
      const l = tf.sum(tf.mul(v, tf.scalar(NaN))) as tf.Scalar;
      return { total: l, terms: { l } };
    },
    [p],
    opt,
    0.5,
  );
  assert.equal(bad.finite, false);
  assert.ok(Number.isNaN(bad.losses.total!));
  assert.deepEqual(Array.from(v.dataSync()), [1, 2]);
  const good = applyIfFinite(
    () => {
      const l = tf.sum(tf.square(v)) as tf.Scalar; // grad 2v
      return { total: l, terms: { sq: l } };
    },
    [p],
    opt,
    0.5,
  );
  assert.equal(good.finite, true);
  assert.deepEqual(good.losses, { total: 5, sq: 5 });
  assertClose(v.dataSync(), [0, 0], 1e-7, 'w - 0.5 * 2w');
  assert.equal(tf.memory().numTensors, before);
  opt.dispose();
  v.dispose();
});

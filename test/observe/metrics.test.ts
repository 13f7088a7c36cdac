import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createServer } from 'node:net';
import * as tf from '@tensorflow/tfjs';
import { StageError } from '../../src/graph/flow.ts';
import { SampleFault } from '../../src/data/faults.ts';
import { createMetrics } from '../../src/observe/metrics.ts';
import { metricsEvents } from '../../src/observe/events.ts';
import { serveMetrics } from '../../src/observe/server.ts';
import { PRESETS } from '../../src/recipe/config.ts';
import { Prototypes } from '../../src/stages/update-prototypes.ts';
import { useBackend } from '../helpers.ts';

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

async function value(m: ReturnType<typeof createMetrics>, name: string, labels: Record<string, string> = {}): Promise<number | undefined> {
  const metric = m.registry.getSingleMetric(name);
  const data = await metric!.get();
  const v = data.values.find(
    (x) =>
      Object.entries(labels).every(([k, l]) => x.labels[k] === l) && (Object.keys(labels).length > 0 || Object.keys(x.labels).length === 0),
  );
  return v?.value;
}

test('/metrics on loopback: 200 with the registry, 404 elsewhere, port 0 is off, a taken port is named', async () => {
  const m = createMetrics();
  const port = await freePort();
  const server = await serveMetrics(m.registry, { port });
  try {
    assert.equal(server.url, `http://127.0.0.1:${port}/metrics`);
    const res = await fetch(server.url!);
    assert.equal(res.status, 200);
    const text = await res.text();
    assert.match(text, /^# HELP spcl_build_info /m);
    assert.match(text, /^spcl_process_resident_memory_bytes \d+/m);
    for (const reason of [
      'missing_record',
      'corrupt_record',
      'corrupt_image',
      'wrong_size',
      'corrupt_label',
      'unknown_label_ids',
      'missing_pseudo_label',
      'shard_unavailable',
      'other',
    ]) {
      assert.match(text, new RegExp(`^spcl_samples_skipped_total\\{stage="decode-augment",reason="${reason}"\\} 0$`, 'm'));
    }
    assert.match(text, /^spcl_samples_repaired_total\{stage="decode-augment",reason="unknown_label_ids"\} 0$/m);
    assert.equal((await fetch(`http://127.0.0.1:${port}/`)).status, 404);
    await assert.rejects(
      serveMetrics(m.registry, { port }),
      new RegExp(`metrics: 127\\.0\\.0\\.1:${port} is in use; pick another with --metrics-port \\(0 = off\\)`),
    );
    const promtool = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
    if (promtool.error) return;
    assert.equal(promtool.status, 0, promtool.stdout + promtool.stderr);
  } finally {
    await server.close();
  }
  assert.equal((await serveMetrics(m.registry, { port: 0 })).url, null);
});

test('run events become metric values: steps, data wait, losses (raw and smoothed), LR groups, skips, thresholds, prototypes', async () => {
  await useBackend('cpu');
  const m = createMetrics({ defaultMetrics: false });
  const cfg = PRESETS.synthetic!();
  const names = ['road', 'car', 'sky'];
  const ev = metricsEvents(m, { preset: cfg.preset, classifierLrMult: cfg.optimizer.classifierLrMult }, names, 'wasm', { log: () => {} });
  ev.phase!('spcl', 'start');
  const step = (iteration: number, total: number) =>
    ev.step!({
      phase: 'spcl',
      iteration,
      losses: { total, seg: total / 2 },
      lr: 0.01,
      seconds: 0.2,
      waitSeconds: 0.05,
      skipped: iteration === 2,
      samples: { source: cfg.batch.source, target: cfg.batch.target },
      ...(iteration === 2 ? { lrs: { discriminator: 1e-4 } } : {}),
      stats: { teacher_weight: iteration / 4 },
    });
  step(1, 4);
  step(2, 2);
  assert.equal(await value(m, 'spcl_train_steps_total', { phase: 'spcl' }), 2);
  assert.ok(Math.abs((await value(m, 'spcl_train_data_wait_seconds_total'))! - 0.1) < 1e-12);
  assert.equal(await value(m, 'spcl_train_loss', { term: 'total' }), 2);
  assert.ok(Math.abs((await value(m, 'spcl_train_loss_smoothed', { term: 'total' }))! - (0.98 * 4 + 0.02 * 2)) < 1e-12);
  assert.equal(await value(m, 'spcl_train_learning_rate', { group: 'classifier' }), 0.1);
  assert.equal(await value(m, 'spcl_train_skipped_steps_total', { reason: 'non_finite_loss' }), 1);
  assert.equal(await value(m, 'spcl_train_samples_total', { domain: 'source' }), 2 * cfg.batch.source);
  assert.equal(await value(m, 'spcl_train_samples_total', { domain: 'target' }), 2 * cfg.batch.target);
  assert.equal(await value(m, 'spcl_train_learning_rate', { group: 'discriminator' }), 1e-4);
  assert.equal(await value(m, 'spcl_train_step_stat', { phase: 'spcl', name: 'teacher_weight' }), 0.5);
  assert.equal(await value(m, 'spcl_build_info', { phase: 'spcl', backend: 'wasm', preset: 'synthetic' }), 1);
  // the reason is the error's own, never read from its text; an error without one (or an unknown one) is 'other'
  ev.skip!(
    'decode-augment',
    new StageError(
      'decode-augment',
      'k',
      new SampleFault({ reason: 'corrupt_image', file: 'x', key: 'k', message: "x: record 'k': no pseudo-label" }),
    ),
  );
  ev.skip!('decode-augment', new StageError('decode-augment', 'k', new Error("x: record 'k': image does not decode (bad)")));
  ev.skip!('decode-augment', new StageError('decode-augment', 'k', Object.assign(new Error('x'), { reason: 'cosmic_ray' })));
  assert.equal(await value(m, 'spcl_samples_skipped_total', { stage: 'decode-augment', reason: 'corrupt_image' }), 1);
  assert.equal(await value(m, 'spcl_samples_skipped_total', { stage: 'decode-augment', reason: 'missing_pseudo_label' }), 0);
  assert.equal(await value(m, 'spcl_samples_skipped_total', { stage: 'decode-augment', reason: 'other' }), 2);
  assert.equal(await value(m, 'spcl_errors_total', { stage: 'decode-augment', kind: 'skipped_sample' }), 3);
  ev.repaired!('decode-augment', { reason: 'unknown_label_ids', file: 'x', key: 'k', message: 'm' });
  assert.equal(await value(m, 'spcl_samples_repaired_total', { stage: 'decode-augment', reason: 'unknown_label_ids' }), 1);
  ev.pseudoLabels!(
    {
      format: 'spcl-pseudo-labels/1',
      generation: 3,
      file: 'gen-000003.lmdb',
      numClasses: 3,
      thresholds: [0.9, 0.5, 0],
      count: 7,
      coverage: [0.6, 0.4, 0],
      createdAt: '',
      source: {},
    },
    [10, 5, 0],
  );
  assert.equal(await value(m, 'spcl_pseudo_label_generation'), 3);
  assert.equal(await value(m, 'spcl_class_threshold', { class: 'car' }), 0.5);
  assert.equal(await value(m, 'spcl_pseudo_label_coverage_ratio', { class: 'road' }), 0.6);
  const p = new Prototypes();
  // road and car at 60 degrees (cos 0.5), sky unseen (zero row)
  p.set(
    tf.tensor2d([
      [1, 0],
      [0.5, Math.sqrt(3) / 2],
      [0, 0],
    ]),
  );
  ev.prototypes!(p);
  assert.equal(await value(m, 'spcl_prototype_classes_seen'), 2);
  assert.ok(Math.abs((await value(m, 'spcl_prototype_max_cosine_similarity'))! - 0.5) < 1e-6);
  p.dispose();
  ev.checkpoint!(1.5, 1234);
  assert.equal(await value(m, 'spcl_checkpoint_size_bytes'), 1234);
  assert.ok(Math.abs((await value(m, 'spcl_checkpoint_last_success_timestamp_seconds'))! - Date.now() / 1000) < 5);
  assert.equal(await value(m, 'spcl_tf_tensors'), tf.memory().numTensors);
});

test('continuous-phase events become metric values: target images, arrivals by source, pending images, refreshes by trigger', async () => {
  const m = createMetrics({ defaultMetrics: false });
  const ev = metricsEvents(m, { preset: 'synthetic', classifierLrMult: 10 }, ['road'], 'wasm', { log: () => {} }, 120);
  assert.equal(await value(m, 'spcl_target_images'), 120);
  assert.equal(await value(m, 'spcl_pseudo_label_pending_images'), 0);
  assert.equal(await value(m, 'spcl_target_arrivals_total', { source: 'watch' }), 0);
  ev.arrivals!({ added: 12, ingested: 9, problems: 2, total: 132, pending: 12 });
  assert.equal(await value(m, 'spcl_target_images'), 132);
  assert.equal(await value(m, 'spcl_target_arrivals_total', { source: 'watch' }), 9);
  assert.equal(await value(m, 'spcl_target_arrivals_total', { source: 'ingest' }), 3);
  assert.equal(await value(m, 'spcl_pseudo_label_pending_images'), 12);
  assert.equal(await value(m, 'spcl_errors_total', { stage: 'watch-target', kind: 'ingest_problem' }), 2);
  ev.refreshed!('arrivals', 0);
  ev.refreshed!('steps', 0);
  ev.refreshed!('arrivals', 0);
  assert.equal(await value(m, 'spcl_pseudo_label_refreshes_total', { trigger: 'arrivals' }), 2);
  assert.equal(await value(m, 'spcl_pseudo_label_refreshes_total', { trigger: 'steps' }), 1);
  assert.equal(await value(m, 'spcl_pseudo_label_refreshes_total', { trigger: 'start' }), 0);
  assert.equal(await value(m, 'spcl_pseudo_label_pending_images'), 0);
  ev.pseudoLabels!(
    {
      format: 'spcl-pseudo-labels/1',
      generation: 4,
      file: 'gen-000004.lmdb',
      numClasses: 1,
      thresholds: [0.9],
      count: 132,
      coverage: [0.5],
      createdAt: '',
      source: {},
    },
    [10],
  );
  assert.ok(Math.abs((await value(m, 'spcl_pseudo_label_last_refresh_timestamp_seconds'))! - Date.now() / 1000) < 5);
});

/**
 * A streak of non-finite steps (nonFinite.*): rolled back to the last checkpoint with a lower learning
 * rate, or the run stops with a message that names its last good checkpoint. The NaN losses are injected
 * with SPCL_INJECT_NONFINITE (the steps behave exactly as a NaN loss would: no update, reported NaN).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { disposeCheckpoint, loadCheckpoint } from '../../src/io/weights.ts';
import { polyLR } from '../../src/ops/optim.ts';
import { SYNTHETIC_QUICK_DATA } from '../../src/recipe/config.ts';
import type { RunReport } from '../../src/recipe/run.ts';
import { prepareSynthetic } from '../../src/synthetic/benchmark.ts';

const root = new URL('../../', import.meta.url).pathname;

async function sourceOnly(out: string, extra: string[]) {
  const shards = await prepareSynthetic(join(root, SYNTHETIC_QUICK_DATA.root), SYNTHETIC_QUICK_DATA.counts, () => {});
  return spawnSync(
    process.execPath,
    [
      join(root, 'pipelines/source-only.ts'),
      '--metrics-port',
      '0',
      '--out',
      out,
      '--set',
      `data.source=${JSON.stringify(shards.source)}`,
      '--set',
      `data.target=${JSON.stringify(shards.target)}`,
      '--set',
      'data.targetVal=""',
      '--set',
      'warmup.iterations=24',
      '--set',
      'warmup.maxIter=40',
      '--iterations',
      '24',
      '--set',
      'checkpoint.every=10',
      '--set',
      'logEvery=1',
      ...extra,
    ],
    { cwd: root, encoding: 'utf8', timeout: 240_000, env: { ...process.env, SPCL_INJECT_NONFINITE: 'warmup:16:5' } },
  );
}

/** `warmup N/24  total ...  lr X` lines of a log: [iteration, total loss text, lr text]. */
function steps(log: string): [number, string, string][] {
  return [...log.matchAll(/^warmup (\d+)\/24 +total (\S+) .* lr (\S+) /gm)].map((m) => [Number(m[1]), m[2]!, m[3]!]);
}

test('non-finite streak, action rollback: back to the last checkpoint, learning rate halved, the same batches again, the run completes', async () => {
  const out = await mkdtemp(join(tmpdir(), 'spcl-nonfinite-'));
  const r = await sourceOnly(out, []);
  assert.equal(r.status, 0, r.stderr.slice(-3000));
  const lines = steps(r.stderr);
  // 1..20 (16..20 skipped), then 11..24 again after the rollback to iteration 10
  assert.deepEqual(
    lines.map(([it]) => it),
    [...Array.from({ length: 20 }, (_, i) => i + 1), ...Array.from({ length: 14 }, (_, i) => i + 11)],
  );
  assert.deepEqual(
    lines.slice(15, 20).map(([, loss]) => loss),
    ['NaN', 'NaN', 'NaN', 'NaN', 'NaN'],
  );
  assert.match(
    r.stderr,
    /^warmup: 5 steps in a row with a non-finite loss \(iterations 16-20; last step: total NaN, seg [\d.]+\): rolling back to ckpt-warmup-00000010\.safetensors \(phase warmup, iteration 10\), learning rates x0\.5 from now on \(rollback 1 of at most 3\)$/m,
  );
  // iteration 11 again: the checkpoint's weights and the same batch give the same loss; the LR is halved
  const [before, after] = [lines[10]!, lines[20]!];
  assert.equal(before[0], 11);
  assert.equal(after[0], 11);
  assert.equal(after[1], before[1]);
  assert.equal(before[2], polyLR(0.01, 10, 40).toExponential(2));
  assert.equal(after[2], (0.5 * polyLR(0.01, 10, 40)).toExponential(2));
  const report = JSON.parse(await readFile(join(out, 'report.json'), 'utf8')) as RunReport;
  assert.deepEqual([report.rollbacks, report.lrScale, report.phases[0]!.iterations], [1, 0.5, 24]);
  // the scale is part of the state: the final checkpoint carries it for a resume
  const latest = JSON.parse(await readFile(join(out, 'checkpoints/latest.json'), 'utf8')) as { file: string };
  const state = await loadCheckpoint(join(out, 'checkpoints', latest.file));
  assert.deepEqual([state.meta.lrScale, state.meta.rollbacks], [0.5, 1]);
  disposeCheckpoint(state);
  await rm(out, { recursive: true });
});

test('non-finite streak, action stop (or no rollbacks left): exit 1 naming the streak and the last good checkpoint, which loads', async () => {
  const out = await mkdtemp(join(tmpdir(), 'spcl-nonfinite-'));
  const r = await sourceOnly(out, ['--set', 'nonFinite.action="stop"', '--set', 'nonFinite.limit=3']);
  assert.equal(r.status, 1);
  const ckpt = join(out, 'checkpoints', 'ckpt-warmup-00000010.safetensors');
  const tail = r.stderr.trim().split('\n').at(-1)!;
  assert.match(
    tail,
    /^source-only: warmup: 3 steps in a row with a non-finite loss \(iterations 16-18; last step: total NaN, seg [\d.]+\); stopping \(nonFinite\.action is 'stop'\); the last complete checkpoint is (.+) \(phase warmup, iteration 10\): lower the learning rate and --resume$/,
  );
  assert.equal(/the last complete checkpoint is (.+) \(phase/.exec(tail)![1], ckpt);
  const state = await loadCheckpoint(ckpt);
  assert.equal(state.meta.iteration, 10);
  disposeCheckpoint(state);
  const none = await sourceOnly(join(out, 'again'), ['--set', 'nonFinite.maxRollbacks=0']);
  assert.equal(none.status, 1);
  assert.match(
    none.stderr,
    /warmup: 5 steps in a row with a non-finite loss \(iterations 16-20; .*\); stopping after 0 rollback\(s\) \(nonFinite\.maxRollbacks 0\); the last complete checkpoint is .*ckpt-warmup-00000010\.safetensors/,
  );
  await rm(out, { recursive: true });
});

/**
 * The direction of each phase's effect on target mIoU, at reduced scale on a fixed seed: the synthetic
 * preset (target BN statistics, no adversarial term, temperature 0.1, self-training at the evaluation
 * scale with a source batch) cut down as `--quick` cuts it (120/120/40 images, 60/30/30 iterations), next
 * to the compute-matched source-only baseline (120 source steps). No timing bound: this checks the
 * method's setting, not speed. The full-scale, 3-seed claim is `npm run results` (README).
 *
 * Self-training does not raise mIoU here (measured 2026-12-04: spcl 13.52, ssl 13.36; at a quarter of the
 * full schedule, 125/75/75 iterations, 16.62 -> 16.18), so "ssl above spcl" is a `todo` subtest: it runs
 * and reports, it does not fail the suite, and it says so in the output until issue 11 is resolved.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PRESETS, SYNTHETIC_QUICK_DATA, quick } from '../../src/recipe/config.ts';
import type { RunReport } from '../../src/recipe/run.ts';
import { prepareSynthetic } from '../../src/synthetic/benchmark.ts';

const root = new URL('../../', import.meta.url).pathname;

const Q = quick(PRESETS.synthetic!());
const REDUCED = { warmup: Q.warmup.iterations, spcl: Q.spcl.iterations, ssl: Q.ssl.iterations } as const;

function pipeline(script: string, out: string, args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(
      process.execPath,
      [join(root, 'pipelines', script), '--metrics-port', '0', '--out', out, '--set', 'data.workers=1', ...args],
      { cwd: root },
    );
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    child.on('exit', (code) => resolve({ code, stderr }));
  });
}

test(`reduced recipe (warm-up ${REDUCED.warmup}, spcl ${REDUCED.spcl}, ssl ${REDUCED.ssl}), seed 0: source-only <= warm-up < spcl (< ssl: todo) on the target`, async (t) => {
  const shards = await prepareSynthetic(join(root, SYNTHETIC_QUICK_DATA.root), SYNTHETIC_QUICK_DATA.counts, () => {});
  const dir = await mkdtemp(join(tmpdir(), 'spcl-direction-'));
  try {
    // the same data --quick uses (data/synthetic-quick), named for the baseline
    const data = [
      '--set',
      `data.source=${JSON.stringify(shards.source)}`,
      '--set',
      `data.target=${JSON.stringify(shards.target)}`,
      '--set',
      `data.targetVal=${JSON.stringify(shards.targetVal)}`,
    ];
    const sizes = (['warmup', 'spcl', 'ssl'] as const).flatMap((p) => [
      '--set',
      `${p}.iterations=${Q[p].iterations}`,
      '--set',
      `${p}.maxIter=${Q[p].maxIter}`,
    ]);
    const [recipe, baseline] = await Promise.all([
      pipeline('spcl.ts', join(dir, 'spcl'), ['--quick']),
      pipeline('source-only.ts', join(dir, 'source-only'), [...data, ...sizes]),
    ]);
    assert.equal(recipe.code, 0, recipe.stderr.slice(-3000));
    assert.equal(baseline.code, 0, baseline.stderr.slice(-3000));
    const read = async (d: string) => JSON.parse(await readFile(join(dir, d, 'report.json'), 'utf8')) as RunReport;
    const r = await read('spcl');
    const so = await read('source-only');
    // compute-matched: the baseline trained as many source steps as the recipe's three training phases
    assert.equal(so.phases[0]!.iterations, REDUCED.warmup + REDUCED.spcl + REDUCED.ssl);
    const m = Object.fromEntries(r.phases.filter((p) => p.miou !== null).map((p) => [p.phase, 100 * p.miou!]));
    const sourceOnly = 100 * so.phases[0]!.miou!;
    const line = `source-only ${sourceOnly.toFixed(2)}, warmup ${m.warmup!.toFixed(2)}, spcl ${m.spcl!.toFixed(2)}, ssl ${m.ssl!.toFixed(2)}`;
    t.diagnostic(line);
    assert.ok(sourceOnly <= m.warmup!, `warm-up below source-only: ${line}`);
    assert.ok(m.warmup! < m.spcl!, `spcl not above warm-up: ${line}`);
    await t.test('ssl above spcl', { todo: 'self-training lowers mIoU at this scale (issue 11)' }, () => {
      assert.ok(m.spcl! < m.ssl!, `ssl not above spcl: ${line}`);
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

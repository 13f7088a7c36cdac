/**
 * The direction of each phase's effect on target mIoU, at reduced scale on a fixed seed: the synthetic
 * preset on the embedded benchmark with every training phase at half its iterations (warm-up 250, spcl
 * 150, ssl 150; poly horizons 350 / 210 / 210), next to the compute-matched source-only baseline (550
 * source steps). No timing bound: this checks the method's setting, not speed. The full-scale, 3-seed
 * claim is `npm run results` (README).
 *
 * Why half: at this scale every phase moves target mIoU the same way on all three seeds (measured
 * 2026-12-04, seeds 0 / 1 / 2: warm-up 16.42 / 13.00 / 15.20, spcl 19.35 / 15.40 / 16.09, ssl 20.84 /
 * 16.37 / 17.51), so seed 0 stands for the method and not for a lucky seed. Shorter schedules do not
 * (a quarter: ssl below spcl on seed 0, 15.75 -> 15.23, above on seeds 1 and 2; the --quick schedule:
 * 13.52 -> 13.22 on seed 0).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SYNTHETIC_DATA } from '../../src/recipe/config.ts';
import type { RunReport } from '../../src/recipe/run.ts';
import { prepareSynthetic } from '../../src/synthetic/benchmark.ts';

const root = new URL('../../', import.meta.url).pathname;

/** Half of the synthetic preset's schedule: iterations and poly horizons of each training phase. */
const HALF = { warmup: [250, 350], spcl: [150, 210], ssl: [150, 210] } as const;

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

test('half-scale recipe (warm-up 250, spcl 150, ssl 150), seed 0: source-only <= warm-up < spcl < ssl on the target', async (t) => {
  const shards = await prepareSynthetic(join(root, SYNTHETIC_DATA.root), SYNTHETIC_DATA.counts, () => {});
  const dir = await mkdtemp(join(tmpdir(), 'spcl-direction-'));
  try {
    const data = ['source', 'target', 'targetVal'].flatMap((k) => [
      '--set',
      `data.${k}=${JSON.stringify(shards[k as keyof typeof shards])}`,
    ]);
    const sizes = Object.entries(HALF).flatMap(([p, [n, max]]) => ['--set', `${p}.iterations=${n}`, '--set', `${p}.maxIter=${max}`]);
    const [recipe, baseline] = await Promise.all([
      pipeline('spcl.ts', join(dir, 'spcl'), [...data, ...sizes]),
      pipeline('source-only.ts', join(dir, 'source-only'), [...data, ...sizes]),
    ]);
    assert.equal(recipe.code, 0, recipe.stderr.slice(-3000));
    assert.equal(baseline.code, 0, baseline.stderr.slice(-3000));
    const read = async (d: string) => JSON.parse(await readFile(join(dir, d, 'report.json'), 'utf8')) as RunReport;
    const r = await read('spcl');
    const so = await read('source-only');
    // compute-matched: the baseline trained as many source steps as the recipe's three training phases
    assert.equal(so.phases[0]!.iterations, HALF.warmup[0] + HALF.spcl[0] + HALF.ssl[0]);
    assert.deepEqual(
      r.phases.filter((p) => p.iterations > 0).map((p) => [p.phase, p.iterations]),
      [
        ['warmup', 250],
        ['spcl', 150],
        ['ssl', 150],
      ],
    );
    const m = Object.fromEntries(r.phases.filter((p) => p.miou !== null).map((p) => [p.phase, 100 * p.miou!]));
    const sourceOnly = 100 * so.phases[0]!.miou!;
    const line = `source-only ${sourceOnly.toFixed(2)}, warmup ${m.warmup!.toFixed(2)}, spcl ${m.spcl!.toFixed(2)}, ssl ${m.ssl!.toFixed(2)}`;
    t.diagnostic(line);
    assert.ok(sourceOnly <= m.warmup!, `warm-up below source-only: ${line}`);
    assert.ok(m.warmup! < m.spcl!, `spcl not above warm-up: ${line}`);
    assert.ok(m.spcl! < m.ssl!, `ssl not above spcl: ${line}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

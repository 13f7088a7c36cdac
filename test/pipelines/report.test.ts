/**
 * report.html end to end: a tiny real SPCL run (the quick synthetic data, a few steps per phase, about
 * 15 s alone) writes it with report.json; its numbers, curves, generations and previews are the run's;
 * `pipelines/report.ts --run DIR` writes the same page again, from a step log on request, and says what
 * is wrong with a bad folder.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { openDataset } from '../../src/data/reader.ts';
import { previewFile, readReportData, reportDataPaths } from '../../src/observe/report-data.ts';
import { readStepLog } from '../../src/observe/step-log.ts';
import type { RunReport } from '../../src/recipe/run.ts';
import { assertCells, expectedCells, htmlCells, recordedGenerations } from '../observe/report-cells.ts';

const root = new URL('../../', import.meta.url).pathname;
const node = process.execPath;
const run = (script: string, args: string[]) =>
  spawnSync(node, [join(root, 'pipelines', script), ...args], { cwd: root, encoding: 'utf8', timeout: 300_000 });

test(
  'a run writes report.html with its numbers, bounded curves, generations and previews; report.ts writes it again',
  { timeout: 300_000 },
  async (t) => {
    const out = await mkdtemp(join(tmpdir(), 'report-run-'));
    t.after(() => rm(out, { recursive: true, force: true }));
    const stepLog = join(out, 'all-steps.jsonl');
    // 6 + 4 + 4 steps, logEvery 4: the report keeps steps 1, 4 and each phase's last
    const r = run('spcl.ts', [
      '--quick',
      '--out',
      out,
      '--metrics-port',
      '0',
      '--step-log',
      stepLog,
      ...['warmup.iterations=6', 'spcl.iterations=4', 'ssl.iterations=4', 'logEvery=4', 'checkpoint.every=0'].flatMap((s) => ['--set', s]),
    ]);
    assert.equal(r.status, 0, r.stderr.slice(-3000));
    assert.doesNotMatch(r.stderr, /not written/);
    const report = JSON.parse(await readFile(join(out, 'report.json'), 'utf8')) as RunReport;
    const html = await readFile(join(out, 'report.html'), 'utf8');
    const generations = await recordedGenerations(out);
    assert.deepEqual(
      generations.map((g) => [g.label, g.generation]),
      [
        ['pseudo-labels', 1],
        ['pseudo-labels-2', 2],
      ],
    );
    const current = JSON.parse(await readFile(join(out, 'pseudo-labels', 'current.json'), 'utf8')) as {
      thresholds: number[];
      coverage: number[];
    };
    assert.deepEqual([generations[1]!.thresholds, generations[1]!.coverage], [current.thresholds, current.coverage]);
    assertCells(htmlCells(html), expectedCells(report, generations), 'report.html of the run');
    assert.match(html, /warmup prediction \(first phase\)<\/th><th>ssl prediction \(adapted\)/);

    // the curves: bounded (steps 1, every 4th, the last), each the step log's record of that step
    const data = await readReportData(out);
    assert.deepEqual(
      data.steps.map((s) => `${s.phase} ${s.iteration}`),
      ['warmup 1', 'warmup 4', 'warmup 6', 'spcl 1', 'spcl 4', 'ssl 1', 'ssl 4'],
    );
    const all = readStepLog(stepLog);
    assert.equal(all.length, 14);
    for (const s of data.steps)
      assert.deepEqual(
        s,
        all.find((a) => a.phase === s.phase && a.iteration === s.iteration),
      );
    assert.deepEqual(
      data.evaluations.map((e) => [e.label, e.miou]),
      report.phases.filter((p) => p.miou !== null).map((p) => [p.phase, p.miou]),
    );

    // previews: the first 4 target-val images, each training phase's prediction at the label's size
    const targetVal = await openDataset(report.config.data.targetVal!);
    assert.deepEqual(data.previews?.index, { keys: targetVal.keys.slice(0, 4), phases: ['warmup', 'spcl', 'ssl'] });
    const meta = await sharp(join(reportDataPaths(out).previews, previewFile(3, { phase: 'ssl' }))).metadata();
    assert.deepEqual([meta.width, meta.height], [256, 128]);
    assert.equal(html.match(/src="data:image\/png;base64,/g)?.length, 4 * 4);

    // pipelines/report.ts: the same page again; from the full step log on request
    await rm(join(out, 'report.html'));
    const again = run('report.ts', ['--run', out]);
    assert.equal(again.status, 0, again.stderr);
    assert.equal(again.stderr, `report: ${join(out, 'report.html')}\n`);
    assert.equal(await readFile(join(out, 'report.html'), 'utf8'), html);
    const fromLog = run('report.ts', ['--run', out, '--step-log', stepLog, '--out', join(out, 'full.html')]);
    assert.equal(fromLog.status, 0, fromLog.stderr);
    assert.match(await readFile(join(out, 'full.html'), 'utf8'), new RegExp(`14 steps from ${stepLog}`));
  },
);

test('report.ts: --help, and errors that name the flag, the folder or the file', { timeout: 60_000 }, async (t) => {
  const help = run('report.ts', ['--help']);
  assert.equal(help.status, 0);
  assert.match(help.stdout, /^usage: node pipelines\/report\.ts --run DIR/);
  const none = run('report.ts', []);
  assert.equal(none.status, 2);
  assert.match(none.stderr, /^report: --run is required\n\nusage:/);
  const dir = await mkdtemp(join(tmpdir(), 'report-cli-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const missing = run('report.ts', ['--run', join(dir, 'nope')]);
  assert.equal(missing.status, 1);
  assert.equal(missing.stderr, `report: run folder ${join(dir, 'nope')} does not exist (or is not a folder)\n`);
  const empty = run('report.ts', ['--run', dir]);
  assert.equal(empty.status, 1);
  assert.match(empty.stderr, new RegExp(`^report: ${join(dir, 'report.json')}: not found; a run writes report.json when it ends`));
  await writeFile(join(dir, 'report.json'), JSON.stringify({ phases: [], classNames: ['road'] }));
  await writeFile(join(dir, 'steps.jsonl'), '{"phase":"warmup","iteration":1,"losses":{},"lr":0.01,"skipped":false}\nnot json\n');
  const badLog = run('report.ts', ['--run', dir, '--step-log', join(dir, 'steps.jsonl')]);
  assert.equal(badLog.status, 1);
  assert.match(badLog.stderr, new RegExp(`^report: ${join(dir, 'steps.jsonl')}:2: not JSON`));
});

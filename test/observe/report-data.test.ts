import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { GenerationInfo } from '../../src/data/pseudo-labels.ts';
import { readReportData, reportDataEvents, reportDataPaths } from '../../src/observe/report-data.ts';
import { readStepLog } from '../../src/observe/step-log.ts';
import type { EvalReport } from '../../src/stages/evaluate.ts';
import type { StepReport } from '../../src/stages/train-step.ts';

const step = (phase: string, iteration: number, loss: number): StepReport => ({
  phase,
  iteration,
  losses: { total: loss, seg: loss / 2 },
  lr: 0.01 / iteration,
  seconds: 0,
  waitSeconds: 0,
  skipped: false,
});
const evalReport = (miou: number): EvalReport => ({
  miou,
  classIoU: [miou, 2 * miou],
  tailMiou: null,
  miou13: null,
  pixelAccuracy: 0.9,
  images: 4,
  ccd: null,
});
const generation = (n: number, source: Record<string, unknown>): GenerationInfo => ({
  format: 'spcl-pseudo-labels/1',
  generation: n,
  file: `gen-${String(n).padStart(6, '0')}.lmdb`,
  numClasses: 2,
  thresholds: [0.5 + n / 100, 0.25],
  coverage: [0.5, 0.125 * n],
  count: 10,
  createdAt: '2026-01-01T00:00:00.000Z',
  source,
});

test('report data: steps 1, every k-th and the last of a phase; a resumed run appends and its records win', async (t) => {
  const run = await mkdtemp(join(tmpdir(), 'report-data-'));
  t.after(() => rm(run, { recursive: true, force: true }));
  const logs: string[] = [];
  // first process: killed after step 12 of the warm-up (no phase end, so no "last step" record)
  const first = reportDataEvents(run, { log: (l) => logs.push(l) }, { every: 5 });
  first.phase!('warmup', 'start');
  for (let i = 1; i <= 12; i++) first.step!(step('warmup', i, i));
  first.evaluated!('warmup 10', evalReport(0.1));
  first.close();
  assert.deepEqual(
    readStepLog(reportDataPaths(run).steps).map((r) => r.iteration),
    [1, 5, 10],
  );
  // resumed from the checkpoint at 5: steps 6..13 again (other losses), the phase ends at 13
  const second = reportDataEvents(run, { log: (l) => logs.push(l) }, { every: 5 });
  second.phase!('warmup', 'start');
  for (let i = 6; i <= 13; i++) second.step!(step('warmup', i, 100 + i));
  second.evaluated!('warmup 10', evalReport(0.2));
  second.evaluated!('warmup', evalReport(0.3));
  second.phase!('warmup', 'end');
  // the next phase ends on a multiple of `every`: its last step is not written twice
  second.phase!('spcl', 'start');
  for (let i = 1; i <= 5; i++) second.step!(step('spcl', i, i));
  second.phase!('spcl', 'end');
  second.pseudoLabels!(generation(1, { phase: 'pseudo-labels', cap: 0.9 }), [5, 5]);
  second.pseudoLabels!(generation(3, { phase: 'continuous', refresh: 2, iteration: 40 }), [5, 5]);
  second.close();
  assert.deepEqual(logs, [], 'nothing failed');
  assert.deepEqual(
    readStepLog(reportDataPaths(run).steps).map((r) => `${r.phase} ${r.iteration}`),
    ['warmup 1', 'warmup 5', 'warmup 10', 'warmup 10', 'warmup 13', 'spcl 1', 'spcl 5'],
  );
  const data = await readReportData(run);
  assert.deepEqual(
    data.steps.map((r) => [r.phase, r.iteration, r.losses.total]),
    [
      ['warmup', 1, 1],
      ['warmup', 5, 5],
      ['warmup', 10, 110],
      ['warmup', 13, 113],
      ['spcl', 1, 1],
      ['spcl', 5, 5],
    ],
  );
  assert.equal(data.steps[3]!.lr, 0.01 / 13);
  assert.deepEqual(
    data.evaluations.map((e) => [e.label, e.phase, e.iteration, e.miou, e.classIoU]),
    [
      ['warmup 10', 'warmup', 10, 0.2, [0.2, 0.4]],
      ['warmup', 'warmup', null, 0.3, [0.3, 0.6]],
    ],
  );
  assert.deepEqual(
    data.generations.map((g) => [g.label, g.generation, g.thresholds, g.coverage, g.count]),
    [
      ['pseudo-labels', 1, [0.51, 0.25], [0.5, 0.125], 10],
      ['continuous refresh 2', 3, [0.53, 0.25], [0.5, 0.375], 10],
    ],
  );
  assert.equal(data.previews, null);
  assert.equal(data.sources.steps, reportDataPaths(run).steps);
});

test('report data: a run without it reads as empty, the current pseudo-label generation standing in', async (t) => {
  const run = await mkdtemp(join(tmpdir(), 'report-data-old-'));
  t.after(() => rm(run, { recursive: true, force: true }));
  const empty = await readReportData(run);
  assert.deepEqual([empty.steps, empty.evaluations, empty.generations, empty.previews], [[], [], [], null]);
  assert.deepEqual(empty.sources, { steps: 'none', events: 'none', previews: 'none' });
  await mkdir(join(run, 'pseudo-labels'));
  await writeFile(join(run, 'pseudo-labels', 'current.json'), JSON.stringify(generation(2, { phase: 'pseudo-labels-2' })));
  const data = await readReportData(run);
  assert.deepEqual(
    data.generations.map((g) => [g.label, g.generation, g.thresholds, g.coverage]),
    [['pseudo-labels-2', 2, [0.52, 0.25], [0.5, 0.25]]],
  );
  assert.equal(data.sources.events, join(run, 'pseudo-labels', 'current.json'));
});

test('report data: a malformed line is an error naming the file and line; a failed append is logged once, the run goes on', async (t) => {
  const run = await mkdtemp(join(tmpdir(), 'report-data-bad-'));
  t.after(() => rm(run, { recursive: true, force: true }));
  const paths = reportDataPaths(run);
  await mkdir(paths.dir, { recursive: true });
  await writeFile(
    paths.events,
    `${JSON.stringify({ kind: 'evaluation', label: 'warmup', phase: 'warmup', iteration: null, miou: 0.1, classIoU: [], images: 1 })}\n{"kind":"evaluation"\n`,
  );
  await assert.rejects(readReportData(run), (err: Error) => err.message.startsWith(`${paths.events}:2: not JSON`));
  await writeFile(paths.events, '{"kind":"nonsense"}\n');
  await assert.rejects(readReportData(run), (err: Error) => err.message.startsWith(`${paths.events}:1: expected {"kind":"evaluation"`));
  await assert.rejects(readReportData(run, { stepLog: join(run, 'missing.jsonl') }), /ENOENT.*missing\.jsonl/);
  // events.jsonl cannot be opened (a folder stands there): one log line, the hooks keep working
  const blocked = await mkdtemp(join(tmpdir(), 'report-data-blocked-'));
  t.after(() => rm(blocked, { recursive: true, force: true }));
  await mkdir(reportDataPaths(blocked).events, { recursive: true });
  const logs: string[] = [];
  const evaluated: string[] = [];
  const events = reportDataEvents(blocked, { log: (l) => logs.push(l), evaluated: (label) => evaluated.push(label) }, { every: 1 });
  events.evaluated!('warmup', evalReport(0.1));
  events.evaluated!('spcl', evalReport(0.2));
  events.step!(step('ssl', 1, 1));
  events.close();
  assert.equal(logs.length, 1, logs.join('\n'));
  assert.match(logs[0]!, new RegExp(`^report data: cannot append to ${reportDataPaths(blocked).events} \\(EISDIR`));
  assert.deepEqual(evaluated, ['warmup', 'spcl'], 'the wrapped hooks still run');
  assert.equal((await readFile(reportDataPaths(blocked).steps, 'utf8')).split('\n').length, 2, 'the step file still records');
});

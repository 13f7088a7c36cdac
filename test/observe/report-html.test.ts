/**
 * report.html from a hand-built run folder (report.json, report data recorded through the real hooks,
 * previews written by the real preview code): the numbers on the page are report.json's as the page
 * formats them, the file names no URL and runs no script; then in a real headless Chromium: no console
 * error (two negative controls show the check catches a JS error and a blocked fetch), a non-blank
 * screenshot (a blank page as the control), and the rendered DOM's values equal report.json's.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import sharp from 'sharp';
import type { GenerationInfo } from '../../src/data/pseudo-labels.ts';
import { CITYSCAPES_CLASSES } from '../../src/ops/classes.ts';
import { previewFile, reportDataEvents, reportDataPaths } from '../../src/observe/report-data.ts';
import { readRunReport, writeReportHtml, type ReportSummary } from '../../src/observe/report-html.ts';
import { previewPngs } from '../../src/recipe/previews.ts';
import { Chromium, CHROMIUM, NO_CHROMIUM } from './chromium.ts';
import { assertCells, expectedCells, htmlCells, recordedGenerations } from './report-cells.ts';

const K = CITYSCAPES_CLASSES.length;
const iou = (seed: number) => Array.from({ length: K }, (_, k) => ((k * 37 + seed * 11) % 97) / 100);

/** A run folder as a finished SPCL run leaves it, with made-up numbers. */
async function handBuiltRun(): Promise<{ run: string; generations: GenerationInfo[] }> {
  const run = await mkdtemp(join(tmpdir(), 'report-html-'));
  const phase = (name: string, miou: number | null, classIoU: (number | null)[] | null, iterations: number) => ({
    phase: name,
    miou,
    classIoU,
    tailMiou: miou === null ? null : miou / 2,
    seconds: 12.3,
    iterations,
    losses: {},
    tensors: 100,
  });
  const warmIoU: (number | null)[] = iou(1);
  warmIoU[18] = null; // a non-finite IoU reads back from JSON as null: shown as '–'
  const report: ReportSummary & Record<string, unknown> = {
    preset: 'synthetic',
    backend: 'wasm',
    seed: 7,
    seconds: 321.9,
    stopped: false,
    classNames: [...CITYSCAPES_CLASSES],
    phases: [
      phase('warmup', 0.4123456, warmIoU, 200),
      phase('prototypes', null, null, 0),
      phase('pseudo-labels', null, null, 0),
      phase('spcl', 0.4567891, iou(2), 100),
      phase('pseudo-labels-2', null, null, 0),
      phase('ssl', 0.4876543, iou(3), 100),
    ],
  };
  await writeFile(join(run, 'report.json'), JSON.stringify(report, null, 1));
  const events = reportDataEvents(run, { log: (l) => assert.fail(l) }, { every: 10 });
  const poly = (i: number, n: number) => 0.01 * (1 - i / (n * 1.4)) ** 0.9;
  const steps = (name: string, n: number, terms: string[]) => {
    events.phase!(name, 'start');
    for (let i = 1; i <= n; i++) {
      const losses = Object.fromEntries(terms.map((t, j) => [t, (j + 1) * (1 + Math.exp(-i / 40)) * (t === 'adv' ? 1e-3 : 1)]));
      if (name === 'ssl' && i === 50) losses.total = Number.POSITIVE_INFINITY; // a skipped step: a gap in the line
      events.step!({ phase: name, iteration: i, losses, lr: poly(i, n), seconds: 0, waitSeconds: 0, skipped: i === 50 && name === 'ssl' });
    }
  };
  const evalOf = (miou: number, classIoU: (number | null)[]) => ({
    miou,
    classIoU: classIoU as number[],
    tailMiou: null,
    miou13: null,
    pixelAccuracy: 0.8,
    images: 40,
    ccd: null,
  });
  steps('warmup', 200, ['total', 'seg', 'adv']);
  events.evaluated!('warmup 100', evalOf(0.3, iou(0)));
  events.evaluated!('warmup', evalOf(0.4123456, warmIoU));
  events.phase!('warmup', 'end');
  const generations = [1, 2].map(
    (g): GenerationInfo => ({
      format: 'spcl-pseudo-labels/1',
      generation: g,
      file: `gen-00000${g}.lmdb`,
      numClasses: K,
      thresholds: Array.from({ length: K }, (_, k) => (k % 5 === 4 ? 0 : 0.5 + ((k * 13 + g) % 40) / 100)),
      coverage: Array.from({ length: K }, (_, k) => ((k * 7 + g * 3) % 50) / 100),
      count: 120,
      createdAt: '2026-01-01T00:00:00.000Z',
      source: { phase: g === 1 ? 'pseudo-labels' : 'pseudo-labels-2' },
    }),
  );
  events.pseudoLabels!(generations[0]!, []);
  steps('spcl', 100, ['total', 'seg', 'cl_source', 'cl_target']);
  events.evaluated!('spcl', evalOf(0.4567891, iou(2)));
  events.phase!('spcl', 'end');
  events.pseudoLabels!(generations[1]!, []);
  steps('ssl', 100, ['total', 'ssl', 'source']);
  events.evaluated!('ssl', evalOf(0.4876543, iou(3)));
  events.phase!('ssl', 'end');
  events.close();
  // previews: 2 images, 64 x 32, through the code the runner uses
  const paths = reportDataPaths(run);
  await mkdir(paths.previews, { recursive: true });
  const keys = ['city/a_000001', 'city/b_000002'];
  for (const [i, key] of keys.entries()) {
    const w = 64;
    const h = 32;
    const rgb = new Uint8Array(w * h * 3).map((_, p) => ((p % 3) * 80 + Math.floor(p / 3 / w) * 5 + ((p / 3) % w)) % 256);
    const truth = new Uint8Array(w * h).map((_, p) => Math.floor(((p % w) / w) * 8 + i));
    for (const phase of ['warmup', 'spcl', 'ssl']) {
      const prediction = truth.map((c, p) => (phase === 'warmup' && p % 3 === 0 ? 10 : c));
      const png = await previewPngs({ key, input: { width: w, height: h, rgb }, truth, prediction, labelWidth: w, labelHeight: h }, K);
      await writeFile(join(paths.previews, previewFile(i, { input: true })), png.input);
      await writeFile(join(paths.previews, previewFile(i, { truth: true })), png.truth);
      await writeFile(join(paths.previews, previewFile(i, { phase })), png.prediction);
    }
  }
  await writeFile(paths.previewIndex, JSON.stringify({ keys, phases: ['warmup', 'spcl', 'ssl'] }));
  return { run, generations };
}

test("report.html: the numbers shown are report.json's, in a self-contained page that names no URL and runs no script", async (t) => {
  const { run } = await handBuiltRun();
  t.after(() => rm(run, { recursive: true, force: true }));
  const dead = spawnSync('true').pid; // a temporary of a process that died mid-write goes
  await writeFile(join(run, `report.html.tmp-${dead}`), '<!DOCTYPE html><p>half');
  const path = await writeReportHtml(run);
  assert.equal(path, join(run, 'report.html'));
  assert.ok(!existsSync(join(run, `report.html.tmp-${dead}`)), 'stale temporary removed');
  const html = await readFile(path, 'utf8');
  const report = JSON.parse(await readFile(join(run, 'report.json'), 'utf8')) as ReportSummary;
  const generations = await recordedGenerations(run);
  assert.equal(generations.length, 2);
  const expected = expectedCells(report, generations);
  assert.equal(expected.size, 3 * 6 + 3 * K + 4 * K);
  assertCells(htmlCells(html), expected, 'report.html');
  // spot checks in plain figures: the page's format is report.json's value x 100 to 2 decimals
  assert.equal(htmlCells(html).get('miou:warmup'), '41.23');
  assert.equal(htmlCells(html).get('miou:ssl'), '48.77');
  assert.equal(htmlCells(html).get('miou:prototypes'), '–');
  assert.equal(htmlCells(html).get(`iou:warmup:18`), '–');
  assert.equal(htmlCells(html).get(`delta:18`), '–');
  assert.equal(
    htmlCells(html).get(`delta:0`),
    `+${(100 * (report.phases[5]!.classIoU![0]! - report.phases[0]!.classIoU![0]!)).toFixed(2)}`,
  );
  // self-contained: no URL (not even an SVG namespace), no script, images only as data URIs, a CSP that forbids fetches
  assert.doesNotMatch(html, /https?:\/\//i);
  assert.doesNotMatch(html, /<script/i);
  const srcs = [...html.matchAll(/\ssrc="([^"]*)"/g)].map((m) => m[1]!);
  assert.equal(srcs.length, 2 * 4, 'two previews x (input, first phase, last phase, truth)');
  assert.ok(srcs.every((s) => s.startsWith('data:image/png;base64,')));
  assert.equal(
    srcs[1],
    `data:image/png;base64,${(await readFile(join(reportDataPaths(run).previews, previewFile(0, { phase: 'warmup' })))).toString('base64')}`,
  );
  assert.equal(
    srcs[2],
    `data:image/png;base64,${(await readFile(join(reportDataPaths(run).previews, previewFile(0, { phase: 'ssl' })))).toString('base64')}`,
  );
  assert.match(html, /<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">/);
  assert.deepEqual(
    [...html.matchAll(/<th>([^<]*)<\/th>/g)].map((m) => m[1]).filter((t) => /prediction|^input$|ground truth/.test(t!)),
    ['input', 'warmup prediction (first phase)', 'ssl prediction (adapted)', 'ground truth'],
  );
  // charts: mIoU per evaluation, losses + LR for 3 phases, per-class IoU, thresholds, coverage
  assert.equal(html.match(/<svg class="chart"/g)?.length, 1 + 2 * 3 + 1 + 2);
  assert.match(html, /<title>warmup 100, mIoU %: 30\.00<\/title>/, 'the mid-phase evaluation is on the mIoU chart');
  // written again, the same bytes (nothing time- or order-dependent)
  await writeReportHtml(run);
  assert.equal(await readFile(path, 'utf8'), html);
});

test('report.html: errors name the file and the key', async (t) => {
  const run = await mkdtemp(join(tmpdir(), 'report-html-bad-'));
  t.after(() => rm(run, { recursive: true, force: true }));
  await assert.rejects(
    readRunReport(run),
    new RegExp(`^Error: ${join(run, 'report.json')}: not found; a run writes report.json when it ends`),
  );
  await writeFile(join(run, 'report.json'), '{"phases": [');
  await assert.rejects(readRunReport(run), new RegExp(`^Error: ${join(run, 'report.json')}: not JSON`));
  await writeFile(
    join(run, 'report.json'),
    JSON.stringify({ phases: [{ phase: 'warmup', miou: 0.5, classIoU: [0.5] }], classNames: ['road', 'sidewalk'] }),
  );
  await assert.rejects(readRunReport(run), (err: Error) => {
    assert.equal(
      err.message,
      `${join(run, 'report.json')}: "phases[0].classIoU" should be null or a list of 2 values (one per class), found [0.5]`,
    );
    return true;
  });
});

/** Share of pixels that are not near-white, and the standard deviation of their grey level. */
async function inkAndSpread(png: Buffer): Promise<{ ink: number; spread: number; width: number; height: number }> {
  const { data, info } = await sharp(png).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  let ink = 0;
  let sum = 0;
  let sum2 = 0;
  const n = info.width * info.height;
  for (let i = 0; i < n; i++) {
    const [r, g, b] = [data[3 * i]!, data[3 * i + 1]!, data[3 * i + 2]!];
    if (Math.min(r, g, b) < 235) ink++;
    const grey = (r + g + b) / 3;
    sum += grey;
    sum2 += grey * grey;
  }
  return { ink: ink / n, spread: Math.sqrt(sum2 / n - (sum / n) ** 2), width: info.width, height: info.height };
}

const DOM_PROBE = `({
  cells: Object.fromEntries([...document.querySelectorAll('[data-key]')].map((e) => [e.dataset.key, e.textContent])),
  charts: [...document.querySelectorAll('svg.chart')].map((s) => { const r = s.getBoundingClientRect(); return [r.width, r.height]; }),
  images: [...document.images].map((i) => [i.complete, i.naturalWidth, i.naturalHeight]),
})`;

// a drawn page is well above these, a blank one far below (measured on the hand-built report's 1280 x 2400
// viewport: ink 0.058, spread 31.5; the blank control: ink 0.000001, spread 0.17)
const MIN_INK = 0.02;
const MIN_SPREAD = 10;

test(
  "report.html in headless Chromium: no console error, a non-blank screenshot, the DOM shows report.json's values",
  { skip: CHROMIUM ? false : NO_CHROMIUM, timeout: 120_000 },
  async (t) => {
    const { run } = await handBuiltRun();
    t.after(() => rm(run, { recursive: true, force: true }));
    const path = await writeReportHtml(run);
    const html = await readFile(path, 'utf8');
    const report = JSON.parse(await readFile(join(run, 'report.json'), 'utf8')) as ReportSummary;
    const generations = await recordedGenerations(run);
    const browser = await Chromium.launch();
    try {
      await t.test('the page: no errors, values, images decoded, charts laid out, screenshot drawn', async () => {
        const visit = await browser.visit(pathToFileURL(path).href, DOM_PROBE);
        assert.deepEqual(visit.errors, []);
        const dom = visit.value as { cells: Record<string, string>; charts: [number, number][]; images: [boolean, number, number][] };
        assertCells(dom.cells, expectedCells(report, generations), 'rendered DOM');
        assert.equal(dom.charts.length, 1 + 2 * 3 + 1 + 2);
        assert.ok(
          dom.charts.every(([w, h]) => w > 100 && h > 50),
          `chart sizes ${JSON.stringify(dom.charts)}`,
        );
        assert.deepEqual(dom.images, Array(8).fill([true, 64, 32]), 'every preview decoded, at its size');
        const shot = await inkAndSpread(visit.screenshot);
        assert.deepEqual([shot.width, shot.height], [1280, 2400]);
        assert.ok(shot.ink > MIN_INK && shot.spread > MIN_SPREAD, `screenshot looks blank: ${JSON.stringify(shot)}`);
      });
      await t.test('negative controls: a blank page fails the screenshot bound; a JS error and a blocked fetch are caught', async () => {
        const dir = await mkdtemp(join(tmpdir(), 'report-html-controls-'));
        t.after(() => rm(dir, { recursive: true, force: true }));
        const blank = join(dir, 'blank.html');
        await writeFile(blank, html.replace(/<body>[\s\S]*<\/body>/, '<body><p>.</p></body>'));
        const blankShot = await inkAndSpread((await browser.visit(pathToFileURL(blank).href, '1')).screenshot);
        assert.ok(blankShot.ink < MIN_INK && blankShot.spread < MIN_SPREAD, `blank page passes the bound: ${JSON.stringify(blankShot)}`);
        // a script error (the CSP removed so that the script runs at all)
        const thrown = join(dir, 'thrown.html');
        await writeFile(
          thrown,
          html
            .replace(/<meta http-equiv="Content-Security-Policy"[^>]*>/, '')
            .replace('</body>', '<script>throw new Error("deliberate report error")</script></body>'),
        );
        const a = await browser.visit(pathToFileURL(thrown).href, '1');
        assert.ok(
          a.errors.some((e) => e.includes('deliberate report error')),
          `JS error not caught: ${JSON.stringify(a.errors)}`,
        );
        // a network fetch: refused by the page's CSP (nothing leaves the machine), and reported
        const fetched = join(dir, 'fetch.html');
        await writeFile(fetched, html.replace('</body>', '<img src="https://example.invalid/x.png"></body>'));
        const b = await browser.visit(pathToFileURL(fetched).href, '1');
        assert.ok(
          b.errors.some((e) => /Content Security Policy/i.test(e) && e.includes('example.invalid')),
          `blocked fetch not caught: ${JSON.stringify(b.errors)}`,
        );
      });
    } finally {
      await browser.close();
    }
  },
);

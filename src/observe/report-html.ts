/**
 * report.html: a run's visual report beside its report.json, one self-contained file. From report.json
 * and the run's report data (report-data.ts) it shows target-val mIoU per phase and per evaluation, the
 * loss terms and learning rate of each training phase over its iterations, per-class IoU before and after
 * adaptation (the first training phase against the last), the thresholds and pseudo-label coverage per
 * class of each pseudo-label generation, and a grid of target-val images: input | first phase's prediction
 * | last phase's prediction | ground truth.
 *
 * Self-contained and offline: charts are inline SVG drawn in TypeScript (svg-charts.ts says why no
 * library), images are PNG data URIs, there is no script, and a Content-Security-Policy forbids any
 * network fetch and any script, so the file shows the same on a machine without network years later.
 * Every number is printed in a table cell with a `data-key` (tests compare them with report.json).
 * The recipe runner writes it at the end of every run (src/recipe/run.ts); `pipelines/report.ts --run
 * DIR` writes it again from a run folder.
 */
import { readFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { removeStaleTemporaries, writeFileAtomic } from '../io/atomic.ts';
import type { NumClasses } from '../data/labels.ts';
import { CITYSCAPES_PALETTE, paletteOf } from '../data/palette.ts';
import { previewFile, readReportData, type EvaluationRecord, type GenerationRecord, type ReportData } from './report-data.ts';
import type { StepLogRecord } from './step-log.ts';
import { barChart, escapeXml, lineChart } from './svg-charts.ts';

/** What the page needs of report.json (src/recipe/run.ts RunReport has these fields and more). */
export interface ReportSummary {
  preset: string;
  backend: string;
  seed: number;
  seconds: number;
  stopped: boolean;
  classNames: string[];
  phases: {
    phase: string;
    miou: number | null;
    classIoU: (number | null)[] | null;
    tailMiou: number | null;
    seconds: number;
    iterations: number;
  }[];
}

/** The preview grid as the page shows it: column titles and, per image, one PNG per column. */
export interface PreviewGrid {
  columns: string[];
  rows: { key: string; pngs: Uint8Array[] }[];
}

export interface ReportPage {
  title: string;
  report: ReportSummary;
  data: Omit<ReportData, 'previews'>;
  previews: PreviewGrid | null;
}

/** How the page prints values (the tests format report.json's numbers the same way). */
export const show = {
  /** mIoU, IoU: percent, 2 decimals. */
  percent: (v: number | null | undefined): string => (v === null || v === undefined || !Number.isFinite(v) ? '–' : (100 * v).toFixed(2)),
  /** Confidence thresholds: 3 decimals. */
  threshold: (v: number | null | undefined): string => (v === null || v === undefined || !Number.isFinite(v) ? '–' : v.toFixed(3)),
  /** Pseudo-label coverage: percent, 1 decimal. */
  coverage: (v: number | null | undefined): string => (v === null || v === undefined || !Number.isFinite(v) ? '–' : (100 * v).toFixed(1)),
};

const CSS = `
body { font: 14px/1.4 system-ui, sans-serif; color: #222; margin: 24px auto; max-width: 1320px; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
.meta { color: #555; } .note { color: #666; font-style: italic; }
table { border-collapse: collapse; margin: 8px 0; } td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
svg.chart { background: #fff; border: 1px solid #eee; font-size: 11px; }
svg .chart-title { font-size: 13px; font-weight: 600; } svg .tick, svg .legend, svg .bar-value { fill: #444; }
svg .grid { stroke: #eee; } svg .axis { stroke: #888; } svg .axis-label { fill: #555; }
.grid-images img { width: 300px; height: auto; image-rendering: pixelated; display: block; }
.grid-images td { vertical-align: top; text-align: center; }
.swatch { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 10px; vertical-align: -2px; border: 1px solid #999; }
.pos { color: #1a7f37; } .neg { color: #c62828; }
`;

const CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'";

const cell = (key: string, text: string, cls = '') =>
  `<td data-key="${escapeXml(key)}"${cls ? ` class="${cls}"` : ''}>${escapeXml(text)}</td>`;
const th = (text: string) => `<th>${escapeXml(text)}</th>`;
const note = (text: string) => `<p class="note">${escapeXml(text)}</p>`;

/** The training phases with an evaluation, in order: the first is "before adaptation", the last "after". */
function evaluatedPhases(report: ReportSummary) {
  return report.phases.filter((p) => p.classIoU !== null && p.miou !== null);
}

function miouSection(page: ReportPage): string {
  const { report, data } = page;
  const rows = report.phases.map(
    (p) =>
      `<tr>${cell(`phase:${p.phase}`, p.phase)}${cell(`iterations:${p.phase}`, String(p.iterations))}${cell(`seconds:${p.phase}`, p.seconds.toFixed(0))}` +
      `${cell(`miou:${p.phase}`, show.percent(p.miou))}${cell(`tail:${p.phase}`, show.percent(p.tailMiou))}</tr>`,
  );
  const table = `<table><tr>${['phase', 'iterations', 'time s', 'mIoU %', 'tail mIoU %'].map(th).join('')}</tr>${rows.join('')}</table>`;
  // every evaluation the run recorded (mid-phase ones included); report.json's phases without report data
  const evals: { label: string; miou: number }[] = data.evaluations.length
    ? data.evaluations.map((e: EvaluationRecord) => ({ label: e.label, miou: e.miou }))
    : evaluatedPhases(report).map((p) => ({ label: p.phase, miou: p.miou! }));
  const chart = evals.length
    ? barChart({
        title: 'Target val mIoU % per evaluation',
        categories: evals.map((e) => e.label),
        series: [{ name: 'mIoU %', values: evals.map((e) => 100 * e.miou) }],
        format: (v) => v.toFixed(2),
        labels: evals.length <= 24,
      })
    : note('No target-val evaluation in this run (data.targetVal is not set, or no training phase finished).');
  return `<h2>Target mIoU</h2>${table}<div class="charts">${chart}</div>`;
}

function curvesSection(steps: readonly StepLogRecord[], source: string): string {
  if (steps.length === 0)
    return `<h2>Training curves</h2>${note(
      'No training steps recorded (a run from before report-data was kept, or no training step ran). ' +
        '`node pipelines/report.ts --run DIR --step-log FILE` draws them from the step log of the run.',
    )}`;
  const byPhase = new Map<string, StepLogRecord[]>();
  for (const r of steps) byPhase.set(r.phase, [...(byPhase.get(r.phase) ?? []), r]);
  const blocks = [...byPhase].map(([phase, records]) => {
    const terms = [...new Set(records.flatMap((r) => Object.keys(r.losses)))];
    const losses = lineChart({
      title: `${phase}: loss terms`,
      xLabel: 'iteration',
      series: terms.map((t) => ({ name: t, points: records.map((r) => [r.iteration, r.losses[t] ?? Number.NaN] as const) })),
      width: 760,
    });
    const lr = lineChart({
      title: `${phase}: learning rate`,
      xLabel: 'iteration',
      yScale: 'linear',
      series: [{ name: 'lr', points: records.map((r) => [r.iteration, r.lr] as const) }],
      width: 420,
    });
    return `<div class="charts">${losses}${lr}</div>`;
  });
  return `<h2>Training curves</h2>${note(`${steps.length} steps from ${source}`)}${blocks.join('')}`;
}

function classIoUSection(report: ReportSummary): string {
  const phases = evaluatedPhases(report);
  if (phases.length === 0) return `<h2>Per-class IoU</h2>${note('No evaluated training phase.')}`;
  const shown = phases.length === 1 ? [phases[0]!] : [phases[0]!, phases.at(-1)!];
  const names = report.classNames;
  const chart = barChart({
    title:
      shown.length === 2
        ? `Per-class IoU %: ${shown[0]!.phase} (before adaptation) vs ${shown[1]!.phase} (after)`
        : `Per-class IoU %: ${shown[0]!.phase}`,
    categories: names,
    series: shown.map((p) => ({ name: p.phase, values: names.map((_, k) => (p.classIoU![k] == null ? null : 100 * p.classIoU![k]!)) })),
    yMax: 100,
    format: (v) => v.toFixed(2),
    width: Math.max(720, 60 + 44 * names.length),
  });
  const head = `<tr>${th('class')}${shown.map((p) => th(`${p.phase} IoU %`)).join('')}${shown.length === 2 ? th('change, points') : ''}</tr>`;
  const rows = names.map((name, k) => {
    const cells = shown.map((p) => cell(`iou:${p.phase}:${k}`, show.percent(p.classIoU![k])));
    let delta = '';
    if (shown.length === 2) {
      const [a, b] = [shown[0]!.classIoU![k], shown[1]!.classIoU![k]];
      const d = a == null || b == null ? null : 100 * (b - a);
      delta = cell(`delta:${k}`, d === null ? '–' : `${d >= 0 ? '+' : ''}${d.toFixed(2)}`, d === null ? '' : d >= 0 ? 'pos' : 'neg');
    }
    return `<tr>${cell(`iou-class:${k}`, name)}${cells.join('')}${delta}</tr>`;
  });
  return `<h2>Per-class IoU</h2><div class="charts">${chart}</div><table>${head}${rows.join('')}</table>`;
}

/** Generations shown: all up to 4, else the first and the last 3 (a long continuous run makes many). */
function shownGenerations(gens: readonly GenerationRecord[]): GenerationRecord[] {
  return gens.length <= 4 ? [...gens] : [gens[0]!, ...gens.slice(-3)];
}

function pseudoLabelSection(report: ReportSummary, data: ReportPage['data']): string {
  if (data.generations.length === 0) return '';
  const gens = shownGenerations(data.generations);
  const names = report.classNames;
  const series = (pick: (g: GenerationRecord) => number[], scale: number) =>
    gens.map((g) => ({ name: g.label, values: names.map((_, k) => (Number.isFinite(pick(g)[k]) ? scale * pick(g)[k]! : null)) }));
  const width = Math.max(720, 60 + 44 * names.length);
  const charts = [
    barChart({
      title: 'Confidence threshold per class',
      categories: names,
      series: series((g) => g.thresholds, 1),
      yMax: 1,
      format: (v) => v.toFixed(3),
      width,
    }),
    barChart({
      title: 'Pseudo-label coverage % per class (pixels labelled / pixels predicted as the class)',
      categories: names,
      series: series((g) => g.coverage, 100),
      yMax: 100,
      format: (v) => v.toFixed(1),
      width,
    }),
  ];
  const head = `<tr>${th('class')}${gens.map((g) => th(`${g.label}: threshold`) + th(`${g.label}: coverage %`)).join('')}</tr>`;
  const rows = names.map(
    (name, k) =>
      `<tr>${cell(`pl-class:${k}`, name)}${gens
        .map(
          (g) =>
            cell(`threshold:${g.label}:${k}`, show.threshold(g.thresholds[k])) +
            cell(`coverage:${g.label}:${k}`, show.coverage(g.coverage[k])),
        )
        .join('')}</tr>`,
  );
  const more = data.generations.length > gens.length ? note(`${data.generations.length} generations; the first and the last 3 shown.`) : '';
  const counts = gens.map((g) => `${g.label}: generation ${g.generation}, ${g.count} images`).join('; ');
  return `<h2>Pseudo-labels</h2>${note(counts)}${more}<div class="charts">${charts.join('')}</div><table>${head}${rows.join('')}</table>`;
}

function previewSection(report: ReportSummary, grid: PreviewGrid | null): string {
  if (!grid || grid.rows.length === 0)
    return `<h2>Target-val images</h2>${note('No previews recorded (no target validation set, or a run from before previews were kept).')}`;
  const uri = (png: Uint8Array) => `data:image/png;base64,${Buffer.from(png).toString('base64')}`;
  const rows = grid.rows.map(
    (r) =>
      `<tr><td colspan="${grid.columns.length}" class="note">${escapeXml(r.key)}</td></tr><tr>${r.pngs
        .map((p, i) => `<td><img alt="${escapeXml(`${r.key}: ${grid.columns[i]}`)}" src="${uri(p)}"></td>`)
        .join('')}</tr>`,
  );
  // the previews' colours (src/recipe/previews.ts): a 16-class ID in its Cityscapes class's colour
  const n = report.classNames.length;
  const palette = n === 16 || n === 19 ? paletteOf(n as NumClasses) : null;
  const legend = report.classNames
    .map((name, k) => {
      const c = palette ? [...palette.subarray(3 * k, 3 * k + 3)] : CITYSCAPES_PALETTE[k];
      return c ? `<span class="swatch" style="background: rgb(${c.join(',')})"></span>${escapeXml(name)}` : '';
    })
    .join(' ');
  return `<h2>Target-val images</h2><table class="grid-images"><tr>${grid.columns.map(th).join('')}</tr>${rows.join('')}</table><p>${legend}</p>`;
}

/** The page as one HTML string (pure: same input, same bytes). */
export function renderReportHtml(page: ReportPage): string {
  const { report, data } = page;
  const meta = [
    `preset ${report.preset}`,
    `backend ${report.backend}`,
    `seed ${report.seed}`,
    `${report.classNames.length} classes`,
    `${report.seconds.toFixed(0)} s`,
    report.stopped ? 'stopped before the end (--resume continues)' : 'complete',
  ].join(' · ');
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="${CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeXml(page.title)}</title>
<style>${CSS}</style>
</head>
<body>
<h1>${escapeXml(page.title)}</h1>
<p class="meta">${escapeXml(meta)}</p>
${miouSection(page)}
${curvesSection(data.steps, data.sources.steps)}
${classIoUSection(report)}
${pseudoLabelSection(report, data)}
${previewSection(report, page.previews)}
<h2>Sources</h2>
<p class="note">report.json; steps: ${escapeXml(data.sources.steps)}; evaluations and generations: ${escapeXml(data.sources.events)}; previews: ${escapeXml(data.sources.previews)}</p>
</body>
</html>
`;
}

/** report.json of `runDir`, checked for what the page needs; errors name the file and the key. */
export async function readRunReport(runDir: string): Promise<ReportSummary> {
  const path = join(runDir, 'report.json');
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT')
      throw new Error(
        `${path}: not found; a run writes report.json when it ends (pipelines/spcl.ts, source-only.ts, ...): is ${runDir} a run folder?`,
      );
    throw new Error(`${path}: cannot read: ${(err as Error).message}`);
  }
  let r: ReportSummary;
  try {
    r = JSON.parse(text) as ReportSummary;
  } catch (err) {
    throw new Error(`${path}: not JSON (${(err as Error).message})`);
  }
  const bad = (key: string, expected: string, found: unknown) =>
    new Error(`${path}: "${key}" should be ${expected}, found ${JSON.stringify(found)?.slice(0, 80) ?? 'nothing'}`);
  if (typeof r !== 'object' || r === null) throw new Error(`${path}: expected a JSON object (a run report), found ${text.slice(0, 40)}`);
  if (!Array.isArray(r.phases)) throw bad('phases', 'a list of {phase, miou, classIoU, ...}', r.phases);
  if (!Array.isArray(r.classNames) || !r.classNames.every((n) => typeof n === 'string'))
    throw bad('classNames', 'a list of class names', r.classNames);
  r.phases.forEach((p, i) => {
    if (typeof p?.phase !== 'string') throw bad(`phases[${i}].phase`, 'a phase name', p?.phase);
    if (p.miou !== null && typeof p.miou !== 'number') throw bad(`phases[${i}].miou`, 'a number or null', p.miou);
    if (p.classIoU !== null && (!Array.isArray(p.classIoU) || p.classIoU.length !== r.classNames.length))
      throw bad(`phases[${i}].classIoU`, `null or a list of ${r.classNames.length} values (one per class)`, p.classIoU);
  });
  return r;
}

/** The preview grid of a run: input | first previewed phase | last previewed phase (in report order) | ground truth. */
async function previewGrid(report: ReportSummary, previews: ReportData['previews']): Promise<PreviewGrid | null> {
  if (!previews) return null;
  const order = report.phases.map((p) => p.phase);
  const phases = [...previews.index.phases].sort((a, b) => (order.indexOf(a) + 1 || 1e9) - (order.indexOf(b) + 1 || 1e9));
  if (phases.length === 0) return null;
  const shown = phases.length === 1 ? phases : [phases[0]!, phases.at(-1)!];
  const columns = [
    'input',
    ...shown.map((p, i) => `${p} prediction${shown.length === 2 ? (i === 0 ? ' (first phase)' : ' (adapted)') : ''}`),
    'ground truth',
  ];
  const rows = await Promise.all(
    previews.index.keys.map(async (key, i) => {
      const files = [previewFile(i, { input: true }), ...shown.map((phase) => previewFile(i, { phase })), previewFile(i, { truth: true })];
      const pngs = await Promise.all(
        files.map((f) =>
          readFile(join(previews.dir, f)).catch((err: Error) => {
            throw new Error(`${join(previews.dir, f)}: preview listed in index.json cannot be read: ${err.message}`);
          }),
        ),
      );
      return { key, pngs };
    }),
  );
  return { columns, rows };
}

/**
 * Writes `<runDir>/report.html` (or `out`) atomically from the run's report.json (or `report`) and report
 * data; `stepLog` draws the curves from that step log instead. Returns the file written.
 */
export async function writeReportHtml(
  runDir: string,
  opts: { report?: ReportSummary; stepLog?: string; out?: string } = {},
): Promise<string> {
  const report = opts.report ?? (await readRunReport(runDir));
  const { previews, ...data } = await readReportData(runDir, { stepLog: opts.stepLog });
  const html = renderReportHtml({
    title: `SPCL run report: ${basename(resolve(runDir))}`,
    report,
    data,
    previews: await previewGrid(report, previews),
  });
  const out = opts.out ?? join(runDir, 'report.html');
  if (!opts.out) await removeStaleTemporaries(runDir); // report.html or report.json a killed writer left half-written
  await writeFileAtomic(out, [Buffer.from(html)], { what: 'report' });
  return out;
}

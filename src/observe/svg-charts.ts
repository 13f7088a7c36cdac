/**
 * Line and grouped-bar charts as inline SVG strings, for report.html (report-html.ts). Inline SVG in
 * HTML needs no namespace declaration, so the page names no URL at all.
 *
 * Why hand-written SVG and no charting library: the report must be one file that opens offline years
 * later, so a library would have to be inlined into every report (tens to hundreds of kB of minified
 * code, a bundling step this unbuilt TypeScript project does not have, and a dependency tree to audit),
 * and the page would then draw itself with JavaScript at load time. The charts needed are two kinds
 * (lines over iterations, grouped bars over classes); drawn here they are a few hundred lines, the page
 * needs no script at all (its Content-Security-Policy forbids scripts and network), and the output is
 * deterministic text that tests read.
 *
 * Every number a chart shows is also in a table of the page; charts carry SVG <title> tooltips with
 * the exact values. Non-finite values are gaps (a line breaks, a bar is left out).
 */

/** Categorical colours (distinct under the common colour-vision deficiencies as far as 8 allow). */
export const SERIES_COLOURS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf'] as const;

export const colourOf = (i: number): string => SERIES_COLOURS[i % SERIES_COLOURS.length]!;

/** Text for SVG/HTML: & < > " ' escaped. */
export function escapeXml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** Coordinates in the SVG: 2 decimals are sub-pixel and keep the file small. */
const n2 = (v: number): string => String(Math.round(v * 100) / 100);

/**
 * About `count` round tick values (steps of 1, 2 or 5 x 10^k) covering [lo, hi]; [lo] alone when the
 * range is empty.
 */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!(Number.isFinite(lo) && Number.isFinite(hi))) throw new RangeError(`niceTicks: bounds must be finite, got ${lo}, ${hi}`);
  if (hi < lo) [lo, hi] = [hi, lo];
  if (hi === lo) return [lo];
  const raw = (hi - lo) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = ([1, 2, 5, 10].find((m) => m * mag >= raw) ?? 10) * mag;
  const first = Math.ceil(lo / step - 1e-9);
  const last = Math.floor(hi / step + 1e-9);
  const out: number[] = [];
  // multiply (not accumulate) so that 0.1 * 3 prints as 0.3 after rounding below
  for (let i = first; i <= last; i++) out.push(Number((i * step).toPrecision(12)));
  return out;
}

/** Tick values of a log axis over [lo, hi] (both > 0): powers of ten, with 2 and 5 between when the range spans under 3 decades. */
export function logTicks(lo: number, hi: number): number[] {
  if (!(lo > 0 && hi >= lo)) throw new RangeError(`logTicks: needs 0 < lo <= hi, got ${lo}, ${hi}`);
  const a = Math.floor(Math.log10(lo));
  const b = Math.ceil(Math.log10(hi));
  const mults = b - a < 3 ? [1, 2, 5] : [1];
  const out: number[] = [];
  for (let e = a; e <= b; e++)
    for (const m of mults) {
      const v = Number((m * 10 ** e).toPrecision(12));
      if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) out.push(v);
    }
  return out.length ? out : [lo, hi];
}

/** A short label of a tick or value: `digits` significant digits, exponent form outside 1e-3..1e5. */
export function shortNumber(v: number, digits = 3): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a < 1e-3 || a >= 1e5)
    return v
      .toExponential(digits - 1)
      .replace(/\.?0+e/, 'e')
      .replace('e+', 'e');
  return String(Number(v.toPrecision(digits)));
}

/** Labels of an axis's ticks: the fewest significant digits (3 or more) that tell every tick apart. */
export function tickLabels(ticks: readonly number[]): string[] {
  for (let digits = 3; digits < 12; digits++) {
    const labels = ticks.map((t) => shortNumber(t, digits));
    if (new Set(labels).size === labels.length) return labels;
  }
  return ticks.map((t) => String(t));
}

/**
 * At most `max` points of a series in x order: all of them when they fit, else per bucket of
 * consecutive points the lowest and the highest (spikes stay visible, a flat stretch costs 2 points).
 * Memory and page size stay bounded however long the run.
 */
export function decimate(points: readonly (readonly [number, number])[], max: number): (readonly [number, number])[] {
  if (max < 2) throw new RangeError(`decimate: max must be >= 2, got ${max}`);
  if (points.length <= max) return [...points];
  const buckets = Math.floor(max / 2);
  const out: (readonly [number, number])[] = [];
  for (let b = 0; b < buckets; b++) {
    const from = Math.floor((b * points.length) / buckets);
    const to = Math.floor(((b + 1) * points.length) / buckets);
    let lo = from;
    let hi = from;
    for (let i = from; i < to; i++) {
      if (points[i]![1] < points[lo]![1]) lo = i;
      if (points[i]![1] > points[hi]![1]) hi = i;
    }
    if (lo === hi) out.push(points[lo]!);
    else out.push(points[Math.min(lo, hi)]!, points[Math.max(lo, hi)]!);
  }
  return out;
}

export interface Series {
  name: string;
  /** [x, y] in x order; a non-finite y breaks the line. */
  points: readonly (readonly [number, number])[];
}

export interface LineChartSpec {
  title: string;
  xLabel: string;
  series: readonly Series[];
  /** 'auto': log when every value is > 0 and they span more than 2 decades (loss terms of unlike size). */
  yScale?: 'linear' | 'log' | 'auto';
  width?: number;
  height?: number;
  /** Most points drawn per series (`decimate`). Default 600. */
  maxPoints?: number;
}

const MARGIN = { left: 56, right: 12, top: 28, bottom: 40 };

function frame(width: number, height: number, title: string, body: string[]): string {
  return [
    `<svg class="chart" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" role="img" aria-label="${escapeXml(title)}">`,
    `<title>${escapeXml(title)}</title>`,
    `<text class="chart-title" x="${MARGIN.left}" y="18">${escapeXml(title)}</text>`,
    ...body,
    '</svg>',
  ].join('\n');
}

function legend(names: readonly string[], x: number, y: number): string[] {
  const out: string[] = [];
  let at = x;
  names.forEach((name, i) => {
    out.push(
      `<rect x="${n2(at)}" y="${n2(y - 8)}" width="10" height="10" fill="${colourOf(i)}"/>`,
      `<text class="legend" x="${n2(at + 14)}" y="${n2(y + 1)}">${escapeXml(name)}</text>`,
    );
    at += 24 + 6.5 * name.length;
  });
  return out;
}

/** A line chart: one polyline per series over a shared x axis, y linear or log. */
export function lineChart(spec: LineChartSpec): string {
  const width = spec.width ?? 640;
  const height = spec.height ?? 260;
  const maxPoints = spec.maxPoints ?? 600;
  const series = spec.series.map((s) => ({ name: s.name, points: decimate(s.points, maxPoints) }));
  const all = series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  if (all.length === 0) return frame(width, 60, spec.title, [`<text class="empty" x="${MARGIN.left}" y="44">no finite values</text>`]);
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const log = spec.yScale === 'log' || (spec.yScale !== 'linear' && y0 > 0 && y1 / y0 > 100);
  if (log && !(y0 > 0)) throw new RangeError(`lineChart '${spec.title}': a log scale needs values > 0, found ${y0}`);
  if (y0 === y1) [y0, y1] = log ? [y0 / 2, y1 * 2] : [y0 - Math.max(1, Math.abs(y0)) * 0.05, y1 + Math.max(1, Math.abs(y1)) * 0.05];
  const yTicks = log ? logTicks(y0, y1) : niceTicks(y0, y1);
  if (!log) [y0, y1] = [Math.min(y0, yTicks[0]!), Math.max(y1, yTicks.at(-1)!)];
  const plotW = width - MARGIN.left - MARGIN.right;
  const plotH = height - MARGIN.top - MARGIN.bottom - 14; // 14: the legend row
  const top = MARGIN.top + 14;
  const px = (x: number) => MARGIN.left + ((x - x0) / (x1 - x0)) * plotW;
  const fy = log ? Math.log10 : (v: number) => v;
  const py = (y: number) => top + plotH - ((fy(y) - fy(y0)) / (fy(y1) - fy(y0))) * plotH;
  const body: string[] = [
    ...legend(
      series.map((s) => s.name),
      MARGIN.left,
      MARGIN.top + 4,
    ),
  ];
  const yLabels = tickLabels(yTicks);
  yTicks.forEach((t, i) => {
    body.push(
      `<line class="grid" x1="${MARGIN.left}" x2="${MARGIN.left + plotW}" y1="${n2(py(t))}" y2="${n2(py(t))}"/>`,
      `<text class="tick" x="${MARGIN.left - 4}" y="${n2(py(t) + 3)}" text-anchor="end">${yLabels[i]}</text>`,
    );
  });
  const xTicks = niceTicks(x0, x1, 6);
  const xLabels = tickLabels(xTicks);
  xTicks.forEach((t, i) => {
    body.push(`<text class="tick" x="${n2(px(t))}" y="${top + plotH + 14}" text-anchor="middle">${xLabels[i]}</text>`);
  });
  body.push(
    `<line class="axis" x1="${MARGIN.left}" x2="${MARGIN.left + plotW}" y1="${top + plotH}" y2="${top + plotH}"/>`,
    `<line class="axis" x1="${MARGIN.left}" x2="${MARGIN.left}" y1="${top}" y2="${top + plotH}"/>`,
    `<text class="axis-label" x="${MARGIN.left + plotW / 2}" y="${height - 4}" text-anchor="middle">${escapeXml(spec.xLabel)}${log ? ' (y: log scale)' : ''}</text>`,
  );
  series.forEach((s, i) => {
    const last = [...s.points].reverse().find(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    body.push(`<g class="series"><title>${escapeXml(last ? `${s.name}: ${shortNumber(last[1])} at ${last[0]}` : s.name)}</title>`);
    // a non-finite value ends a run of the polyline; a single point is drawn as a dot
    let run: string[] = [];
    const flush = () => {
      if (run.length > 1) body.push(`<polyline fill="none" stroke="${colourOf(i)}" stroke-width="1.5" points="${run.join(' ')}"/>`);
      else if (run.length === 1) {
        const [cx, cy] = run[0]!.split(',');
        body.push(`<circle cx="${cx}" cy="${cy}" r="2.5" fill="${colourOf(i)}"/>`);
      }
      run = [];
    };
    for (const [x, y] of s.points) {
      if (Number.isFinite(x) && Number.isFinite(y)) run.push(`${n2(px(x))},${n2(py(y))}`);
      else flush();
    }
    flush();
    body.push('</g>');
  });
  return frame(width, height, spec.title, body);
}

export interface BarChartSpec {
  title: string;
  /** One group of bars per category (classes, evaluations). */
  categories: readonly string[];
  /** One bar per category per series; null or non-finite = no bar. */
  series: readonly { name: string; values: readonly (number | null)[] }[];
  /** Top of the y axis (default: the largest value, rounded up to a tick). */
  yMax?: number;
  /** A value as the tooltip (and, with `labels`, the text above the bar) shows it. */
  format: (v: number) => string;
  /** Print each value above its bar (few bars only). */
  labels?: boolean;
  width?: number;
  height?: number;
}

/** Grouped bars: per category one bar per series, categories labelled below (slanted when long). */
export function barChart(spec: BarChartSpec): string {
  const cats = spec.categories;
  for (const s of spec.series)
    if (s.values.length !== cats.length)
      throw new RangeError(`barChart '${spec.title}': series '${s.name}' has ${s.values.length} values for ${cats.length} categories`);
  const slant = cats.some((c) => c.length > 6);
  const bottom = slant ? 12 + 5.2 * Math.min(24, Math.max(...cats.map((c) => c.length))) : 24;
  const width = spec.width ?? Math.max(320, MARGIN.left + MARGIN.right + cats.length * (10 + 12 * spec.series.length));
  const height = spec.height ?? 220 + bottom;
  const finite = spec.series.flatMap((s) => s.values).filter((v): v is number => v !== null && Number.isFinite(v));
  const top = MARGIN.top + 14;
  const plotW = width - MARGIN.left - MARGIN.right;
  const plotH = height - top - bottom;
  const hi = spec.yMax ?? Math.max(0, ...finite);
  const ticks = niceTicks(Math.min(0, ...finite), hi > 0 ? hi : 1);
  const y0 = Math.min(0, ticks[0]!);
  const y1 = Math.max(hi, ticks.at(-1)!);
  const py = (v: number) => top + plotH - ((v - y0) / (y1 - y0 || 1)) * plotH;
  const slot = plotW / Math.max(1, cats.length);
  const barW = Math.max(1, (slot * 0.8) / Math.max(1, spec.series.length));
  const body: string[] =
    spec.series.length > 1
      ? legend(
          spec.series.map((s) => s.name),
          MARGIN.left,
          MARGIN.top + 4,
        )
      : [];
  const labels = tickLabels(ticks);
  ticks.forEach((t, i) => {
    body.push(
      `<line class="grid" x1="${MARGIN.left}" x2="${MARGIN.left + plotW}" y1="${n2(py(t))}" y2="${n2(py(t))}"/>`,
      `<text class="tick" x="${MARGIN.left - 4}" y="${n2(py(t) + 3)}" text-anchor="end">${labels[i]}</text>`,
    );
  });
  cats.forEach((cat, c) => {
    const x = MARGIN.left + c * slot + slot * 0.1;
    spec.series.forEach((s, i) => {
      const v = s.values[c];
      if (v === null || v === undefined || !Number.isFinite(v)) return;
      const bx = x + i * barW;
      const [ya, yb] = [py(Math.max(0, v)), py(Math.min(0, v))];
      body.push(
        `<rect x="${n2(bx)}" y="${n2(ya)}" width="${n2(barW * 0.92)}" height="${n2(Math.max(0.5, yb - ya))}" fill="${colourOf(i)}">` +
          `<title>${escapeXml(`${cat}, ${s.name}: ${spec.format(v)}`)}</title></rect>`,
      );
      if (spec.labels)
        body.push(
          `<text class="bar-value" x="${n2(bx + barW / 2)}" y="${n2(ya - 3)}" text-anchor="middle">${escapeXml(spec.format(v))}</text>`,
        );
    });
    const lx = MARGIN.left + (c + 0.5) * slot;
    const ly = top + plotH + 12;
    body.push(
      slant
        ? `<text class="tick" transform="translate(${n2(lx + 3)},${n2(ly)}) rotate(-40)" text-anchor="end">${escapeXml(cat.slice(0, 24))}</text>`
        : `<text class="tick" x="${n2(lx)}" y="${n2(ly)}" text-anchor="middle">${escapeXml(cat)}</text>`,
    );
  });
  body.push(`<line class="axis" x1="${MARGIN.left}" x2="${MARGIN.left + plotW}" y1="${n2(py(0))}" y2="${n2(py(0))}"/>`);
  return frame(width, height, spec.title, body);
}

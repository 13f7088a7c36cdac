/** The value cells of report.html as a test reads them, and as report.json says they should read. */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { reportDataPaths, type GenerationRecord } from '../../src/observe/report-data.ts';
import type { ReportSummary } from '../../src/observe/report-html.ts';

/** The page's value cells as report.json (and the generations) give them, formatted as the page says it does. */
export function expectedCells(
  report: ReportSummary,
  generations: readonly Pick<GenerationRecord, 'label' | 'thresholds' | 'coverage'>[],
): Map<string, string> {
  const pct = (v: number | null | undefined) => (v === null || v === undefined ? '–' : (100 * v).toFixed(2));
  const cells = new Map<string, string>();
  for (const p of report.phases) {
    cells.set(`miou:${p.phase}`, pct(p.miou));
    cells.set(`tail:${p.phase}`, pct(p.tailMiou));
    cells.set(`iterations:${p.phase}`, String(p.iterations));
  }
  const evaluated = report.phases.filter((p) => p.classIoU);
  const [first, last] = [evaluated[0]!, evaluated.at(-1)!];
  report.classNames.forEach((name, k) => {
    cells.set(`iou-class:${k}`, name);
    cells.set(`iou:${first.phase}:${k}`, pct(first.classIoU![k]));
    cells.set(`iou:${last.phase}:${k}`, pct(last.classIoU![k]));
    for (const g of generations) {
      cells.set(`threshold:${g.label}:${k}`, g.thresholds[k]!.toFixed(3));
      cells.set(`coverage:${g.label}:${k}`, (100 * g.coverage[k]!).toFixed(1));
    }
  });
  return cells;
}

/** data-key cells of an HTML string (entities of the few characters the page escapes undone). */
export function htmlCells(html: string): Map<string, string> {
  const unescape = (s: string) => s.replace(/&#(\d+);/g, (_, c: string) => String.fromCharCode(Number(c)));
  return new Map([...html.matchAll(/<td data-key="([^"]+)"[^>]*>([^<]*)<\/td>/g)].map((m) => [unescape(m[1]!), unescape(m[2]!)]));
}

export function assertCells(actual: Map<string, string> | Record<string, string>, expected: Map<string, string>, where: string): void {
  const get = (k: string) => (actual instanceof Map ? actual.get(k) : actual[k]);
  const wrong = [...expected].filter(([k, v]) => get(k) !== v).map(([k, v]) => `${k}: shown ${JSON.stringify(get(k))}, report ${v}`);
  assert.deepEqual(wrong, [], `${where}: values differ from report.json`);
}

/** The pseudo-label generations a run recorded, read straight from its events.jsonl. */
export async function recordedGenerations(run: string): Promise<GenerationRecord[]> {
  return (await readFile(reportDataPaths(run).events, 'utf8'))
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as GenerationRecord)
    .filter((r) => r.kind === 'pseudo-labels');
}

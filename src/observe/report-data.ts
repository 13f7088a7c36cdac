/**
 * What report.html (report-html.ts) is drawn from beyond report.json, recorded while a run goes, in
 * `<run>/report-data/`:
 *
 *   steps.jsonl   every `every`-th training step of each phase (and its first and last), in the step-log
 *                 format (step-log.ts): the training curves, about iterations / logEvery lines
 *   events.jsonl  one line per target-val evaluation (mid-phase and phase end) and per pseudo-label
 *                 generation (thresholds and coverage per class)
 *   previews/     the first target-val images: input, ground truth and each training phase's prediction,
 *                 rendered at the phase's end (src/recipe/previews.ts), so pruning checkpoints later loses
 *                 nothing; `index.json` lists them
 *
 * Resume-safe: the files are appended to, one write(2) per line (a kill leaves no half line); a resumed
 * (or rolled-back) run appends the steps it redoes again and readers keep the LAST record of a step, an
 * evaluation or a generation, as for the step log. Recording is best effort: a failed append (a full
 * disk) is logged once per file and the run goes on; the checkpoint writes report a full disk properly.
 */
import { closeSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { currentGeneration } from '../data/pseudo-labels.ts';
import type { StepReport } from '../stages/train-step.ts';
import type { RunEvents } from './run-events.ts';
import { lastRecordPerStep, readStepLog, stepLogLine, type StepLogRecord } from './step-log.ts';

/** The folder of a run's report data. */
export const REPORT_DATA = 'report-data';

export const reportDataPaths = (runDir: string) => {
  const dir = join(runDir, REPORT_DATA);
  return {
    dir,
    steps: join(dir, 'steps.jsonl'),
    events: join(dir, 'events.jsonl'),
    previews: join(dir, 'previews'),
    previewIndex: join(dir, 'previews', 'index.json'),
  };
};

/** A target-val evaluation: at a phase's end (`label` = phase) or mid-phase (`label` = "phase iteration"). */
export interface EvaluationRecord {
  kind: 'evaluation';
  label: string;
  phase: string;
  /** The iteration of a mid-phase evaluation; null at the phase's end. */
  iteration: number | null;
  miou: number;
  /** Per class; null where JSON could not hold the value (non-finite). */
  classIoU: (number | null)[];
  images: number;
}

/** A pseudo-label generation (src/data/pseudo-labels.ts GenerationInfo) as the report shows it. */
export interface GenerationRecord {
  kind: 'pseudo-labels';
  /** The phase that made it ("pseudo-labels", "continuous refresh 3"). */
  label: string;
  generation: number;
  /** Per-class confidence thresholds (REFERENCE 5). */
  thresholds: number[];
  /** Per class: pixels labelled / pixels predicted as the class. */
  coverage: number[];
  /** Target images labelled. */
  count: number;
}

export type ReportEventRecord = EvaluationRecord | GenerationRecord;

/** The preview images of a run: target-val keys, in order, and the phases with a prediction for them. */
export interface PreviewIndex {
  keys: string[];
  phases: string[];
}

/** File of preview image `index` (0-based): its input, its ground truth, or a phase's prediction. */
export function previewFile(index: number, what: { input: true } | { truth: true } | { phase: string }): string {
  const name = 'input' in what ? 'input' : 'truth' in what ? 'truth' : `pred-${what.phase.replace(/[^A-Za-z0-9_-]/g, '_')}`;
  return `${String(index).padStart(2, '0')}-${name}.png`;
}

/** An append-only JSON-lines file; after a failed append it logs once and drops further lines. */
function appender(path: string, log: (line: string) => void) {
  let fd: number | null = null;
  let failed = false;
  const fail = (err: unknown) => {
    failed = true;
    log(`report data: cannot append to ${path} (${(err as Error).message}); report.html will miss what follows`);
  };
  try {
    fd = openSync(path, 'a');
  } catch (err) {
    fail(err);
  }
  return {
    write(line: string) {
      if (failed || fd === null) return;
      try {
        writeSync(fd, line);
      } catch (err) {
        fail(err);
      }
    },
    close() {
      if (fd !== null) closeSync(fd);
      fd = null;
    },
  };
}

/**
 * `base` plus the report data of a run in `runDir` (module comment): steps whose iteration is 1 or a
 * multiple of `every`, the last step of each phase (written at the phase's end), every evaluation and
 * every pseudo-label generation. `close` releases the files.
 */
export function reportDataEvents(runDir: string, base: RunEvents, opts: { every: number }): RunEvents & { close(): void } {
  if (!(Number.isInteger(opts.every) && opts.every >= 1))
    throw new RangeError(`reportDataEvents: every must be an integer >= 1, got ${opts.every}`);
  const paths = reportDataPaths(runDir);
  mkdirSync(paths.dir, { recursive: true });
  const steps = appender(paths.steps, base.log);
  const events = appender(paths.events, base.log);
  // the newest step of each phase not yet written: written at the phase's end (its last iteration)
  const pending = new Map<string, StepReport>();
  return {
    ...base,
    step(r) {
      if (r.iteration === 1 || r.iteration % opts.every === 0) {
        steps.write(stepLogLine(r));
        pending.delete(r.phase);
      } else pending.set(r.phase, r);
      base.step?.(r);
    },
    phase(p, state) {
      const last = pending.get(p);
      if (state === 'end' && last) steps.write(stepLogLine(last));
      pending.delete(p);
      base.phase?.(p, state);
    },
    evaluated(label, report) {
      const m = /^(.*) (\d+)$/.exec(label);
      const record: EvaluationRecord = {
        kind: 'evaluation',
        label,
        phase: m ? m[1]! : label,
        iteration: m ? Number(m[2]) : null,
        miou: report.miou,
        classIoU: report.classIoU,
        images: report.images,
      };
      events.write(`${JSON.stringify(record)}\n`);
      base.evaluated?.(label, report);
    },
    pseudoLabels(info, counts) {
      const s = info.source;
      const label = `${typeof s.phase === 'string' ? s.phase : 'generation'}${typeof s.refresh === 'number' ? ` refresh ${s.refresh}` : ''}`;
      const record: GenerationRecord = {
        kind: 'pseudo-labels',
        label,
        generation: info.generation,
        thresholds: info.thresholds,
        coverage: info.coverage,
        count: info.count,
      };
      events.write(`${JSON.stringify(record)}\n`);
      base.pseudoLabels?.(info, counts);
    },
    close() {
      steps.close();
      events.close();
    },
  };
}

/** Everything report.html shows beyond report.json. */
export interface ReportData {
  /** One record per (phase, iteration), the last logged, in order of first appearance. */
  steps: StepLogRecord[];
  /** One per label, the last logged, in the order they were last logged (a redone one moves to its redoing). */
  evaluations: EvaluationRecord[];
  /** One per label, the last logged (a redone pass replaces the killed one's), in the order they were last logged. */
  generations: GenerationRecord[];
  previews: { index: PreviewIndex; dir: string } | null;
  /** Where each part came from (shown on the page; "none" when missing). */
  sources: { steps: string; events: string; previews: string };
}

const isMissing = (err: unknown) => (err as NodeJS.ErrnoException).code === 'ENOENT';

function lastPerLabel<T extends { label: string }>(records: readonly T[]): T[] {
  const byLabel = new Map<string, T>();
  for (const r of records) {
    byLabel.delete(r.label); // a redone record moves to where it happened last
    byLabel.set(r.label, r);
  }
  return [...byLabel.values()];
}

async function readEvents(path: string): Promise<ReportEventRecord[] | null> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if (isMissing(err)) return null;
    throw new Error(`${path}: cannot read: ${(err as Error).message}`);
  }
  const out: ReportEventRecord[] = [];
  text.split('\n').forEach((line, i) => {
    if (line === '') return;
    let r: ReportEventRecord;
    try {
      r = JSON.parse(line) as ReportEventRecord;
    } catch (err) {
      throw new Error(`${path}:${i + 1}: not JSON (${(err as Error).message}): ${line.slice(0, 80)}`);
    }
    const ok =
      (r.kind === 'evaluation' && typeof r.label === 'string' && typeof r.miou === 'number' && Array.isArray(r.classIoU)) ||
      (r.kind === 'pseudo-labels' && typeof r.label === 'string' && Array.isArray(r.thresholds) && Array.isArray(r.coverage));
    if (!ok)
      throw new Error(
        `${path}:${i + 1}: expected {"kind":"evaluation",label,miou,classIoU,...} or {"kind":"pseudo-labels",label,thresholds,coverage,...}, found ${line.slice(0, 80)}`,
      );
    out.push(r);
  });
  return out;
}

/**
 * The report data of `runDir` (module comment). Missing parts are empty (a run from before they were
 * recorded): without generations recorded, the current one of `<run>/pseudo-labels` stands in. `stepLog`:
 * take the curves from this step log (`--step-log` of the run, every step) instead.
 */
export async function readReportData(runDir: string, opts: { stepLog?: string } = {}): Promise<ReportData> {
  const paths = reportDataPaths(runDir);
  const stepsPath = opts.stepLog ?? paths.steps;
  let steps: StepLogRecord[] = [];
  let stepsSource = stepsPath;
  try {
    steps = lastRecordPerStep(readStepLog(stepsPath));
  } catch (err) {
    if (!isMissing(err) || opts.stepLog) throw err;
    stepsSource = 'none';
  }
  const events = await readEvents(paths.events);
  const evaluations = lastPerLabel((events ?? []).filter((r): r is EvaluationRecord => r.kind === 'evaluation'));
  let generations = lastPerLabel((events ?? []).filter((r): r is GenerationRecord => r.kind === 'pseudo-labels'));
  let eventsSource = events ? paths.events : 'none';
  if (generations.length === 0) {
    const current = await currentGeneration(join(runDir, 'pseudo-labels'));
    if (current) {
      const s = current.source;
      generations = [
        {
          kind: 'pseudo-labels',
          label: typeof s.phase === 'string' ? s.phase : `generation ${current.generation}`,
          generation: current.generation,
          thresholds: current.thresholds,
          coverage: current.coverage,
          count: current.count,
        },
      ];
      eventsSource = `${eventsSource === 'none' ? '' : `${eventsSource}; `}${join(runDir, 'pseudo-labels', 'current.json')}`;
    }
  }
  let previews: ReportData['previews'] = null;
  try {
    const index = JSON.parse(await readFile(paths.previewIndex, 'utf8')) as PreviewIndex;
    if (!Array.isArray(index.keys) || !Array.isArray(index.phases))
      throw new Error(`expected {"keys": [...], "phases": [...]}, found ${JSON.stringify(index).slice(0, 80)}`);
    previews = { index, dir: paths.previews };
  } catch (err) {
    if (!isMissing(err)) throw new Error(`${paths.previewIndex}: ${(err as Error).message}`);
  }
  return {
    steps,
    evaluations,
    generations,
    previews,
    sources: { steps: stepsSource, events: eventsSource, previews: previews ? paths.previews : 'none' },
  };
}

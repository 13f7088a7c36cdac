/**
 * The step log (`--step-log FILE`): one JSON line per completed training step, appended when the step
 * completes (before its checkpoint, if any):
 *
 *   {"phase":"warmup","iteration":5,"losses":{"total":1.59,"seg":1.58,"adv":0.0007,"disc":0.69},"lr":0.0095,"skipped":false}
 *
 * Training curves for users; the crash tests compare runs with it loss for loss. Numbers are written in
 * JavaScript's shortest round-trip form, so every float32 loss reads back bit-exactly (non-finite ones
 * as the strings "NaN", "Infinity", "-Infinity"). A resumed run appends: the steps redone after a crash
 * appear again, and the LAST record of a (phase, iteration) is the one of the run that went on.
 * Each line is one synchronous write(2) to a file opened for appending: a kill never leaves half a
 * line behind a later one.
 */
import { mkdirSync, openSync, readFileSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import type { RunEvents } from './run-events.ts';
import type { StepReport } from '../stages/train-step.ts';

export interface StepLogRecord {
  phase: string;
  /** Completed iterations of the phase after this step (1-based). */
  iteration: number;
  /** Every loss term of the step (`total` included). */
  losses: Record<string, number>;
  lr: number;
  /** The update was skipped (non-finite loss). */
  skipped: boolean;
  /** The method's own per-step statistics, when it reports any (the mean teacher's confidence share, ...). */
  stats?: Record<string, number>;
}

const encodeNumber = (v: number): number | string => (Number.isFinite(v) ? v : String(v));
const decodeNumber = (v: unknown): number =>
  typeof v === 'string' && ['NaN', 'Infinity', '-Infinity'].includes(v) ? Number(v) : (v as number);

export function stepLogLine(r: Pick<StepReport, 'phase' | 'iteration' | 'losses' | 'lr' | 'skipped' | 'stats'>): string {
  const numbers = (m: Record<string, number>) => Object.fromEntries(Object.entries(m).map(([k, v]) => [k, encodeNumber(v)]));
  const stats = r.stats && Object.keys(r.stats).length ? { stats: numbers(r.stats) } : {};
  return `${JSON.stringify({ phase: r.phase, iteration: r.iteration, losses: numbers(r.losses), lr: encodeNumber(r.lr), skipped: r.skipped, ...stats })}\n`;
}

/** `base` plus a step log appended to `path` (created with its folder when missing). */
export function stepLogEvents(path: string, base: RunEvents): RunEvents {
  mkdirSync(dirname(path), { recursive: true });
  const fd = openSync(path, 'a');
  return {
    ...base,
    step(r) {
      try {
        writeSync(fd, stepLogLine(r));
      } catch (err) {
        throw new Error(`step log ${path}: cannot append the record of ${r.phase} iteration ${r.iteration}: ${(err as Error).message}`);
      }
      base.step?.(r);
    },
  };
}

/** Reads a step log; a malformed line is an error naming the file and the line number. */
export function readStepLog(path: string): StepLogRecord[] {
  const text = readFileSync(path, 'utf8');
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop();
  return lines.map((line, i) => {
    let r: StepLogRecord;
    try {
      r = JSON.parse(line) as StepLogRecord;
    } catch (err) {
      throw new Error(`${path}:${i + 1}: not JSON (${(err as Error).message}): ${line.slice(0, 80)}`);
    }
    if (typeof r.phase !== 'string' || !Number.isInteger(r.iteration) || typeof r.losses !== 'object' || r.losses === null) {
      throw new Error(`${path}:${i + 1}: expected {phase, iteration, losses, lr, skipped}, found ${line.slice(0, 80)}`);
    }
    const numbers = (m: Record<string, unknown>) => Object.fromEntries(Object.entries(m).map(([k, v]) => [k, decodeNumber(v)]));
    return { ...r, losses: numbers(r.losses), lr: decodeNumber(r.lr), ...(r.stats ? { stats: numbers(r.stats) } : {}) };
  });
}

/**
 * One record per (phase, iteration), the LAST one logged (a resumed run's replaces the killed run's),
 * in the order of their first appearance.
 */
export function lastRecordPerStep(records: readonly StepLogRecord[]): StepLogRecord[] {
  const byStep = new Map<string, StepLogRecord>();
  for (const r of records) byStep.set(`${r.phase}\u0000${r.iteration}`, r);
  return [...byStep.values()];
}

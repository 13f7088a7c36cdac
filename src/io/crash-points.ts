/**
 * Crash points: places where a test can make the process SIGKILL itself, to prove that a `kill -9` at
 * that exact instant loses nothing but the work since the last complete checkpoint.
 *
 *   SPCL_CRASH_AT=NAME:N   the N-th time (1-based, counted in this process) the code reaches point NAME,
 *                          it writes `crash-point: NAME:N: SIGKILL` to stderr and sends itself SIGKILL
 *   SPCL_CRASH_AT=NAME:N:SIGTERM (or SIGINT)   the same with that signal instead: a stop request that
 *                          arrives exactly there (the process goes on and handles it as from outside)
 *   SPCL_CRASH_AT=NAME:N:SIGSTOP   the process stops there until a SIGCONT: a test changes the world
 *                          meanwhile (fills the disk) and lets it go on
 *
 * | point               | where                                                                            |
 * |---------------------|----------------------------------------------------------------------------------|
 * | `step`              | mid training step: the update is applied in memory; the step's report, step-log   |
 * |                     | line and checkpoint are not written yet                                          |
 * | `checkpoint-write`  | a checkpoint's temporary file is about half written (not yet renamed)            |
 * | `checkpoint-commit` | the checkpoint file is renamed into place, `latest.json` not yet updated         |
 * | `prototypes`        | mid prototype-initialisation pass, after a batch                                 |
 * | `thresholds`        | mid threshold pass, after a batch's predictions went to the scratch LMDB         |
 * | `pseudo-write`      | mid pseudo-label generation, after a record was queued (batches of 32 before it |
 * |                     | are committed to the generation's LMDB)                                          |
 * | `pseudo-commit`     | a generation is committed (`current.json` switched, old ones pruned), the       |
 * |                     | checkpoint that names it not yet written                                        |
 * | `evaluate`          | mid evaluation pass, after a batch                                               |
 * | `ingest`            | mid ingest, after a record was queued (batches of 16 before it are committed)    |
 *
 * When the variable is unset the points cost one comparison with null. SIGKILL (the default), not an
 * exception: no `finally`, no exit handler, no flush runs, exactly as with `kill -9` or the OOM killer.
 */
import { writeSync } from 'node:fs';

export const CRASH_POINTS = [
  'step',
  'checkpoint-write',
  'checkpoint-commit',
  'prototypes',
  'thresholds',
  'pseudo-write',
  'pseudo-commit',
  'evaluate',
  'ingest',
] as const;
export type CrashPointName = (typeof CRASH_POINTS)[number];

export const CRASH_ENV = 'SPCL_CRASH_AT';

const SIGNALS = ['SIGKILL', 'SIGTERM', 'SIGINT', 'SIGSTOP'] as const;
export type CrashSignal = (typeof SIGNALS)[number];

/** Parses `NAME:N[:SIGNAL]`; errors name the variable, the value and what is expected. */
export function parseCrashAt(value: string): { point: CrashPointName; occurrence: number; signal: CrashSignal } {
  const m = /^([a-z-]+):(\d+)(?::([A-Z]+))?$/.exec(value);
  if (!m)
    throw new Error(
      `${CRASH_ENV}=${value}: expected NAME:N[:SIGNAL] (e.g. checkpoint-write:2) with NAME one of ${CRASH_POINTS.join(', ')}`,
    );
  const point = m[1] as CrashPointName;
  if (!CRASH_POINTS.includes(point))
    throw new Error(`${CRASH_ENV}=${value}: unknown crash point '${m[1]}' (expected one of ${CRASH_POINTS.join(', ')})`);
  const occurrence = Number(m[2]);
  if (occurrence < 1) throw new Error(`${CRASH_ENV}=${value}: the occurrence must be >= 1, got ${occurrence}`);
  const signal = (m[3] ?? 'SIGKILL') as CrashSignal;
  if (!SIGNALS.includes(signal)) throw new Error(`${CRASH_ENV}=${value}: unknown signal '${m[3]}' (expected one of ${SIGNALS.join(', ')})`);
  return { point, occurrence, signal };
}

const raw = process.env[CRASH_ENV];
const armed = raw ? parseCrashAt(raw) : null;
let reached = 0;

/** Marks a crash point (see the table above); does nothing unless SPCL_CRASH_AT names it. */
export function crashPoint(name: CrashPointName): void {
  if (armed === null || armed.point !== name) return;
  if (++reached !== armed.occurrence) return;
  writeSync(2, `crash-point: ${name}:${armed.occurrence}: ${armed.signal}\n`);
  process.kill(process.pid, armed.signal);
}

/**
 * Data faults: why a sample could not be read as stored, as a bounded set of reasons. They label
 * `spcl_samples_skipped_total{stage,reason}` and `spcl_samples_repaired_total{stage,reason}`, tag the log
 * lines and key `report.json`'s `skipped`/`repaired` counts.
 *
 * A reason is decided where the fault arises (the read worker), not guessed later from error text. It
 * crosses the worker-thread boundary as plain data (`FaultReport`): an Error thrown in a piscina worker
 * arrives on the main thread as a bare `Error` with its message only (class, `code` and other fields are
 * lost), so the worker returns faults instead of throwing them, and the main thread turns them into a
 * `SampleFault` whose `reason` the runtime (`StageError.reason`) reads.
 */

/**
 * - `missing_record`: the manifest lists the key but its shard has no such record (or the manifest does
 *   not list the key at all);
 * - `corrupt_record`: the stored value does not decode as a record;
 * - `corrupt_image`: the image bytes do not decode (truncated file, not an image);
 * - `wrong_size`: the image decodes to another size or channel count than the record says;
 * - `corrupt_label`: the label PNG does not decode, or has other dimensions, channels or bit depth than
 *   the record says (a pseudo-label: another number of values than its size);
 * - `unknown_label_ids`: label or pseudo-label values that are neither a train ID (< numClasses) nor 255:
 *   corruption or a wrong label map (skipped with `data.unknownLabelIds: 'skip'`, else repaired);
 * - `missing_pseudo_label`: the pseudo-label generation has no entry for the key;
 * - `shard_unavailable`: the shard (or pseudo-label generation) file is missing or does not open, after
 *   `data.retries` retries with doubling delays (and, once given up, until it is checked again);
 * - `other`: anything unforeseen (a worker that died, a bug); the log line has the message.
 */
export const FAULT_REASONS = [
  'missing_record',
  'corrupt_record',
  'corrupt_image',
  'wrong_size',
  'corrupt_label',
  'unknown_label_ids',
  'missing_pseudo_label',
  'shard_unavailable',
  'other',
] as const;
export type FaultReason = (typeof FAULT_REASONS)[number];

/** Reasons for which a sample is kept after a repair (never skipped for them by default). */
export const REPAIR_REASONS = ['unknown_label_ids'] as const satisfies readonly FaultReason[];

/** `data.unknownLabelIds`: 'ignore' = those pixels become 255 (ignored by every loss) and the sample is kept; 'skip' = the sample is skipped. */
export type UnknownLabelPolicy = 'ignore' | 'skip';

/** A fault as plain data (it survives postMessage between threads). */
export interface FaultReport {
  reason: FaultReason;
  /** The file at fault: the shard, the pseudo-label generation, or the manifest. */
  file: string;
  key: string;
  /** Complete text for a log line, naming the file and the key. */
  message: string;
}

/** A sample that cannot be used, on the main thread; `reason` is read by `StageError` (src/graph/flow.ts). */
export class SampleFault extends Error {
  readonly reason: FaultReason;
  readonly file: string;
  readonly key: string;

  constructor(report: FaultReport) {
    super(report.message);
    this.name = 'SampleFault';
    this.reason = report.reason;
    this.file = report.file;
    this.key = report.key;
  }
}

/** Counts by stage, then reason (`report.json`'s `skipped` and `repaired`). */
export type FaultCounts = Record<string, Partial<Record<FaultReason, number>>>;

export function countFault(counts: FaultCounts, stage: string, reason: FaultReason): void {
  const byReason = (counts[stage] ??= {});
  byReason[reason] = (byReason[reason] ?? 0) + 1;
}

/** A reason from an arbitrary error: its own when it carries a known one, else 'other'. */
export function faultReason(reason: string): FaultReason {
  return (FAULT_REASONS as readonly string[]).includes(reason) ? (reason as FaultReason) : 'other';
}

/**
 * Pixels of `labels` that are neither a train ID (< numClasses) nor 255: their count and up to `examples`
 * distinct values (ascending), for the message. Every sample's label goes through this, so it reads four
 * labels at a time: a word whose bytes are all < numClasses, or all 255, needs no further look (1.5 ms for a
 * 2048x1024 label instead of 6 ms byte by byte; see test/data/faults.test.ts for its share of a read).
 */
export function unknownLabelIds(labels: Uint8Array, numClasses: number, examples = 5): { pixels: number; ids: number[] } {
  if (!(Number.isInteger(numClasses) && numClasses >= 1 && numClasses <= 128))
    throw new RangeError(`unknownLabelIds: numClasses ${numClasses} is not in 1..128`);
  let pixels = 0;
  const slow = (from: number, to: number) => {
    for (let j = from; j < to; j++) {
      const v = labels[j]!;
      if (v >= numClasses && v !== 255) pixels++;
    }
  };
  const aligned = labels.byteOffset % 4 === 0;
  const n4 = aligned ? labels.length >>> 2 : 0;
  if (n4 > 0) {
    const words = new Uint32Array(labels.buffer, labels.byteOffset, n4);
    // per byte b < 128: (b + 0x80 - numClasses) has its high bit set iff b >= numClasses (no carry into the
    // next byte); bytes >= 128 have it set already. A word with no high bit set holds only train IDs.
    const add = (0x80 - numClasses) * 0x01010101;
    for (let i = 0; i < n4; i++) {
      const w = words[i]!;
      if (w === 0xffffffff || ((((w & 0x7f7f7f7f) + add) | w) & 0x80808080) === 0) continue;
      slow(4 * i, 4 * i + 4);
    }
  }
  slow(4 * n4, labels.length);
  if (pixels === 0) return { pixels, ids: [] };
  const seen = new Uint8Array(256);
  for (let i = 0; i < labels.length; i++) seen[labels[i]!] = 1;
  const ids: number[] = [];
  for (let v = numClasses; v < 255 && ids.length < examples; v++) if (seen[v]) ids.push(v);
  return { pixels, ids };
}

/** Sets the pixels that are neither a train ID nor 255 to 255, in place. */
export function ignoreUnknownLabelIds(labels: Uint8Array, numClasses: number): void {
  for (let i = 0; i < labels.length; i++) if (labels[i]! >= numClasses) labels[i] = 255;
}

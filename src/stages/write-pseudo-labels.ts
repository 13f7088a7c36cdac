/**
 * Pseudo-label writer stage (REFERENCE 5, labelling pass): applies the thresholds to the predictions the
 * threshold pass stored (argmax; 255 where the confidence is below its class threshold, p >= sigma kept)
 * and writes a new generation, switched in atomically with its thresholds (`pseudo-labels.ts`).
 *
 * A generation either completes or leaves nothing: when the signal aborts (SIGINT/SIGTERM) or a write
 * fails (full disk), the partial generation is deleted and `current.json` keeps naming the previous one.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { open } from 'lmdb';
import { from, mergeMap, type OperatorFunction } from 'rxjs';
import { AbortedError } from '../graph/flow.ts';
import { DiskFullError } from '../io/atomic.ts';
import { PseudoLabelWriter, currentGeneration, type GenerationInfo } from '../data/pseudo-labels.ts';
import { scratchConfidence, type ScratchPrediction, type ThresholdResult } from './estimate-thresholds.ts';

export interface WritePseudoLabelsOptions {
  dir: string;
  numClasses: number;
  keep: number;
  source: Record<string, unknown>;
  /** Generation files never pruned, whatever `keep` says (those that retained checkpoints name). */
  pinned?: Iterable<string>;
  /** Checked between records: an abort deletes the partial generation and throws an `AbortedError`. */
  signal?: AbortSignal;
}

export async function writeGeneration(t: ThresholdResult, opts: WritePseudoLabelsOptions): Promise<GenerationInfo> {
  const writer = await PseudoLabelWriter.next(opts.dir, opts.numClasses);
  let info: GenerationInfo;
  try {
    const db = open<ScratchPrediction, string>({ path: t.scratch, compression: true, encoding: 'msgpack', readOnly: true });
    try {
      const q = t.thresholds.map((s) => s * 65535);
      for (const { key, value } of db.getRange()) {
        if (opts.signal?.aborted) throw new AbortedError(`pseudo-labels ${join(opts.dir, writer.file)}`);
        const labels = new Uint8Array(value.pred.length);
        const conf = scratchConfidence(value);
        for (let i = 0; i < labels.length; i++) {
          const p = value.pred[i]!;
          labels[i] = conf[i]! >= q[p]! ? p : 255;
        }
        await writer.put(key, { width: value.width, height: value.height, labels }, value.pred);
        // a turn of the event loop per record, so that a stop request (SIGTERM) is seen within one record
        if (opts.signal) await new Promise((resolve) => setImmediate(resolve));
      }
    } finally {
      await db.close();
    }
    info = await writer.commit(t.thresholds, opts.source, opts.keep, opts.pinned);
  } catch (err) {
    await writer.abort();
    if (!(err instanceof DiskFullError)) throw err;
    const current = await currentGeneration(opts.dir);
    const still = current ? `current.json still names ${current.file}, which is complete` : 'there is no earlier generation';
    throw new DiskFullError(`${err.message}; the partial ${writer.file} was deleted; ${still}`, err.path, err.freeBytes, err.neededBytes);
  }
  await rm(t.scratch, { force: true });
  await rm(`${t.scratch}-lock`, { force: true });
  return info;
}

export function writePseudoLabels(opts: WritePseudoLabelsOptions): OperatorFunction<ThresholdResult, GenerationInfo> {
  return mergeMap((t) => from(writeGeneration(t, opts)));
}

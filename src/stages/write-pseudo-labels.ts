/**
 * Pseudo-label writer stage (REFERENCE 5, labelling pass): applies the thresholds to the predictions the
 * threshold pass stored (argmax; 255 where the confidence is below its class threshold, p >= sigma kept)
 * and writes a new generation, switched in atomically with its thresholds (`pseudo-labels.ts`).
 */
import { rm } from 'node:fs/promises';
import { open } from 'lmdb';
import { from, mergeMap, type OperatorFunction } from 'rxjs';
import { PseudoLabelWriter, type GenerationInfo } from '../data/pseudo-labels.ts';
import { scratchConfidence, type ScratchPrediction, type ThresholdResult } from './estimate-thresholds.ts';

export interface WritePseudoLabelsOptions {
  dir: string;
  numClasses: number;
  keep: number;
  source: Record<string, unknown>;
}

export async function writeGeneration(t: ThresholdResult, opts: WritePseudoLabelsOptions): Promise<GenerationInfo> {
  const writer = await PseudoLabelWriter.next(opts.dir, opts.numClasses);
  const db = open<ScratchPrediction, string>({ path: t.scratch, compression: true, encoding: 'msgpack', readOnly: true });
  try {
    const q = t.thresholds.map((s) => s * 65535);
    for (const { key, value } of db.getRange()) {
      const labels = new Uint8Array(value.pred.length);
      const conf = scratchConfidence(value);
      for (let i = 0; i < labels.length; i++) {
        const p = value.pred[i]!;
        labels[i] = conf[i]! >= q[p]! ? p : 255;
      }
      await writer.put(key, { width: value.width, height: value.height, labels }, value.pred);
    }
  } catch (err) {
    await writer.abort();
    throw err;
  } finally {
    await db.close();
  }
  const info = await writer.commit(t.thresholds, opts.source, opts.keep);
  await rm(t.scratch, { force: true });
  await rm(`${t.scratch}-lock`, { force: true });
  return info;
}

export function writePseudoLabels(opts: WritePseudoLabelsOptions): OperatorFunction<ThresholdResult, GenerationInfo> {
  return mergeMap((t) => from(writeGeneration(t, opts)));
}

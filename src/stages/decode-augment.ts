/**
 * Decode + augment stage: each sample goes to the piscina pool (`SampleReader`), which reads the shard,
 * decodes and augments it in a worker. Ordered output with bounded concurrency (reproducible batches);
 * a sample that fails (a data fault: corrupt record, missing pseudo-label, unavailable shard, ...; see
 * src/data/faults.ts) is skipped with its reason, its credit released; a sample kept after a repair
 * (unknown label IDs set to 255) is reported through `onRepair` and goes on.
 */
import { tap, type OperatorFunction } from 'rxjs';
import { stage, type Credits, type StageError } from '../graph/flow.ts';
import type { AugmentSpec } from '../data/augment.ts';
import type { FaultReport } from '../data/faults.ts';
import type { Sample, SampleReader } from '../data/reader.ts';
import type { SampleRef } from './read-shards.ts';

export const DECODE_AUGMENT = 'decode-augment';

export interface DecodedSample extends Sample {
  ref: SampleRef;
}

export interface DecodeAugmentOptions {
  reader: SampleReader;
  spec: AugmentSpec;
  credits: Credits;
  /** Pseudo-label generation to take labels from (LMDB path), or null for the records' own labels. */
  pseudo?: string | null;
  /**
   * Reads in flight at once. Default: the credits' capacity, i.e. every sample the flow may hold is read
   * as soon as it has a credit. The credits bound memory. The old cap, 2 per decode worker, left any batch
   * larger than it (self-training's 8 target images on 2 workers: 4) half-read at the end of each
   * training step: the next reads are only issued when the main thread, blocked in the step, is free.
   */
  concurrency?: number;
  /** A skipped sample: `error.reason` says why, its message names the file and the key. */
  onSkip?: (error: StageError) => void;
  /** A sample kept after a repair. */
  onRepair?: (stage: string, fault: FaultReport) => void;
}

export function decodeAugment(opts: DecodeAugmentOptions): OperatorFunction<SampleRef, DecodedSample> {
  const decode = stage(
    DECODE_AUGMENT,
    async (ref: SampleRef): Promise<DecodedSample> => ({
      ...(await opts.reader.read(ref.dataset, ref.key, opts.spec, ref.seed, opts.pseudo ?? null)),
      ref,
    }),
    {
      concurrency: opts.concurrency ?? opts.credits.capacity,
      onError: 'skip',
      credits: opts.credits,
      keyOf: (ref) => ref.key,
      onSkip: (e) => opts.onSkip?.(e),
    },
  );
  return (source) =>
    source.pipe(
      decode,
      tap((s) => {
        if (s.repaired) opts.onRepair?.(DECODE_AUGMENT, s.repaired);
      }),
    );
}

/** The log line of a skipped sample: reason, stage, key, and the file in the message. */
export function skipLine(e: StageError): string {
  return `skipped (${e.reason}): ${e.message}`;
}

/** The log line of a sample kept after a repair. */
export function repairLine(stage: string, f: FaultReport): string {
  return `repaired (${f.reason}): stage ${stage} (sample ${f.key}): ${f.message}`;
}

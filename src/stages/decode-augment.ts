/**
 * Decode + augment stage: each sample goes to the piscina pool (`SampleReader`), which reads the shard,
 * decodes and augments it in a worker. Ordered output with bounded concurrency (reproducible batches);
 * a sample that fails (corrupt record, missing pseudo-label) is skipped and counted, its credit released.
 */
import type { OperatorFunction } from 'rxjs';
import { stage, type Credits, type StageError } from '../graph/flow.ts';
import type { AugmentSpec } from '../data/augment.ts';
import type { Sample, SampleReader } from '../data/reader.ts';
import type { SampleRef } from './read-shards.ts';

export interface DecodedSample extends Sample {
  ref: SampleRef;
}

export interface DecodeAugmentOptions {
  reader: SampleReader;
  spec: AugmentSpec;
  credits: Credits;
  /** Pseudo-label generation to take labels from (LMDB path), or null for the records' own labels. */
  pseudo?: string | null;
  concurrency?: number;
  onSkip?: (error: StageError) => void;
}

export function decodeAugment(opts: DecodeAugmentOptions): OperatorFunction<SampleRef, DecodedSample> {
  return stage(
    'decode-augment',
    async (ref: SampleRef): Promise<DecodedSample> => ({ ...(await opts.reader.read(ref.dataset, ref.key, opts.spec, ref.seed, opts.pseudo ?? null)), ref }),
    {
      concurrency: opts.concurrency ?? Math.max(2, opts.reader.threads * 2),
      onError: 'skip',
      credits: opts.credits,
      keyOf: (ref) => ref.key,
      onSkip: (e) => opts.onSkip?.(e),
    },
  );
}

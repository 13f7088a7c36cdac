/**
 * The one batch-feeding chain: read-shards -> decode-augment -> collate, all three on one set of credits,
 * so at most `credits.capacity` samples are between the shard reader and the consumer (Design: backpressure).
 * The training phases, the passes (evaluation, prototypes, pseudo-labels) and the stand-alone tools all
 * take their batches from here; they differ only in the sampler, the spec and the hooks.
 */
import { tap, type Observable } from 'rxjs';
import type { Credits, StageError } from '../graph/flow.ts';
import type { AugmentSpec } from '../data/augment.ts';
import type { FaultReport } from '../data/faults.ts';
import type { Dataset, SampleReader } from '../data/reader.ts';
import type { Sampler } from '../data/sampler.ts';
import { collate, type Batch } from './collate.ts';
import { decodeAugment } from './decode-augment.ts';
import { readShards } from './read-shards.ts';

export interface FeedOptions {
  dataset: Dataset;
  sampler: Sampler;
  reader: SampleReader;
  spec: AugmentSpec;
  credits: Credits;
  batchSize: number;
  /** Run seed and stream id of the per-sample seeds (`streams.ts` names the recipe's). */
  seed: number;
  stream: number;
  /** Draws already consumed (resume); the sampler must already be past them. */
  start?: number;
  /** A pass over `count` samples (the last batch may be smaller); undefined = endless training batches. */
  count?: number;
  /** Take labels from this pseudo-label generation (LMDB path). */
  pseudo?: string | null;
  onSkip?: (error: StageError) => void;
  onRepair?: (stage: string, fault: FaultReport) => void;
  /** A sample left the decode-augment workers. */
  onDecoded?: (sample: { seconds: number; encodedBytes: number }) => void;
}

export function feedBatches(opts: FeedOptions): Observable<Batch> {
  const { reader, credits } = opts;
  return readShards({
    dataset: opts.dataset,
    sampler: opts.sampler,
    credits,
    seed: opts.seed,
    stream: opts.stream,
    start: opts.start,
    count: opts.count,
  }).pipe(
    decodeAugment({ reader, spec: opts.spec, credits, pseudo: opts.pseudo ?? null, onSkip: opts.onSkip, onRepair: opts.onRepair }),
    tap((s) => opts.onDecoded?.(s)),
    collate(opts.batchSize, { reader, credits, partial: opts.count !== undefined }),
  );
}

/**
 * Source stage: the sampler's keys of one dataset, pulled one per free credit (bounded flow). Each item
 * carries a per-sample seed derived from the run seed, the stream and the draw index, so augmentation is
 * reproducible and independent of worker timing.
 */
import { type Observable } from 'rxjs';
import { Credits, END, pullSource, type Pulled } from '../graph/flow.ts';
import type { Dataset } from '../data/reader.ts';
import type { Sampler } from '../data/sampler.ts';
import { Rng } from '../data/rng.ts';

export interface SampleRef {
  dataset: Dataset;
  key: string;
  /** Draw index within this stream. */
  index: number;
  /** Augmentation seed of this sample. */
  seed: number;
}

export interface ReadShardsOptions {
  dataset: Dataset;
  sampler: Sampler;
  credits: Credits;
  /** Run seed and a stream id (e.g. 1 source, 2 target) for per-sample seeds. */
  seed: number;
  stream: number;
  /** Stop after this many samples (a pass over a set); undefined = endless (training). */
  count?: number;
  /** First draw index (resume). */
  start?: number;
}

export function readShards(opts: ReadShardsOptions): Observable<SampleRef> {
  let index = opts.start ?? 0;
  const end = opts.count === undefined ? Infinity : (opts.start ?? 0) + opts.count;
  return pullSource<SampleRef>(opts.credits, (): Pulled<SampleRef>[] => {
    if (index >= end) return [END];
    const i = index++;
    const key = opts.sampler.next();
    return [{ dataset: opts.dataset, key, index: i, seed: Rng.derive(opts.seed, opts.stream, i).nextU32() }];
  });
}

/** Sampler over a set in its stored order, once (evaluation, prototype init, pseudo-labelling passes). */
export function inOrder(keys: readonly string[]): Sampler {
  let i = 0;
  return {
    next: () => keys[i++ % keys.length]!,
    state: () => ({ kind: 'shuffle', epoch: 0, position: i }),
  };
}

/**
 * Main-thread side of sample reading: a dataset folder (manifest + shards) and a piscina pool of
 * `read-worker.ts` that decode + augment. Output buffers are recycled: `read` lends a preallocated
 * buffer pair to the worker (moved, not copied), the sample comes back in it, and `recycle` returns it
 * to the pool once the batch has been built, so steady-state reading allocates nothing per sample.
 */
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { Piscina } from 'piscina';
import type { AugmentSpec } from './augment.ts';
import type { ReadResult, ReadTask } from './read-worker.ts';
import { readManifest, type Manifest } from './shards.ts';

export interface Dataset {
  dir: string;
  manifest: Manifest;
  keys: string[];
  shardOf(key: string): string;
}

export async function openDataset(dir: string): Promise<Dataset> {
  const manifest = await readManifest(dir);
  const shardByKey = new Map<string, number>();
  for (const [key, shard] of manifest.samples) shardByKey.set(key, shard);
  return {
    dir,
    manifest,
    keys: manifest.samples.map(([k]) => k),
    shardOf(key: string) {
      const shard = shardByKey.get(key);
      if (shard === undefined) throw new Error(`${dir}: no record '${key}' in the manifest`);
      return join(dir, `shard-${String(shard).padStart(5, '0')}.lmdb`);
    },
  };
}

export type Sample = ReadResult;

export interface ReaderOptions {
  /** Decode/augment worker threads. Default: cores. */
  threads?: number;
}

export class SampleReader {
  private readonly pool: Piscina;
  private readonly free = new Map<string, { image: Float32Array; label: Uint8Array }[]>();
  private readonly inFlight = new Set<Promise<unknown>>();
  allocated = 0;

  constructor(opts: ReaderOptions = {}) {
    const threads = Math.max(1, opts.threads ?? availableParallelism());
    this.pool = new Piscina({ filename: new URL('./read-worker.ts', import.meta.url).href, minThreads: threads, maxThreads: threads });
  }

  get threads(): number {
    return this.pool.threads.length;
  }

  /** Reads one sample of `dataset` with augmentation `spec`; deterministic for `seed`. */
  async read(dataset: Dataset, key: string, spec: AugmentSpec, seed: number, pseudo: string | null = null): Promise<Sample> {
    const size = spec.resize ?? spec.crop ?? null;
    const keepLabel = Boolean(spec.resize) && spec.resizeLabel === false;
    let lent: { image: Float32Array; label: Uint8Array } | undefined;
    if (size && !keepLabel) {
      const slot = `${size[0]}x${size[1]}`;
      lent = this.free.get(slot)?.pop();
      if (!lent) {
        lent = { image: new Float32Array(size[0] * size[1] * 3), label: new Uint8Array(size[0] * size[1]) };
        this.allocated++;
      }
    }
    const task: ReadTask = { shard: dataset.shardOf(key), key, spec, seed, pseudo, image: lent?.image ?? null, label: lent?.label ?? null };
    const transferList = lent ? [lent.image.buffer, lent.label.buffer] : [];
    const run = this.pool.run(task, { transferList: transferList as ArrayBuffer[] }) as Promise<Sample>;
    this.inFlight.add(run);
    try {
      return await run;
    } finally {
      this.inFlight.delete(run);
    }
  }

  /** Gives a sample's buffers back for reuse (call when its batch has been copied to the device). */
  recycle(sample: Sample): void {
    const label = sample.label ?? sample.spare;
    if (!label || label.length !== sample.height * sample.width || sample.image.length !== label.length * 3) return;
    const slot = `${sample.height}x${sample.width}`;
    let list = this.free.get(slot);
    if (!list) this.free.set(slot, (list = []));
    list.push({ image: sample.image, label });
  }

  /** Waits for the reads in flight (a flow that stopped early leaves some), then ends the workers. */
  async close(): Promise<void> {
    await Promise.allSettled([...this.inFlight]);
    await this.pool.destroy();
    this.free.clear();
  }
}

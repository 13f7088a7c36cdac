/**
 * Main-thread side of sample reading: a dataset folder (manifest + shards) and a piscina pool of
 * `read-worker.ts` that decode + augment. Output buffers are recycled: `read` lends a preallocated
 * buffer pair to the worker (moved, not copied), the sample comes back in it, and `recycle` returns it
 * to the pool once the batch has been built, so steady-state reading allocates nothing per sample.
 *
 * Data faults (src/data/faults.ts) reject `read` with a `SampleFault` that carries the reason, the file
 * and the key. Files that change under the reader (read-worker.ts explains what LMDB does then):
 * - a shard (or pseudo-label generation) that is missing or does not open is retried `retries` times
 *   after `retryDelay`, 2 x `retryDelay`, 4 x ... seconds; then its samples fail at once as
 *   `shard_unavailable` until the next check, `retryDelay x 2^retries` seconds later, when one read tries
 *   it again: the run goes on, and the shard is read again once it is back;
 * - a replaced shard is closed in every worker (a barrier of one small task per worker), then opened
 *   again: the reads after it see the new file.
 */
import { availableParallelism } from 'node:os';
import v8 from 'node:v8';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Piscina } from 'piscina';
import { destroyPool } from './pool.ts';
import type { AugmentSpec } from './augment.ts';
import { SampleFault, type UnknownLabelPolicy } from './faults.ts';
import type { CloseTask, ReadReply, ReadResult, ReadTask } from './read-worker.ts';
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
  /** Reads handed to each worker at once (`data.tasksPerWorker`). Default DEFAULT_TASKS_PER_WORKER. */
  tasksPerWorker?: number;
  /** Label values that are neither a train ID nor 255 (`data.unknownLabelIds`). Default 'ignore'. */
  unknownLabels?: UnknownLabelPolicy;
  /** Retries of a missing or unopenable file (`data.retries`). Default 3. */
  retries?: number;
  /** Seconds before the first retry, doubling with each (`data.retryDelay`). Default 0.5. */
  retryDelay?: number;
  /** Events of the files (replaced, unavailable, back). */
  log?: (line: string) => void;
  /** Starting old-space size of the workers' heaps, MB (see DEFAULT_WORKER_OLD_SPACE_MB; env SPCL_WORKER_OLD_SPACE_MB). */
  workerOldSpaceMb?: number;
}

interface FileState {
  /** Identity (`dev:ino`) of the file the workers may hold open; undefined = none open. */
  identity?: string;
  /** Given up after the retries: reads fail at once until `checkAt` (performance.now() ms). */
  down?: { cause: string; checkAt: number };
}

/** Seconds for a message: 0.30000000000000004 -> 0.3. */
const seconds = (s: number): number => Number(s.toFixed(3));

/** A read replaced this often (a file that keeps changing) gives up as unavailable. */
const MAX_REOPENS = 3;
/** A worker that does not reach the close barrier in this time is reported (it is stuck in a task). */
const BARRIER_TIMEOUT_MS = 30_000;

/**
 * Reads handed to each decode worker at once. Piscina gives a worker its next task from the main thread,
 * and the main thread is blocked for the whole of a training step (tfjs runs synchronously): with one
 * task per worker, each worker decoded one sample per step and the rest after the step, while the
 * trainer waited (13 % of the warm-up's step time on 2 cores). With more than a step's worth queued in
 * each worker (the self-training step reads 8 target + 4 source samples: 6 per worker on 2 cores) the
 * workers decode through the step. A worker still runs its reads one at a time (read-worker.ts), so
 * this costs no memory beyond the flow's credits (`data.prefetch`), which bound the samples in flight.
 */
export const DEFAULT_TASKS_PER_WORKER = 8;

/**
 * Starting old-generation size of the decode workers' V8 heaps. Each sample allocates ~10 MB outside the
 * JS heap (sharp's decoded image, the label's inflate); V8 counts that against a small heap's limit and
 * ran a full mark-compact on every sample. A 64 MB start spaces them out: measured +10-15 % images per
 * CPU-second for ~25 MB more RSS per worker (bench/data.ts, README "Data pipeline"). 0 = V8's default.
 */
export const DEFAULT_WORKER_OLD_SPACE_MB = 64;

let workerOldSpaceSet = -1;

/** V8 reads heap sizes when an isolate is made: this applies to workers started after it, not this thread. */
function workerHeapHeadroom(mb: number): void {
  const env = process.env.SPCL_WORKER_OLD_SPACE_MB;
  const want = env !== undefined && /^\d+$/.test(env) ? Number(env) : mb;
  if (want <= 0 || want === workerOldSpaceSet) return;
  v8.setFlagsFromString(`--initial-old-space-size=${want}`);
  workerOldSpaceSet = want;
}

export class SampleReader {
  private readonly pool: Piscina;
  private readonly workers: number;
  private readonly free = new Map<string, { image: Float32Array; label: Uint8Array }[]>();
  private readonly inFlight = new Set<Promise<unknown>>();
  private readonly files = new Map<string, FileState>();
  /** A close-everywhere in progress: new reads wait for it. */
  private closing: Promise<void> = Promise.resolve();
  private readonly unknownLabels: UnknownLabelPolicy;
  private readonly retries: number;
  private readonly retryDelay: number;
  private readonly log: (line: string) => void;
  allocated = 0;

  constructor(opts: ReaderOptions = {}) {
    this.workers = Math.max(1, opts.threads ?? availableParallelism());
    workerHeapHeadroom(opts.workerOldSpaceMb ?? DEFAULT_WORKER_OLD_SPACE_MB);
    this.pool = new Piscina({
      filename: new URL('./read-worker.ts', import.meta.url).href,
      minThreads: this.workers,
      maxThreads: this.workers,
      concurrentTasksPerWorker: opts.tasksPerWorker ?? DEFAULT_TASKS_PER_WORKER,
    });
    this.unknownLabels = opts.unknownLabels ?? 'ignore';
    this.retries = opts.retries ?? 3;
    this.retryDelay = opts.retryDelay ?? 0.5;
    this.log = opts.log ?? (() => {});
  }

  get threads(): number {
    return this.pool.threads.length;
  }

  /**
   * Reads one sample of `dataset` with augmentation `spec`; deterministic for `seed`. Rejects with a
   * `SampleFault` for a sample that cannot be used.
   */
  async read(dataset: Dataset, key: string, spec: AugmentSpec, seed: number, pseudo: string | null = null): Promise<Sample> {
    let shard: string;
    try {
      shard = dataset.shardOf(key);
    } catch (err) {
      throw new SampleFault({ reason: 'missing_record', file: join(dataset.dir, 'manifest.json'), key, message: (err as Error).message });
    }
    const paths = pseudo ? [shard, pseudo] : [shard];
    let retry = 0;
    let reopens = 0;
    for (;;) {
      await this.closing;
      for (const path of paths) {
        const down = this.files.get(path)?.down;
        if (down && performance.now() < down.checkAt) {
          throw this.unavailable(path, key, `unavailable (${down.cause}); skipped without reading until it is checked again`);
        }
      }
      const { reply, slot } = await this.submit(shard, key, spec, seed, pseudo, dataset.manifest.numClasses);
      for (const [path, id] of Object.entries(reply.opened)) this.opened(path, id);
      if (reply.ok) {
        for (const path of paths) this.available(path);
        return reply.sample;
      }
      if (slot && reply.image && reply.label) this.giveBack(slot, reply.image, reply.label);
      const f = reply.fault;
      if (f.reason !== 'shard_unavailable') throw new SampleFault(f);
      const state = this.state(f.file);
      // Whoever may still hold the file open (a deleted file's mapping, a replaced file's old inode) closes it.
      if (f.changed !== undefined || state.identity !== undefined) await this.closeEverywhere(f.file, f.detail, state.identity);
      if (f.changed !== undefined && ++reopens < MAX_REOPENS) continue;
      if (state.down) {
        // a check of a file given up on: still unavailable, next check later
        state.down = { cause: f.detail, checkAt: performance.now() + this.checkInterval() };
        throw this.unavailable(f.file, key, `still unavailable (${f.detail})`);
      }
      if (retry >= this.retries) {
        const waited = seconds(this.retryDelay * (2 ** this.retries - 1));
        state.down = { cause: f.detail, checkAt: performance.now() + this.checkInterval() };
        this.log(
          `${f.file}: unavailable (${f.detail}) after ${this.retries} retries over ${waited} s; its samples are skipped, ` +
            `checked again every ${seconds(this.checkInterval() / 1000)} s`,
        );
        throw this.unavailable(f.file, key, `unavailable (${f.detail}); gave up after ${this.retries} retries over ${waited} s`);
      }
      await sleep(1000 * this.retryDelay * 2 ** retry++);
    }
  }

  /** Gives a sample's buffers back for reuse (call when its batch has been copied to the device). */
  recycle(sample: Sample): void {
    const label = sample.label ?? sample.spare;
    if (!label || label.length !== sample.height * sample.width || sample.image.length !== label.length * 3) return;
    this.giveBack(`${sample.height}x${sample.width}`, sample.image, label);
  }

  /** Waits for the reads in flight (a flow that stopped early leaves some), then ends the workers. */
  async close(): Promise<void> {
    await Promise.allSettled([...this.inFlight]);
    await this.closing;
    await destroyPool(this.pool);
    this.free.clear();
  }

  /** Runs one read task with a lent buffer pair from free-list `slot` (null: none lent). */
  private async submit(
    shard: string,
    key: string,
    spec: AugmentSpec,
    seed: number,
    pseudo: string | null,
    numClasses: number,
  ): Promise<{ reply: ReadReply; slot: string | null }> {
    const size = spec.resize ?? spec.crop ?? null;
    const keepLabel = Boolean(spec.resize) && spec.resizeLabel === false;
    const slot = size && !keepLabel ? `${size[0]}x${size[1]}` : null;
    let lent: { image: Float32Array; label: Uint8Array } | undefined;
    if (size && slot) {
      lent = this.free.get(slot)?.pop();
      if (!lent) {
        lent = { image: new Float32Array(size[0] * size[1] * 3), label: new Uint8Array(size[0] * size[1]) };
        this.allocated++;
      }
    }
    const expect: Record<string, string> = {};
    for (const path of pseudo ? [shard, pseudo] : [shard]) {
      const id = this.files.get(path)?.identity;
      if (id !== undefined) expect[path] = id;
    }
    const task: ReadTask = {
      shard,
      key,
      spec,
      seed,
      pseudo,
      numClasses,
      unknownLabels: this.unknownLabels,
      expect,
      image: lent?.image ?? null,
      label: lent?.label ?? null,
    };
    const transferList = lent ? [lent.image.buffer, lent.label.buffer] : [];
    const run = this.pool.run(task, { transferList: transferList as ArrayBuffer[] }) as Promise<ReadReply>;
    this.inFlight.add(run);
    try {
      return { reply: await run, slot };
    } catch (err) {
      // the worker died or could not run the task; the lent buffers are lost with it
      const file = shard;
      throw new SampleFault({ reason: 'other', file, key, message: `${file}: record '${key}': ${(err as Error).message}` });
    } finally {
      this.inFlight.delete(run);
    }
  }

  private giveBack(slot: string, image: Float32Array, label: Uint8Array): void {
    let list = this.free.get(slot);
    if (!list) this.free.set(slot, (list = []));
    list.push({ image, label });
  }

  private state(path: string): FileState {
    let s = this.files.get(path);
    if (!s) this.files.set(path, (s = {}));
    return s;
  }

  private checkInterval(): number {
    return 1000 * this.retryDelay * 2 ** this.retries;
  }

  private unavailable(file: string, key: string, detail: string): SampleFault {
    return new SampleFault({ reason: 'shard_unavailable', file, key, message: `${file}: record '${key}': ${detail}` });
  }

  /** A worker opened `path` as file `id`. Two different files open at once: close them everywhere. */
  private opened(path: string, id: string): void {
    const s = this.state(path);
    if (s.identity === undefined) s.identity = id;
    else if (s.identity !== id)
      void this.closeEverywhere(
        path,
        `opened as two different files (inodes ${s.identity.split(':')[1]} and ${id.split(':')[1]})`,
        s.identity,
      );
  }

  private available(path: string): void {
    const s = this.files.get(path);
    if (s?.down) {
      s.down = undefined;
      this.log(`${path}: available again; its samples are read again`);
    }
  }

  /**
   * Closes `path` in every worker (one barrier task per worker), then forgets its identity: the next
   * reads open the file that is there now. Reads wait meanwhile; one close at a time.
   */
  private closeEverywhere(path: string, why: string, held: string | undefined): Promise<void> {
    const run = async (): Promise<void> => {
      if (this.files.get(path)?.identity !== held) return; // done by an earlier call (and maybe opened again since)
      const t0 = performance.now();
      const arrived = new Int32Array(new SharedArrayBuffer(4));
      const task: CloseTask = { path, arrived, workers: this.workers, timeoutMs: BARRIER_TIMEOUT_MS };
      // never rejects (reads wait on it): a task that cannot run counts as a worker not reached. Each task
      // carries an (unused) abort signal: piscina runs an abortable task alone on an idle worker, whatever
      // `concurrentTasksPerWorker` says, so the `workers` barrier tasks land on `workers` different workers.
      const all = Array.from({ length: this.workers }, () =>
        Promise.resolve().then(() => this.pool.run(task, { name: 'closeFile', signal: new AbortController().signal }) as Promise<boolean>),
      );
      for (const p of all) this.inFlight.add(p);
      const done = await Promise.allSettled(all);
      for (const p of all) this.inFlight.delete(p);
      this.state(path).identity = undefined;
      const ok = done.every((d) => d.status === 'fulfilled' && d.value);
      this.log(
        `${path}: ${why}; closed in ${ok ? 'all' : 'NOT all'} ${this.workers} workers in ${(performance.now() - t0).toFixed(1)} ms, ` +
          'the next reads open it again',
      );
    };
    this.closing = this.closing.then(run, run);
    return this.closing;
  }
}

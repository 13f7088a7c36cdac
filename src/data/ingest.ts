/**
 * Dataset folder -> LMDB shards (`shards.ts`): list the samples (`adapters.ts`), take this process's
 * part (`shardIndex` of `shardCount`, so several processes or machines can ingest disjoint parts), skip
 * records already written (resumable), decode/verify/map labels in a piscina pool (`ingest-worker.ts`),
 * write records in batched LMDB transactions, then rebuild `manifest.json`.
 *
 * Bad input never passes silently and never loses the good records: each problem is logged with its
 * path and counted by kind; the caller decides the exit code (`usable`, `--strict`).
 */
import { rm } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { Piscina } from 'piscina';
import { destroyPool } from './pool.ts';
import { createProgress } from '../graph/progress.ts';
import { describeWriteFailureSync } from '../io/atomic.ts';
import { crashPoint } from '../io/crash-points.ts';
import { exists } from '../io/exists.ts';
import { listDataset, type DatasetName, type LabelPolicy, type SampleFiles } from './adapters.ts';
import type { IngestResult, IngestTask, IngestWorkerData, ProblemKind, UnknownIds } from './ingest-worker.ts';
import type { NumClasses } from './labels.ts';
import { openShardForWrite, rebuildManifest, shardFileName, type Manifest, type ShardRecord } from './shards.ts';

export interface IngestOptions {
  dataset: DatasetName;
  root: string;
  out: string;
  split?: string;
  numClasses?: NumClasses;
  labels?: LabelPolicy;
  shardIndex?: number;
  shardCount?: number;
  /** Worker threads. Default: the machine's cores. */
  threads?: number;
  /** Stops submitting new samples; what is in flight is written. */
  signal?: AbortSignal;
  log?: (line: string) => void;
  /** Progress bar/lines on this stream (default stderr); null for none. */
  progressStream?: NodeJS.WriteStream | null;
  /** Called per sample: written, or the problem kind (metrics). */
  onResult?: (outcome: 'written' | ProblemKind, seconds: number) => void;
  /**
   * Write every listed sample into shard file `shard-<shardFile>` instead of partitioning by
   * shardIndex/shardCount (the continuous pipeline's own imports of a watched folder).
   */
  shardFile?: number;
  /** Prepended to every record key (keeps imported keys apart from those of the original ingest). */
  keyPrefix?: string;
  /** Only samples this accepts are ingested now (e.g. files that are no longer being written). */
  select?: (sample: SampleFiles) => boolean;
}

export interface IngestSummary {
  found: number;
  assigned: number;
  written: number;
  existing: number;
  problems: Partial<Record<ProblemKind, number>>;
  problemCount: number;
  /** Labels (written) with IDs outside their label space, and their pixels; those pixels are 255. */
  unknownLabelIds: { files: number; pixels: number };
  shard: string;
  manifest: Manifest | null;
  aborted: boolean;
}

function keyHash(key: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

const MAX_LOGGED_PROBLEMS = 200;
/** Records per write transaction (memory: WRITE_BATCH encoded images). */
const WRITE_BATCH = 16;

export async function ingestDataset(opts: IngestOptions): Promise<IngestSummary> {
  const log = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const shardIndex = opts.shardIndex ?? 0;
  const shardCount = opts.shardCount ?? 1;
  if (!(Number.isInteger(shardCount) && shardCount >= 1 && Number.isInteger(shardIndex) && shardIndex >= 0 && shardIndex < shardCount)) {
    throw new Error(`shard index ${shardIndex} of ${shardCount}: expected 0 <= index < count`);
  }
  const listing = await listDataset(opts.dataset, opts.root, { split: opts.split, numClasses: opts.numClasses, labels: opts.labels });
  const prefix = opts.keyPrefix ?? '';
  const listed = listing.samples.filter((s) => opts.select?.(s) ?? true).map((s) => (prefix ? { ...s, key: prefix + s.key } : s));
  const own = opts.shardFile !== undefined;
  const mine = own ? listed : listed.filter((_, j) => j % shardCount === shardIndex);
  const problems: Partial<Record<ProblemKind, number>> = {};
  let problemCount = 0;
  const report = (kind: ProblemKind, message: string) => {
    opts.onResult?.(kind, 0);
    problems[kind] = (problems[kind] ?? 0) + 1;
    problemCount++;
    if (problemCount <= MAX_LOGGED_PROBLEMS) log(`problem (${kind}): ${message}`);
    else if (problemCount === MAX_LOGGED_PROBLEMS + 1) log('problem: more problems follow; only counts from here on');
  };
  for (const p of listing.problems) if (own || keyHash(p.key) % shardCount === shardIndex) report(p.kind, p.message);
  // Not a problem (the record is written, those pixels are 255) but a sign of a wrong label map or a
  // corrupt file: named per file, counted.
  const unknownLabelIds = { files: 0, pixels: 0 };
  const unknownIds = (u: UnknownIds) => {
    unknownLabelIds.files++;
    unknownLabelIds.pixels += u.pixels;
    if (unknownLabelIds.files <= MAX_LOGGED_PROBLEMS) log(`unknown label IDs: ${u.message}`);
    else if (unknownLabelIds.files === MAX_LOGGED_PROBLEMS + 1) log('unknown label IDs: more labels have them; only counts from here on');
  };

  const shardPath = join(opts.out, shardFileName(opts.shardFile ?? shardIndex));
  // a shard this run creates and never commits a record to is removed at the end: no empty shard is left
  const created = !(await exists(shardPath));
  let committed = 0;
  const shard = openShardForWrite(shardPath, { dataset: opts.dataset, split: listing.split, numClasses: listing.numClasses });
  const todo = mine.filter((s) => shard.index.get(s.key) === undefined);
  const existing = mine.length - todo.length;
  log(
    `ingest: ${opts.dataset}/${listing.split} ${listing.numClasses} classes: found ${listing.samples.length + listing.problems.length}, ` +
      `this shard ${shardIndex}/${shardCount}: ${mine.length}, already written ${existing}, to do ${todo.length}`,
  );

  const threads = Math.max(1, opts.threads ?? availableParallelism());
  const workerData: IngestWorkerData = {
    lut: listing.lut,
    known: listing.known,
    labelSpace: listing.labelSpace,
    labelChannels: opts.dataset === 'synthia' ? 'first' : 'single',
    labelMayBeScaled: listing.labelMayBeScaled,
  };
  const pool = new Piscina({
    filename: new URL('./ingest-worker.ts', import.meta.url).href,
    maxThreads: threads,
    minThreads: threads,
    workerData,
  });
  const progress =
    opts.progressStream === null
      ? null
      : createProgress({ label: `ingest ${opts.dataset}`, total: todo.length, stream: opts.progressStream });
  let written = 0;
  let aborted = false;
  // Records go in synchronous transactions of WRITE_BATCH: a record and its index entry commit together,
  // a kill loses at most the batch in progress (redone on re-run), and a full disk throws right here
  // naming the shard and the free space (lmdb-js's asynchronous commits cannot report it: src/io/atomic.ts).
  const queued: { key: string; record: ShardRecord; mask: number }[] = [];
  const flush = () => {
    const batch = queued.splice(0);
    if (batch.length === 0) return;
    try {
      shard.root.transactionSync(() => {
        for (const r of batch) {
          shard.records.putSync(r.key, r.record);
          shard.index.putSync(r.key, r.mask);
        }
      });
    } catch (err) {
      throw describeWriteFailureSync('shard', shardPath, err);
    }
    committed += batch.length;
  };
  try {
    // Bounded in flight: 2 tasks per thread keep the pool busy without queueing the whole dataset.
    // After a failure (full disk) the other runners finish their task in flight and stop: the pool is
    // destroyed only once no result is on its way (piscina throws on a message from a destroyed pool).
    let next = 0;
    let failure: { error: unknown } | null = null;
    const runOne = async (): Promise<void> => {
      try {
        await runTasks();
      } catch (error) {
        failure ??= { error };
      }
    };
    const runTasks = async (): Promise<void> => {
      while (next < todo.length && failure === null) {
        if (opts.signal?.aborted) {
          aborted = true;
          return;
        }
        const s = todo[next++]!;
        const task: IngestTask = { key: s.key, image: s.image, label: s.label };
        const t0 = performance.now();
        const r = (await pool.run(task)) as IngestResult;
        if (r.ok) {
          opts.onResult?.('written', (performance.now() - t0) / 1000);
          if (r.unknownIds) unknownIds(r.unknownIds);
          queued.push({ key: r.key, record: r.record, mask: r.mask });
          written++;
          crashPoint('ingest');
          if (queued.length >= WRITE_BATCH) flush();
        } else {
          report(r.kind, r.message);
        }
        progress?.detail(problemCount ? `${problemCount} problems` : '');
        progress?.tick();
      }
    };
    await Promise.all(Array.from({ length: threads * 2 }, runOne));
    if (failure) throw (failure as { error: unknown }).error;
    flush();
  } finally {
    progress?.done();
    await destroyPool(pool);
    await shard.close();
    if (created && committed === 0) await Promise.all([shardPath, `${shardPath}-lock`].map((f) => rm(f, { force: true })));
  }
  let manifest: Manifest | null = null;
  if (written + existing > 0) manifest = await rebuildManifest(opts.out);
  if (unknownLabelIds.files > 0) {
    log(
      `ingest: ${unknownLabelIds.files} label files had ${unknownLabelIds.pixels} pixels with IDs outside the ${listing.labelSpace}; they are 255 (ignored)`,
    );
  }
  return {
    found: listing.samples.length + listing.problems.length,
    assigned: mine.length,
    written,
    existing,
    problems,
    problemCount,
    unknownLabelIds,
    shard: shardPath,
    manifest,
    aborted,
  };
}

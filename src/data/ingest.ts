/**
 * Dataset folder -> LMDB shards (`shards.ts`): list the samples (`adapters.ts`), take this process's
 * part (`shardIndex` of `shardCount`, so several processes or machines can ingest disjoint parts), skip
 * records already written (resumable), decode/verify/map labels in a piscina pool (`ingest-worker.ts`),
 * write records in batched LMDB transactions, then rebuild `manifest.json`.
 *
 * Bad input never passes silently and never loses the good records: each problem is logged with its
 * path and counted by kind; the caller decides the exit code (`usable`, `--strict`).
 */
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { Piscina } from 'piscina';
import { createProgress } from '../graph/progress.ts';
import { describeWriteFailure, guardLmdbWrite } from '../io/atomic.ts';
import { crashPoint } from '../io/crash-points.ts';
import { listDataset, type DatasetName, type LabelPolicy } from './adapters.ts';
import type { IngestResult, IngestTask, IngestWorkerData, ProblemKind } from './ingest-worker.ts';
import type { NumClasses } from './labels.ts';
import { openShardForWrite, rebuildManifest, shardFileName, type Manifest } from './shards.ts';

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
}

export interface IngestSummary {
  found: number;
  assigned: number;
  written: number;
  existing: number;
  problems: Partial<Record<ProblemKind, number>>;
  problemCount: number;
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

export async function ingestDataset(opts: IngestOptions): Promise<IngestSummary> {
  const log = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const shardIndex = opts.shardIndex ?? 0;
  const shardCount = opts.shardCount ?? 1;
  if (!(Number.isInteger(shardCount) && shardCount >= 1 && Number.isInteger(shardIndex) && shardIndex >= 0 && shardIndex < shardCount)) {
    throw new Error(`shard index ${shardIndex} of ${shardCount}: expected 0 <= index < count`);
  }
  const listing = await listDataset(opts.dataset, opts.root, { split: opts.split, numClasses: opts.numClasses, labels: opts.labels });
  const mine = listing.samples.filter((_, j) => j % shardCount === shardIndex);
  const problems: Partial<Record<ProblemKind, number>> = {};
  let problemCount = 0;
  const report = (kind: ProblemKind, message: string) => {
    opts.onResult?.(kind, 0);
    problems[kind] = (problems[kind] ?? 0) + 1;
    problemCount++;
    if (problemCount <= MAX_LOGGED_PROBLEMS) log(`problem (${kind}): ${message}`);
    else if (problemCount === MAX_LOGGED_PROBLEMS + 1) log('problem: more problems follow; only counts from here on');
  };
  for (const p of listing.problems) if (keyHash(p.key) % shardCount === shardIndex) report(p.kind, p.message);

  const shardPath = join(opts.out, shardFileName(shardIndex));
  const shard = openShardForWrite(shardPath, { dataset: opts.dataset, split: listing.split, numClasses: listing.numClasses });
  const todo = mine.filter((s) => shard.index.get(s.key) === undefined);
  const existing = mine.length - todo.length;
  log(`ingest: ${opts.dataset}/${listing.split} ${listing.numClasses} classes: found ${listing.samples.length + listing.problems.length}, ` +
    `this shard ${shardIndex}/${shardCount}: ${mine.length}, already written ${existing}, to do ${todo.length}`);

  const threads = Math.max(1, opts.threads ?? availableParallelism());
  const workerData: IngestWorkerData = {
    lut: listing.lut,
    labelChannels: opts.dataset === 'synthia' ? 'first' : 'single',
    labelMayBeScaled: listing.labelMayBeScaled,
  };
  const pool = new Piscina({ filename: new URL('./ingest-worker.ts', import.meta.url).href, maxThreads: threads, minThreads: threads, workerData });
  const progress = opts.progressStream === null ? null : createProgress({ label: `ingest ${opts.dataset}`, total: todo.length, stream: opts.progressStream });
  let written = 0;
  let aborted = false;
  const writes: Promise<unknown>[] = [];
  // A failed write (full disk) names the shard and the free space; LMDB keeps every committed record.
  const settle = async (batch: Promise<unknown>[]) => {
    try {
      await Promise.all(batch);
    } catch (err) {
      throw await describeWriteFailure('shard', shardPath, err);
    }
  };
  try {
    // Bounded in flight: 2 tasks per thread keep the pool busy without queueing the whole dataset.
    let next = 0;
    const runOne = async (): Promise<void> => {
      while (next < todo.length) {
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
          writes.push(guardLmdbWrite(shard.root.transaction(() => {
            shard.records.put(r.key, r.record);
            shard.index.put(r.key, r.mask);
          })));
          written++;
          crashPoint('ingest');
          if (writes.length >= 256) await settle(writes.splice(0));
        } else {
          report(r.kind, r.message);
        }
        progress?.detail(problemCount ? `${problemCount} problems` : '');
        progress?.tick();
      }
    };
    await Promise.all(Array.from({ length: threads * 2 }, runOne));
    await settle(writes);
  } finally {
    progress?.done();
    await pool.destroy();
    await shard.close();
  }
  let manifest: Manifest | null = null;
  if (written + existing > 0) manifest = await rebuildManifest(opts.out);
  return { found: listing.samples.length + listing.problems.length, assigned: mine.length, written, existing, problems, problemCount, shard: shardPath, manifest, aborted };
}

/**
 * Watch-target stage (continuous adaptation): a source that looks at the target dataset every
 * `pollSeconds` and emits what arrived since the last look.
 *
 * New target images reach the dataset folder in two ways:
 * - a concurrent `pipelines/ingest.ts` appends records to the folder's shards and rebuilds
 *   `manifest.json` when it ends: the stage sees the manifest change (mtime, size) and re-reads it;
 * - a watched folder (`watch`, in the target dataset's own layout): the stage ingests the files that are
 *   new and no longer being written (mtime older than `settleSeconds`) itself, into a shard of its own
 *   (`shard-99999.lmdb`, keys prefixed `watch/`), which rebuilds the manifest. The ingest runs as a
 *   `pipelines/ingest.ts` process: LMDB environments are shared by every thread of a process in lmdb-js,
 *   and opening for write (or closing) one that the decode workers are reading breaks their read
 *   transactions ("No transaction to renew", measured); between processes LMDB is safe by design. A
 *   crashing decoder cannot take the training process down either.
 * Records become visible only through a manifest written atomically after their LMDB transactions, so a
 * reader never sees a key whose record is not there. A file that fails to ingest (corrupt, truncated) is
 * counted and not tried again until its size or mtime changes.
 */
import { spawn } from 'node:child_process';
import { rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Observable, exhaustMap, filter, from, timer } from 'rxjs';
import { exists } from '../io/exists.ts';
import { listDataset, type DatasetName } from '../data/adapters.ts';
import { openDataset, type Dataset } from '../data/reader.ts';

/** The ingest entry point the watched-folder imports run as (a process of its own: see the header). */
const INGEST = new URL('../../pipelines/ingest.ts', import.meta.url).pathname;

/** Shard index of the pipeline's own imports from a watched folder. */
export const WATCH_SHARD = 99999;
/** Key prefix of those imports (they never collide with the original ingest's keys). */
export const WATCH_PREFIX = 'watch/';

export interface TargetArrival {
  /** The target dataset as the manifest now describes it. */
  dataset: Dataset;
  /** Keys that were not in the previous manifest. */
  added: number;
  /** Of those, ingested by this stage from the watched folder. */
  ingested: number;
  /** Watched files that failed to ingest in this look (named in the log). */
  problems: number;
}

export interface WatchTargetOptions {
  /** The target dataset as opened at the start. */
  dataset: Dataset;
  /** Folder to ingest new images from, or null. */
  watch: string | null;
  pollSeconds: number;
  settleSeconds: number;
  log: (line: string) => void;
  /** Decode workers of the watched-folder ingest (default 1: training keeps the other cores). */
  threads?: number;
  /** Clock (tests). Default Date.now. */
  now?: () => number;
  /** Stops a watched-folder ingest between files (SIGINT/SIGTERM): what is written stays, the rest waits. */
  signal?: AbortSignal;
}

interface FileSeen {
  size: number;
  mtimeMs: number;
}

/**
 * Polls the target: each look (never two at once; a slow look delays the next) ingests settled new files of
 * the watched folder, then re-reads the manifest if it changed, and emits when keys were added.
 */
export function watchTarget(opts: WatchTargetOptions): Observable<TargetArrival> {
  const look = lookAtTarget(opts);
  const ms = Math.max(1, opts.pollSeconds * 1000);
  return timer(0, ms).pipe(
    // a failed look (an I/O error, an ingest that could not start) is logged; the next one tries again
    exhaustMap(() =>
      from(
        look().catch((err: Error) => {
          opts.log(`watch: looking at ${opts.dataset.dir} failed (${err.message}); trying again in ${opts.pollSeconds} s`);
          return null;
        }),
      ),
    ),
    filter((a): a is TargetArrival => a !== null),
  );
}

/** One look at the target per call (exported for tests: the same as one tick of `watchTarget`). */
export function lookAtTarget(opts: WatchTargetOptions): () => Promise<TargetArrival | null> {
  const dir = opts.dataset.dir;
  const now = opts.now ?? Date.now;
  let dataset = opts.dataset;
  let known = new Set(dataset.keys);
  let manifestStamp = '';
  const failed = new Map<string, string>(); // watched file -> size:mtime that failed
  const manifestPath = join(dir, 'manifest.json');

  const stampOf = async (path: string): Promise<string> => {
    try {
      const s = await stat(path);
      return `${s.size}:${s.mtimeMs}`;
    } catch {
      return '';
    }
  };

  /** Settled files of the watched folder whose keys are not in the dataset yet: key -> file and stamp. */
  const pendingFiles = async (): Promise<Map<string, { image: string; stamp: string }>> => {
    const m = dataset.manifest;
    const todo = new Map<string, { image: string; stamp: string }>();
    if (!(await exists(opts.watch!))) return todo; // not made yet: nothing has arrived
    const listing = await listDataset(m.dataset as DatasetName, opts.watch!, { split: m.split, numClasses: m.numClasses, labels: 'none' });
    for (const s of listing.samples) {
      if (known.has(WATCH_PREFIX + s.key)) continue;
      let seen: FileSeen;
      try {
        const st = await stat(s.image);
        seen = { size: st.size, mtimeMs: st.mtimeMs };
      } catch {
        continue; // removed since the listing
      }
      const stamp = `${seen.size}:${seen.mtimeMs}`;
      if (failed.get(s.image) === stamp) continue;
      if (now() - seen.mtimeMs < opts.settleSeconds * 1000) continue; // still being written
      todo.set(s.key, { image: s.image, stamp });
    }
    return todo;
  };

  /** Runs pipelines/ingest.ts on the files of `todo` (a process of its own, see the header), forwarding its log. */
  const ingestFiles = async (todo: Map<string, { image: string }>): Promise<void> => {
    const m = dataset.manifest;
    const list = join(tmpdir(), `spcl-watch-${process.pid}-${Date.now()}.txt`);
    await writeFile(list, [...todo.values()].map((f) => f.image).join('\n'));
    try {
      const child = spawn(
        process.execPath,
        [
          INGEST,
          '--dataset',
          m.dataset,
          '--root',
          opts.watch!,
          '--out',
          dir,
          '--split',
          m.split,
          '--classes',
          String(m.numClasses),
          '--labels',
          'none',
          '--only',
          list,
          '--shard-file',
          String(WATCH_SHARD),
          '--key-prefix',
          WATCH_PREFIX,
          '--threads',
          String(opts.threads ?? 1),
          '--metrics-port',
          '0',
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      const stop = () => child.kill('SIGINT'); // ingest finishes the files in flight and rewrites the manifest
      opts.signal?.addEventListener('abort', stop, { once: true });
      const forward = (stream: NodeJS.ReadableStream) =>
        createInterface({ input: stream }).on('line', (line) => {
          if (line.trim()) opts.log(`watch: ${line}`);
        });
      forward(child.stdout!);
      forward(child.stderr!);
      // exit 1 = nothing usable in this batch (every file failed): its problems are named above
      const code = await new Promise<number | null>((resolve, reject) => child.once('error', reject).once('exit', resolve));
      opts.signal?.removeEventListener('abort', stop);
      if (code !== 0 && code !== 1) throw new Error(`watch: ${INGEST} exited with code ${code}`);
    } finally {
      await rm(list, { force: true });
    }
  };

  return async () => {
    let todo = new Map<string, { image: string; stamp: string }>();
    if (opts.watch) {
      todo = await pendingFiles();
      if (todo.size > 0) await ingestFiles(todo);
    }
    const stamp = await stampOf(manifestPath);
    if (stamp === manifestStamp && todo.size === 0) return null;
    manifestStamp = stamp;
    const next = stamp === '' ? dataset : await openDataset(dir);
    const added = next.keys.filter((k) => !known.has(k)).length;
    dataset = next;
    known = new Set(next.keys);
    // a watched file that did not make it in is not tried again until it changes (its problem is in the log)
    let ingested = 0;
    let problems = 0;
    for (const [key, f] of todo) {
      if (known.has(WATCH_PREFIX + key)) ingested++;
      else {
        problems++;
        failed.set(f.image, f.stamp);
      }
    }
    if (added === 0 && problems === 0) return null;
    return { dataset: next, added, ingested, problems };
  };
}

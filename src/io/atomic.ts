/**
 * Files that are either complete or absent, and writes that fail clearly when the disk is full.
 *
 * - `writeFileAtomic`: the bytes go to `${path}.tmp-${pid}` in the same directory, fsync, rename over
 *   `path`, fsync of the directory. A crash at any instant (kill -9, OOM killer, power loss after the
 *   fsyncs) leaves the old file or the new one, never a torn one. What a crash can leave is the temporary
 *   file, which no reader ever opens (they go by the final names); `removeStaleTemporaries` deletes those
 *   of processes that are no longer running.
 * - A write that fails (ENOSPC, EDQUOT; a full disk seen through another error such as LMDB's EIO) removes
 *   its temporary file and throws a `DiskFullError` naming the file, the bytes it needed and the free
 *   space left on that file system (statfs, measured after the clean-up), so the user knows what to free.
 * - LMDB writers that must survive a full disk commit with `transactionSync` (errors are thrown where
 *   they happen): lmdb-js 3.5's asynchronous commits leave an internal promise nobody can handle when a
 *   commit fails (an unhandled rejection ends the process), and `close()` never settles afterwards.
 */
import { statfsSync } from 'node:fs';
import { mkdir, open, readdir, rename, rm, statfs, writeFile } from 'node:fs/promises';
import { constants } from 'node:os';
import { dirname } from 'node:path';
import { crashPoint, type CrashPointName } from './crash-points.ts';

const { errno } = constants;

/** Largest single write; Node rejects buffers over 2 GiB per call. */
const WRITE_CHUNK = 1 << 30;

/** Below this many free bytes a failed write is taken for a full disk even without ENOSPC (LMDB says EIO). */
const NEARLY_FULL = 1 << 20;

export class DiskFullError extends Error {
  readonly path: string;
  /** Bytes free on the file system after the failed write was cleaned up (null if statfs failed). */
  readonly freeBytes: number | null;
  /** Bytes the write needed, when known. */
  readonly neededBytes: number | null;

  constructor(message: string, path: string, freeBytes: number | null, neededBytes: number | null) {
    super(message);
    this.name = 'DiskFullError';
    this.path = path;
    this.freeBytes = freeBytes;
    this.neededBytes = neededBytes;
  }
}

/** Bytes available to this user on the file system holding `dir`, or null. */
export async function freeBytes(dir: string): Promise<number | null> {
  try {
    const s = await statfs(dir);
    return s.bavail * s.bsize;
  } catch {
    return null;
  }
}

function freeBytesSync(dir: string): number | null {
  try {
    const s = statfsSync(dir);
    return s.bavail * s.bsize;
  } catch {
    return null;
  }
}

function size(bytes: number): string {
  return `${bytes} bytes (${(bytes / 2 ** 20).toFixed(2)} MiB)`;
}

/**
 * What a failed write of `path` means for the user: a `DiskFullError` when the disk is full (errno, or
 * less than 1 MiB free), else `cause` itself. `what` says what the file is ("checkpoint").
 */
export async function describeWriteFailure(what: string, path: string, cause: unknown, neededBytes: number | null = null): Promise<Error> {
  let err = cause instanceof Error ? cause : new Error(String(cause));
  // lmdb-js rejects a failed asynchronous commit with 'Commit failed (see commitError for details)'; the
  // cause (e.g. EIO from a full disk) is the rejection of the `commitError` promise it carries.
  const commit = (err as { commitError?: Promise<unknown> }).commitError;
  if (commit instanceof Promise)
    err = await commit.then(
      () => err,
      (e: unknown) => (e instanceof Error ? e : err),
    );
  return describeWriteFailureSync(what, path, err, neededBytes, await freeBytes(dirname(path)));
}

/** `describeWriteFailure` for synchronous writers (an LMDB `transactionSync`). */
export function describeWriteFailureSync(
  what: string,
  path: string,
  cause: unknown,
  neededBytes: number | null = null,
  free: number | null = freeBytesSync(dirname(path)),
): Error {
  const err = cause instanceof Error ? cause : new Error(String(cause));
  if (err instanceof DiskFullError) return err;
  // Node gives errno names ('ENOSPC'); lmdb-js gives the number (28 on Linux)
  const raw = (err as { code?: unknown }).code;
  const code = typeof raw === 'number' ? Object.entries(errno).find(([, n]) => n === raw)?.[0] : (raw as string | undefined);
  const dir = dirname(path);
  const byErrno = code === 'ENOSPC' || code === 'EDQUOT';
  if (!byErrno && !(free !== null && free < Math.max(NEARLY_FULL, neededBytes ?? 0))) return err;
  const why = byErrno ? `no space left on the device (${code})` : `write failed (${err.message}) with the file system full`;
  const need = neededBytes === null ? '' : `${size(neededBytes)} to write, `;
  const have = free === null ? 'free space unknown' : `${size(free)} free in ${dir}`;
  return new DiskFullError(`${what} ${path}: ${why}: ${need}${have}`, path, free, neededBytes);
}

export function temporaryPath(path: string): string {
  return `${path}.tmp-${process.pid}`;
}

export interface AtomicWriteOptions {
  /** What the file is, for error messages ("checkpoint"). Default "file". */
  what?: string;
  /** Crash point reached once, when about half of the bytes are in the temporary file (tests). */
  crashPoint?: CrashPointName;
}

/** Writes `chunks` to a temporary file, fsyncs, renames it over `path`, fsyncs the directory. */
export async function writeFileAtomic(path: string, chunks: Iterable<Uint8Array>, opts: AtomicWriteOptions = {}): Promise<void> {
  const list = [...chunks];
  const total = list.reduce((a, c) => a + c.length, 0);
  const tmp = temporaryPath(path);
  try {
    const fh = await open(tmp, 'w');
    try {
      let written = 0;
      let halfway = false;
      for (const chunk of list) {
        for (let at = 0; at < chunk.length; ) {
          const { bytesWritten } = await fh.write(chunk, at, Math.min(WRITE_CHUNK, chunk.length - at));
          at += bytesWritten;
          written += bytesWritten;
        }
        if (opts.crashPoint && !halfway && 2 * written >= total) {
          halfway = true;
          crashPoint(opts.crashPoint);
        }
      }
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw await describeWriteFailure(opts.what ?? 'file', path, err, total);
  }
  await syncDirectory(dirname(path));
}

/**
 * Outputs a run can write again (prediction PNGs): `bytes` to the temporary name, renamed over `path`
 * (its folder made first). An interrupted write leaves no torn file under the final name; no fsync, as
 * thousands of them would cost more than writing the files again after a power loss.
 */
export async function writeFileReplacing(path: string, bytes: Uint8Array, what = 'file'): Promise<void> {
  const tmp = temporaryPath(path);
  try {
    await mkdir(dirname(path), { recursive: true });
    await writeFile(tmp, bytes);
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw await describeWriteFailure(what, path, err, bytes.length);
  }
}

/** `writeFileAtomic` of `value` as indented JSON. */
export async function writeJsonAtomic(path: string, value: unknown, opts: AtomicWriteOptions = {}): Promise<void> {
  await writeFileAtomic(path, [Buffer.from(`${JSON.stringify(value, null, 1)}\n`)], opts);
}

async function syncDirectory(dir: string): Promise<void> {
  let fh;
  try {
    fh = await open(dir, 'r');
  } catch {
    return; // e.g. Windows cannot open directories; the rename is still atomic there.
  }
  try {
    await fh.sync();
  } catch (err) {
    // Some file systems refuse fsync on directories; durability is then the file system's business.
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EINVAL' && code !== 'EPERM' && code !== 'EISDIR' && code !== 'ENOTSUP') throw err;
  } finally {
    await fh.close();
  }
}

function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Deletes the temporary files (`*.tmp-PID`) in `dir` that no running writer owns: those of dead
 * processes, and those with this process's own PID (a container restarts with the same PIDs; this
 * process is not writing them while it cleans up). Returns their names. A missing `dir` is empty.
 */
export async function removeStaleTemporaries(dir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of names) {
    const m = /\.tmp-(\d+)$/.exec(name);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid !== process.pid && running(pid)) continue;
    await rm(`${dir}/${name}`, { force: true, recursive: true });
    removed.push(name);
  }
  return removed;
}

/**
 * piscina worker of the training input: opens the LMDB shards itself (read-only, cached per worker),
 * reads a record, decodes it (sharp for the image, our PNG decoder for the train-ID label), applies the
 * phase's augmentation (REFERENCE 6.3, deterministic for the task's seed) and returns the sample. The
 * output buffers travel both ways without copying: the main thread lends preallocated buffers with the
 * task, the worker fills them and moves them back.
 *
 * Data faults are returned, not thrown (`ReadReply`): an error thrown here reaches the main thread as a
 * bare Error with its message only, and the lent buffers would be lost with it. Each fault carries its
 * reason (src/data/faults.ts), the file and the key.
 *
 * Files that change under a reader. Every read checks the file's identity (device + inode, one stat,
 * about 2 us) against the one the main thread says the workers hold (`expect`):
 * - deleted: an open mapping would go on reading the deleted file for ever; instead the handle is
 *   closed and the read fails as `shard_unavailable` (the reader retries, then skips, and reads the
 *   file again when it is back);
 * - replaced (a new file renamed into place, or re-created): the read fails with `changed`, without
 *   opening the new file. LMDB keeps its reader table in `<file>-lock`, which stays at the same path: an
 *   environment opened on the new file while another thread of this process still has the old one open
 *   re-initialises that table under it (measured with lmdb 3.5: MDB_BAD_RSLOT errors and records that
 *   read as absent, in both environments, until every thread closed them). So the reader first closes
 *   the old file in every worker (`closeFile`, a barrier), and only then do workers open the new one;
 * - not (yet) a complete LMDB file: lmdb 3.5 crashes the whole process when it opens a file that is not an
 *   LMDB environment (SIGSEGV: an empty file, other bytes) or reads one cut short (SIGBUS: a copy still in
 *   progress), measured. So a file's meta pages and length are checked before it is opened
 *   (`lmdbFileProblem`), and a file that shrank under its readers counts as replaced. A complete file
 *   corrupted inside can still crash LMDB; that is beyond what a reader can check cheaply.
 */
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import sharp from 'sharp';
import { open, type Database, type RootDatabase } from 'lmdb';
import { augmentSample, augmentOutputSize, resizeNearest, type AugmentInfo, type AugmentSpec } from './augment.ts';
import { ignoreUnknownLabelIds, unknownLabelIds, type FaultReason, type FaultReport, type UnknownLabelPolicy } from './faults.ts';
import { decodePng, decodeRgb8Png } from './png.ts';
import type { PseudoLabelRecord } from './pseudo-labels.ts';
import { Rng } from './rng.ts';
import { openShardReadOnly, type ShardRecord } from './shards.ts';
import { moveWith, type Movable } from './transfer.ts';
import { pngTruncation } from './png-truncation.ts';
import { libvipsText } from './libvips-text.ts';

export interface ReadTask {
  shard: string;
  key: string;
  spec: AugmentSpec;
  seed: number;
  /** A pseudo-label generation (LMDB path) to take the label from instead of the record's own. */
  pseudo?: string | null;
  /** Label values must be < numClasses or 255. */
  numClasses: number;
  unknownLabels: UnknownLabelPolicy;
  /** Identity (`dev:ino`) of each file as the workers hold it open, per path; absent = none is open. */
  expect: Record<string, string>;
  /** Preallocated output buffers of the right size (moved in), or null to allocate. */
  image: Float32Array | null;
  label: Uint8Array | null;
}

export interface ReadResult {
  key: string;
  width: number;
  height: number;
  image: Float32Array;
  labelWidth: number;
  labelHeight: number;
  /** Train IDs (255 ignore), or null for an unlabelled record. */
  label: Uint8Array | null;
  info: AugmentInfo;
  /** The lent label buffer, returned unused when the record has no label (so the reader can reuse it). */
  spare: Uint8Array | null;
  /** Seconds spent decoding + augmenting (metrics). */
  seconds: number;
  encodedBytes: number;
  /** The sample is usable after a repair (unknown label IDs set to 255); null when nothing was wrong. */
  repaired: FaultReport | null;
}

/** A fault of a read, as data. `changed`: the file was replaced (its new identity); `detail`: the message without file and key. */
export interface ReadFault extends FaultReport {
  detail: string;
  changed?: string;
}

export type ReadReply =
  | { ok: true; sample: ReadResult; opened: Record<string, string> }
  | { ok: false; fault: ReadFault; opened: Record<string, string>; image: Float32Array | null; label: Uint8Array | null };

sharp.concurrency(1);
// libvips caches up to 50 MiB of recent operations per process; decoded inputs are never reused here.
sharp.cache(false);

class Fault extends Error {
  readonly report: ReadFault;

  constructor(reason: FaultReason, file: string, key: string, detail: string, changed?: string) {
    super(detail);
    this.report = {
      reason,
      file,
      key,
      detail,
      message: `${file}: record '${key}': ${detail}`,
      ...(changed === undefined ? {} : { changed }),
    };
  }
}

interface OpenFile {
  id: string;
  /** Bytes when opened: a file that shrinks under LMDB's mapping faults on the next access to the lost pages. */
  size: number;
  root: RootDatabase;
  /** The shard's `records` or the generation's `labels`. */
  db: Database<unknown, string>;
  kind: 'shard' | 'pseudo';
}

const files = new Map<string, OpenFile>();

function identity(path: string): { id: string; size: number } | null {
  const st = statSync(path, { bigint: true, throwIfNoEntry: false });
  return st ? { id: `${st.dev}:${st.ino}`, size: Number(st.size) } : null;
}

const LMDB_MAGIC = 0xbeefc0de;

/**
 * Why `path` cannot be opened safely, or null. LMDB's first two pages are meta pages: after the page
 * header (16 bytes in LMDB 0.9, 24 in lmdb-js's build) the magic number, the version, the map address and
 * size, two database records of 48 bytes (the first's first field is the page size), the last page used
 * and the transaction ID. The newer meta page's last page must lie inside the file.
 */
export function lmdbFileProblem(path: string, size: number): string | null {
  if (size < 1024) return `is not an LMDB file (${size} bytes)`;
  const head = Buffer.alloc(Math.min(size, 2 * 65536));
  const fd = openSync(path, 'r');
  try {
    readSync(fd, head, 0, head.length, 0);
  } finally {
    closeSync(fd);
  }
  const m = [16, 24].find((o) => head.readUInt32LE(o) === LMDB_MAGIC);
  if (m === undefined) return 'is not an LMDB file (no LMDB magic number in its first page)';
  const pageSize = head.readUInt32LE(m + 24);
  if (!(pageSize >= 512 && pageSize <= 65536 && (pageSize & (pageSize - 1)) === 0)) return `is not an LMDB file (page size ${pageSize})`;
  let last = -1;
  let txn = -1n;
  for (const page of [0, pageSize]) {
    if (page + m + 136 > head.length || head.readUInt32LE(page + m) !== LMDB_MAGIC) continue;
    const t = head.readBigUInt64LE(page + m + 128);
    if (t > txn) {
      txn = t;
      last = Number(head.readBigUInt64LE(page + m + 120));
    }
  }
  const needed = (last + 1) * pageSize;
  if (size < needed) return `is cut short (${size} bytes, its last page ends at ${needed}: a copy in progress?)`;
  return null;
}

function drop(path: string): void {
  const f = files.get(path);
  if (!f) return;
  files.delete(path);
  void f.root.close();
}

const WHAT = { shard: 'shard', pseudo: 'pseudo-label generation' } as const;

/** The open file at `path`, checked against its identity on disk and the one the workers are known to hold. */
function acquire(
  path: string,
  kind: 'shard' | 'pseudo',
  key: string,
  expect: string | undefined,
  opened: Record<string, string>,
): OpenFile {
  const now = identity(path);
  const cached = files.get(path);
  if (now === null) {
    drop(path); // let go of the deleted file's pages
    throw new Fault('shard_unavailable', path, key, `${WHAT[kind]} file is missing`);
  }
  const { id, size } = now;
  const held = cached?.id ?? expect;
  if (held !== undefined && held !== id) {
    drop(path);
    throw new Fault(
      'shard_unavailable',
      path,
      key,
      `${WHAT[kind]} file was replaced (inode ${held.split(':')[1]} -> ${id.split(':')[1]})`,
      id,
    );
  }
  if (cached && size < cached.size) {
    drop(path);
    throw new Fault('shard_unavailable', path, key, `${WHAT[kind]} file shrank from ${cached.size} to ${size} bytes`, id);
  }
  if (cached) {
    opened[path] = cached.id;
    // The shard as it is now: lmdb-js keeps a read snapshot until a timer of the event loop resets it,
    // and piscina's workers wait between tasks in Atomics.wait, where no timer runs, so without this a
    // busy worker went on reading the shard as it first saw it: records another process (a user's ingest
    // job) appended since were missing_record while the manifest listed them (seen in the soak).
    cached.root.resetReadTxn();
    return cached;
  }
  if (kind === 'pseudo') {
    // a new generation replaces the old ones: close what is no longer current
    for (const [p, f] of files) if (f.kind === 'pseudo') drop(p);
  }
  const problem = lmdbFileProblem(path, size);
  if (problem) throw new Fault('shard_unavailable', path, key, `${WHAT[kind]} file ${problem}`);
  let root: RootDatabase;
  let db: Database<unknown, string>;
  try {
    if (kind === 'shard') {
      const h = openShardReadOnly(path);
      root = h.root;
      db = h.records as Database<unknown, string>;
    } else {
      root = open({ path, readOnly: true, compression: true, maxDbs: 2 });
      db = root.openDB<unknown, string>({ name: 'labels', encoding: 'msgpack' });
    }
  } catch (err) {
    throw new Fault('shard_unavailable', path, key, `${WHAT[kind]} does not open (${(err as Error).message.split('\n')[0]})`);
  }
  // renamed over between the stat and the open: which file did we get? Close and let the reader decide.
  const after = identity(path);
  if (after?.id !== id) {
    void root.close();
    if (after === null) throw new Fault('shard_unavailable', path, key, `${WHAT[kind]} file is missing`);
    throw new Fault('shard_unavailable', path, key, `${WHAT[kind]} file was replaced while opening`, after.id);
  }
  const f: OpenFile = { id, size, root, db, kind };
  files.set(path, f);
  opened[path] = id;
  return f;
}

function isRecord(v: unknown): v is ShardRecord {
  const r = v as ShardRecord;
  return (
    typeof r === 'object' &&
    r !== null &&
    r.image instanceof Uint8Array &&
    Number.isInteger(r.width) &&
    Number.isInteger(r.height) &&
    (r.label === null || r.label instanceof Uint8Array)
  );
}

/** Checks a label's values: unknown IDs are a fault ('skip') or set to 255 and reported as a repair ('ignore'). */
function checkIds(label: Uint8Array, task: ReadTask, file: string, what: string): { label: Uint8Array; repaired: FaultReport | null } {
  const { pixels, ids } = unknownLabelIds(label, task.numClasses);
  if (pixels === 0) return { label, repaired: null };
  const detail =
    `${what} has ${pixels} pixels with unknown IDs (${ids.join(', ')}${ids.length === 5 ? ', ...' : ''}), ` +
    `expected train IDs 0..${task.numClasses - 1} or 255`;
  if (task.unknownLabels === 'skip') throw new Fault('unknown_label_ids', file, task.key, detail);
  const own = new Uint8Array(label); // the stored bytes may be shared (an LMDB read buffer)
  ignoreUnknownLabelIds(own, task.numClasses);
  const f = new Fault('unknown_label_ids', file, task.key, `${detail}; set to 255`);
  return { label: own, repaired: { reason: f.report.reason, file, key: task.key, message: f.report.message } };
}

async function readSample(task: ReadTask, opened: Record<string, string>): Promise<{ result: ReadResult; buffers: ArrayBufferLike[] }> {
  const t0 = performance.now();
  const { shard: path, key } = task;
  const shard = acquire(path, 'shard', key, task.expect[path], opened);
  let record: unknown;
  try {
    record = shard.db.get(key);
  } catch (err) {
    throw new Fault('corrupt_record', path, key, `stored value does not decode (${(err as Error).message.split('\n')[0]})`);
  }
  if (record === undefined) throw new Fault('missing_record', path, key, 'not in the shard (the manifest lists it there)');
  if (!isRecord(record))
    throw new Fault('corrupt_record', path, key, 'stored value is not a record (expected width, height, image bytes, label)');
  const cut = pngTruncation(record.image);
  if (cut) throw new Fault('corrupt_image', path, key, `image does not decode (${cut})`);
  // 8-bit RGB(A) PNGs without colour management decode here (the same bytes, no trip through libvips'
  // thread pool); anything else, and anything broken, goes to sharp, which also words the error
  let decoded: { data: Uint8Array; info: { width: number; height: number; channels: number } };
  const plain = decodeRgb8Png(record.image, PLAIN_PNG_MAX_PIXELS);
  if (plain) {
    decoded = { data: plain.data, info: { width: plain.width, height: plain.height, channels: 3 } };
  } else {
    try {
      decoded = await sharp(record.image).removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
    } catch (err) {
      throw new Fault('corrupt_image', path, key, `image does not decode (${libvipsText(err)})`);
    }
  }
  const { width, height, channels } = decoded.info;
  if (width !== record.width || height !== record.height || channels !== 3) {
    throw new Fault(
      'wrong_size',
      path,
      key,
      `image decodes to ${width}x${height}x${channels}, the record says ${record.width}x${record.height}x3`,
    );
  }
  let label: Uint8Array | null = null;
  let repaired: FaultReport | null = null;
  if (task.pseudo) {
    const pseudo = acquire(task.pseudo, 'pseudo', key, task.expect[task.pseudo], opened);
    let p: PseudoLabelRecord | undefined;
    try {
      p = pseudo.db.get(key) as PseudoLabelRecord | undefined;
    } catch (err) {
      throw new Fault('corrupt_label', task.pseudo, key, `pseudo-label does not decode (${(err as Error).message.split('\n')[0]})`);
    }
    if (!p) throw new Fault('missing_pseudo_label', task.pseudo, key, 'no pseudo-label in this generation');
    if (!(p.labels instanceof Uint8Array) || p.labels.length !== p.width * p.height) {
      throw new Fault(
        'corrupt_label',
        task.pseudo,
        key,
        `pseudo-label holds ${p.labels?.length ?? 'no'} values for ${p.width}x${p.height}`,
      );
    }
    ({ label, repaired } = checkIds(p.labels, task, task.pseudo, 'pseudo-label'));
    if (p.width !== width || p.height !== height) label = resizeNearest(label, p.width, p.height, width, height);
  } else if (record.label) {
    let png;
    try {
      png = decodePng(record.label, 'label');
    } catch (err) {
      throw new Fault('corrupt_label', path, key, (err as Error).message);
    }
    if (png.channels !== 1 || png.bitDepth !== 8 || png.width !== record.labelWidth || png.height !== record.labelHeight) {
      throw new Fault(
        'corrupt_label',
        path,
        key,
        `label decodes to ${png.width}x${png.height}x${png.channels}@${png.bitDepth} bits, ` +
          `the record says ${record.labelWidth}x${record.labelHeight}x1@8`,
      );
    }
    ({ label, repaired } = checkIds(png.data as Uint8Array, task, path, 'label'));
    if (record.labelWidth !== width || record.labelHeight !== height) {
      // Synscapes: labels at another resolution; bring them to the image's size first (nearest, PIL-style).
      label = resizeNearest(label, record.labelWidth, record.labelHeight, width, height);
    }
  }
  const image = new Uint8Array(decoded.data.buffer, decoded.data.byteOffset, decoded.data.byteLength);
  const size = augmentOutputSize(task.spec, width, height);
  if (!size) throw new Error('read: the augmentation must end in a fixed size (resize or crop): batches need one');
  const [oh, ow] = size;
  const keepLabel = task.spec.resize && task.spec.resizeLabel === false;
  const [lw, lh] = keepLabel ? [width, height] : [ow, oh];
  // Use the lent buffers when they have the right size (the usual case), else allocate.
  const outImage = task.image?.length === oh * ow * 3 ? task.image : new Float32Array(oh * ow * 3);
  const outLabel = label ? (task.label?.length === lw * lh ? task.label : new Uint8Array(lw * lh)) : null;
  const info = augmentSample({ image, label, width, height }, task.spec, new Rng(task.seed), {
    images: outImage,
    labels: outLabel,
    index: 0,
  });
  const result: ReadResult = {
    key,
    width: info.width,
    height: info.height,
    image: outImage,
    labelWidth: info.labelWidth,
    labelHeight: info.labelHeight,
    label: outLabel,
    info,
    spare: !label && task.label ? task.label : null,
    seconds: (performance.now() - t0) / 1000,
    encodedBytes: record.image.byteLength + (record.label?.byteLength ?? 0),
    repaired,
  };
  const buffers: ArrayBufferLike[] = [result.image.buffer];
  if (result.label) buffers.push(result.label.buffer);
  if (result.spare) buffers.push(result.spare.buffer);
  return { result, buffers };
}

/** Largest image decoded without sharp: past 512x256 libvips' own decoder is the faster (src/data/png.ts). */
const PLAIN_PNG_MAX_PIXELS = 512 * 256;

/** The read running now, or the last one: this worker's reads run one after another. */
let previous: Promise<unknown> = Promise.resolve();

/**
 * One read. The reader hands each worker several reads at once (`data.tasksPerWorker`, so that it has
 * work while the main thread is blocked in a training step); they run one at a time, in the order
 * given, so a worker holds one sample's decode buffers at a time, as with one task per worker.
 */
export default function read(task: ReadTask): Promise<Movable<ReadReply>> {
  const mine = previous.then(() => readOne(task));
  previous = mine.catch(() => {});
  return mine;
}

async function readOne(task: ReadTask): Promise<Movable<ReadReply>> {
  const opened: Record<string, string> = {};
  try {
    const { result, buffers } = await readSample(task, opened);
    return moveWith<ReadReply>({ ok: true, sample: result, opened }, buffers);
  } catch (err) {
    const fault =
      err instanceof Fault ? err.report : new Fault('other', task.shard, task.key, (err as Error).message ?? String(err)).report;
    // the lent buffers go back with the fault, so that faults cost no allocation either
    const buffers: ArrayBufferLike[] = [];
    if (task.image) buffers.push(task.image.buffer);
    if (task.label) buffers.push(task.label.buffer);
    return moveWith<ReadReply>({ ok: false, fault, opened, image: task.image, label: task.label }, buffers);
  }
}

export interface CloseTask {
  path: string;
  /** Shared counter of the workers that arrived (an Int32Array on a SharedArrayBuffer). */
  arrived: Int32Array;
  workers: number;
  timeoutMs: number;
}

/**
 * Closes `path` in this worker, then waits until all `workers` did: every worker blocks here, so each
 * of the `workers` tasks the reader submits lands on a different worker. Returns whether all arrived.
 */
export function closeFile(task: CloseTask): boolean {
  drop(task.path);
  Atomics.add(task.arrived, 0, 1);
  Atomics.notify(task.arrived, 0);
  const deadline = performance.now() + task.timeoutMs;
  for (;;) {
    const n = Atomics.load(task.arrived, 0);
    if (n >= task.workers) return true;
    const left = deadline - performance.now();
    if (left <= 0) return false;
    Atomics.wait(task.arrived, 0, n, left);
  }
}

/** The pool's no-op task (src/data/pool.ts `destroyPool`): answered once this module is loaded. */
export { ready } from './pool.ts';

/**
 * The dataset format: a folder with `manifest.json` and LMDB shard files `shard-NNNNN.lmdb`.
 *
 * Each shard is one LMDB environment with two named databases, written in the same transactions:
 * - `records`: key -> { width, height, format, image (the original PNG/JPEG bytes), label (8-bit grey PNG
 *   of train IDs, or null), labelWidth, labelHeight }; decoding happens in the reader workers;
 * - `index`: key -> class bitmask (bit k = train ID k present), so that the manifest's per-class image
 *   counts and the class-balanced sampler's lists can be rebuilt from the shard alone, also after a crash.
 *
 * `manifest.json` is rebuilt from the shards' indexes at the end of every ingest (atomically), and is what
 * readers trust: `count`, `numClasses`, class names, `classImageCounts` (images containing each class),
 * the shard list and `samples` ([key, shard, classMask], what the samplers need).
 */
import { mkdir, open as openFile, readFile, readdir, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { open, type Database, type RootDatabase } from 'lmdb';
import { classNames, type NumClasses } from './labels.ts';

export const SHARD_FORMAT = 'spcl-shards/1';

export interface ShardRecord {
  width: number;
  height: number;
  format: 'png' | 'jpeg';
  image: Uint8Array;
  label: Uint8Array | null;
  labelWidth: number;
  labelHeight: number;
}

export interface ShardInfo {
  dataset: string;
  split: string;
  numClasses: NumClasses;
}

export interface Manifest {
  format: typeof SHARD_FORMAT;
  dataset: string;
  split: string;
  numClasses: NumClasses;
  classNames: string[];
  count: number;
  labelled: number;
  shards: { file: string; count: number }[];
  /** Per train ID: number of images whose label contains it. */
  classImageCounts: number[];
  /** [key, shard index, class bitmask]; bitmask 0 for unlabelled records. */
  samples: [string, number, number][];
  updatedAt: string;
}

export function shardFileName(index: number): string {
  return `shard-${String(index).padStart(5, '0')}.lmdb`;
}

export interface ShardHandle {
  root: RootDatabase;
  records: Database<ShardRecord, string>;
  index: Database<number, string>;
  close(): Promise<void>;
}

/** Opens (creating) a shard for writing. */
export function openShardForWrite(path: string, info: ShardInfo): ShardHandle {
  const root = open({ path, maxDbs: 4, compression: false });
  const meta = root.openDB<ShardInfo, string>({ name: 'meta', encoding: 'msgpack' });
  const existing = meta.get('info');
  if (existing && (existing.numClasses !== info.numClasses || existing.dataset !== info.dataset || existing.split !== info.split)) {
    root.close();
    throw new Error(
      `${path}: holds ${existing.dataset}/${existing.split} with ${existing.numClasses} classes, ` +
        `cannot add ${info.dataset}/${info.split} with ${info.numClasses} classes (use another --out)`,
    );
  }
  if (!existing) meta.putSync('info', info);
  return handle(root);
}

/** Opens a shard read-only (readers, workers). */
export function openShardReadOnly(path: string): ShardHandle {
  return handle(open({ path, maxDbs: 4, readOnly: true }));
}

function handle(root: RootDatabase): ShardHandle {
  return {
    root,
    records: root.openDB<ShardRecord, string>({ name: 'records', encoding: 'msgpack' }),
    index: root.openDB<number, string>({ name: 'index', encoding: 'msgpack' }),
    close: () => root.close(),
  };
}

export function classMask(classes: Iterable<number>): number {
  let m = 0;
  for (const c of classes) if (c < 31) m |= 1 << c;
  return m >>> 0;
}

export function maskClasses(mask: number, numClasses: number): number[] {
  const out: number[] = [];
  for (let k = 0; k < numClasses; k++) if (mask & (1 << k)) out.push(k);
  return out;
}

/** Atomic write: temporary file, fsync, rename, fsync of the directory. */
export async function writeJsonAtomic(path: string, value: unknown, dir: string): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  const f = await openFile(tmp, 'w');
  try {
    await f.writeFile(`${JSON.stringify(value, null, 1)}\n`);
    await f.sync();
  } finally {
    await f.close();
  }
  await rename(tmp, path);
  const d = await openFile(dir, 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

/** Rebuilds `manifest.json` from every shard's index in `dir`. Returns the manifest. */
export async function rebuildManifest(dir: string): Promise<Manifest> {
  await mkdir(dir, { recursive: true });
  const files = (await readdir(dir)).filter((f) => /^shard-\d{5}\.lmdb$/.test(f)).sort();
  let info: ShardInfo | null = null;
  const shards: Manifest['shards'] = [];
  const samples: Manifest['samples'] = [];
  let labelled = 0;
  for (const file of files) {
    const shardIndex = Number(file.slice(6, 11));
    const h = openShardReadOnly(join(dir, file));
    try {
      const meta = h.root.openDB<ShardInfo, string>({ name: 'meta', encoding: 'msgpack' }).get('info');
      if (!meta) continue;
      if (info && (info.numClasses !== meta.numClasses || info.dataset !== meta.dataset || info.split !== meta.split)) {
        throw new Error(
          `${join(dir, file)}: holds ${meta.dataset}/${meta.split} (${meta.numClasses} classes) but other shards ` +
            `hold ${info.dataset}/${info.split} (${info.numClasses} classes)`,
        );
      }
      info = meta;
      let count = 0;
      for (const { key, value } of h.index.getRange()) {
        samples.push([key, shardIndex, value]);
        if (value !== 0) labelled++;
        count++;
      }
      shards.push({ file, count });
    } finally {
      await h.close();
    }
  }
  if (!info) throw new Error(`${dir}: no shard with records (expected ${shardFileName(0)} ...)`);
  samples.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const classImageCounts = new Array<number>(info.numClasses).fill(0);
  for (const [, , mask] of samples) for (const k of maskClasses(mask, info.numClasses)) classImageCounts[k]!++;
  const manifest: Manifest = {
    format: SHARD_FORMAT,
    dataset: info.dataset,
    split: info.split,
    numClasses: info.numClasses,
    classNames: [...classNames(info.numClasses)],
    count: samples.length,
    labelled,
    shards,
    classImageCounts,
    samples,
    updatedAt: new Date().toISOString(),
  };
  await writeJsonAtomic(join(dir, 'manifest.json'), manifest, dir);
  return manifest;
}

/** Reads and checks a dataset folder's manifest; errors name the file and the key. */
export async function readManifest(dir: string): Promise<Manifest> {
  const path = join(dir, 'manifest.json');
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    throw new Error(`${path}: not found; is ${dir} a dataset folder written by pipelines/ingest.ts?`);
  }
  let m: Manifest;
  try {
    m = JSON.parse(text) as Manifest;
  } catch (err) {
    throw new Error(`${path}: invalid JSON (${(err as Error).message})`);
  }
  if (m.format !== SHARD_FORMAT) throw new Error(`${path}: format is ${JSON.stringify(m.format)}, expected "${SHARD_FORMAT}"`);
  if (m.numClasses !== 19 && m.numClasses !== 16) throw new Error(`${path}: numClasses is ${m.numClasses}, expected 19 or 16`);
  if (!Array.isArray(m.samples) || m.samples.length !== m.count) {
    throw new Error(`${path}: samples has ${Array.isArray(m.samples) ? m.samples.length : 'no'} entries, count says ${m.count}`);
  }
  if (!Array.isArray(m.shards) || m.shards.length === 0) throw new Error(`${path}: no shards listed`);
  return m;
}

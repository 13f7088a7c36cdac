/**
 * piscina worker of the training input: opens the LMDB shards itself (read-only, cached per worker),
 * reads a record, decodes it (sharp for the image, our PNG decoder for the train-ID label), applies the
 * phase's augmentation (REFERENCE 6.3, deterministic for the task's seed) and returns the sample. The
 * output buffers travel both ways without copying: the main thread lends preallocated buffers with the
 * task, the worker fills them and moves them back.
 */
import sharp from 'sharp';
import { augmentSample, augmentOutputSize, resizeNearest, type AugmentInfo, type AugmentSpec } from './augment.ts';
import { decodePng } from './png.ts';
import { Rng } from './rng.ts';
import { openShardReadOnly, type ShardHandle } from './shards.ts';
import { moveWith, type Movable } from './transfer.ts';
import { open, type Database } from 'lmdb';
import type { PseudoLabelRecord } from './pseudo-labels.ts';

export interface ReadTask {
  shard: string;
  key: string;
  spec: AugmentSpec;
  seed: number;
  /** A pseudo-label generation (LMDB path) to take the label from instead of the record's own. */
  pseudo?: string | null;
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
}

sharp.concurrency(1);
// libvips caches up to 50 MiB of recent operations per process; decoded inputs are never reused here.
sharp.cache(false);
const shards = new Map<string, ShardHandle>();
const pseudoDbs = new Map<string, Database<PseudoLabelRecord, string>>();

function pseudoOf(path: string): Database<PseudoLabelRecord, string> {
  let db = pseudoDbs.get(path);
  if (!db) {
    // a new generation replaces the old ones: close what is no longer current
    for (const [p, old] of pseudoDbs) {
      void old.close();
      pseudoDbs.delete(p);
    }
    db = open({ path, readOnly: true, compression: true, maxDbs: 2 }).openDB<PseudoLabelRecord, string>({ name: 'labels', encoding: 'msgpack' });
    pseudoDbs.set(path, db);
  }
  return db;
}

function shardOf(path: string): ShardHandle {
  let h = shards.get(path);
  if (!h) {
    h = openShardReadOnly(path);
    shards.set(path, h);
  }
  return h;
}

export default async function read(task: ReadTask): Promise<Movable<ReadResult>> {
  const t0 = performance.now();
  const record = shardOf(task.shard).records.get(task.key);
  if (!record) throw new Error(`${task.shard}: no record '${task.key}'`);
  let decoded;
  try {
    decoded = await sharp(record.image).removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  } catch (err) {
    throw new Error(`${task.shard}: record '${task.key}': image does not decode (${(err as Error).message.split('\n')[0]})`);
  }
  const { width, height, channels } = decoded.info;
  if (width !== record.width || height !== record.height || channels !== 3) {
    throw new Error(`${task.shard}: record '${task.key}': image decodes to ${width}x${height}x${channels}, the record says ${record.width}x${record.height}x3`);
  }
  let label: Uint8Array | null = null;
  if (task.pseudo) {
    const p = pseudoOf(task.pseudo).get(task.key);
    if (!p) throw new Error(`${task.pseudo}: no pseudo-label for '${task.key}'`);
    label = p.width === width && p.height === height ? p.labels : resizeNearest(p.labels, p.width, p.height, width, height);
  } else if (record.label) {
    const png = decodePng(record.label, `${task.shard}: record '${task.key}' label`);
    if (png.channels !== 1 || png.bitDepth !== 8 || png.width !== record.labelWidth || png.height !== record.labelHeight) {
      throw new Error(`${task.shard}: record '${task.key}': label decodes to ${png.width}x${png.height}x${png.channels}@${png.bitDepth} bits, ` +
        `the record says ${record.labelWidth}x${record.labelHeight}x1@8`);
    }
    label = png.data as Uint8Array;
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
  const info = augmentSample({ image, label, width, height }, task.spec, new Rng(task.seed), { images: outImage, labels: outLabel, index: 0 });
  const result: ReadResult = {
    key: task.key, width: info.width, height: info.height, image: outImage,
    labelWidth: info.labelWidth, labelHeight: info.labelHeight, label: outLabel, info,
    spare: !label && task.label ? task.label : null,
    seconds: (performance.now() - t0) / 1000, encodedBytes: record.image.byteLength + (record.label?.byteLength ?? 0),
  };
  const buffers: ArrayBufferLike[] = [result.image.buffer];
  if (result.label) buffers.push(result.label.buffer);
  if (result.spare) buffers.push(result.spare.buffer);
  return moveWith(result, buffers);
}

/**
 * piscina worker of `pipelines/ingest.ts`: reads one image and its label from disk, proves that both
 * decode completely (a truncated file fails here, not during training), maps label IDs to train IDs
 * (REFERENCE 6.2) and returns the record to store: the original image bytes, the label as an 8-bit grey
 * PNG of train IDs, sizes, and the classes present. Bad input comes back as a named problem, never as a
 * thrown error, so one bad file never stops an ingest.
 */
import { readFile } from 'node:fs/promises';
import { workerData } from 'piscina';
import sharp from 'sharp';
import { decodePng, encodePng } from './png.ts';
import type { ShardRecord } from './shards.ts';
import { classMask } from './shards.ts';
import { moveWith, ownBytes, type Movable } from './transfer.ts';

export interface IngestWorkerData {
  /** 65536-entry label ID -> train ID table. */
  lut: Uint8Array;
  /** 65536-entry table, 1 for the IDs the label space defines; others are counted (they map to 255 all the same). */
  known: Uint8Array;
  /** What `known` is, for the message. */
  labelSpace: string;
  /** 'single': labels must have 1 channel (grey or palette); 'first': class ID is channel 0 of many (SYNTHIA). */
  labelChannels: 'single' | 'first';
  /** Label maps may be at another resolution than the image, same aspect ratio (Synscapes). */
  labelMayBeScaled: boolean;
}

export interface IngestTask {
  key: string;
  image: string;
  label: string | null;
}

export type ProblemKind = 'image-unreadable' | 'label-unreadable' | 'label-missing' | 'size-mismatch' | 'label-channels' | 'image-format';

/** A label with IDs its label space does not define: kept (those pixels are 255), counted and named. */
export interface UnknownIds {
  path: string;
  pixels: number;
  /** Up to 5 of them, ascending. */
  ids: number[];
  message: string;
}

export type IngestResult =
  | { ok: true; key: string; record: ShardRecord; mask: number; classes: number[]; unknownIds?: UnknownIds }
  | { ok: false; key: string; kind: ProblemKind; path: string; message: string };

sharp.concurrency(1);
// libvips caches up to 50 MiB of recent operations per process; decoded inputs are never reused here.
sharp.cache(false);
const data = workerData as IngestWorkerData;

async function readImage(
  task: IngestTask,
): Promise<{ bytes: Buffer; width: number; height: number; format: 'png' | 'jpeg' } | IngestResult> {
  const problem = (kind: ProblemKind, message: string): IngestResult => ({
    ok: false,
    key: task.key,
    kind,
    path: task.image,
    message: `${task.image}: ${message}`,
  });
  let bytes: Buffer;
  try {
    bytes = await readFile(task.image);
  } catch (err) {
    return problem('image-unreadable', `cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  try {
    const { info } = await sharp(bytes, { failOn: 'truncated' }).raw().toBuffer({ resolveWithObject: true });
    const meta = await sharp(bytes).metadata();
    if (meta.format !== 'png' && meta.format !== 'jpeg')
      return problem('image-format', `format ${meta.format} is not supported (png or jpeg)`);
    return { bytes, width: info.width, height: info.height, format: meta.format };
  } catch (err) {
    return problem('image-unreadable', `does not decode (${(err as Error).message.split('\n')[0]})`);
  }
}

export default async function ingest(task: IngestTask): Promise<IngestResult | Movable<IngestResult>> {
  const img = await readImage(task);
  if ('ok' in img) return img;
  const record: ShardRecord = {
    width: img.width,
    height: img.height,
    format: img.format,
    image: ownBytes(img.bytes),
    label: null,
    labelWidth: 0,
    labelHeight: 0,
  };
  if (task.label === null) return moveWith({ ok: true, key: task.key, record, mask: 0, classes: [] }, [record.image.buffer]);
  const problem = (kind: ProblemKind, message: string): IngestResult => ({
    ok: false,
    key: task.key,
    kind,
    path: task.label!,
    message: `${task.label}: ${message}`,
  });
  let decoded;
  try {
    decoded = decodePng(await readFile(task.label), task.label);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    return e.code
      ? problem('label-unreadable', `cannot read (${e.code})`)
      : problem('label-unreadable', e.message.replace(`${task.label}: `, ''));
  }
  const { width, height, channels } = decoded;
  if (data.labelChannels === 'single' && channels !== 1) {
    return problem('label-channels', `label has ${channels} channels, expected 1 (grey or palette indices)`);
  }
  if (width !== img.width || height !== img.height) {
    const sameAspect = Math.abs(width / height - img.width / img.height) < 0.01 * (img.width / img.height);
    if (!data.labelMayBeScaled || !sameAspect) {
      return problem('size-mismatch', `label is ${width}x${height} but the image ${task.image} is ${img.width}x${img.height}`);
    }
  }
  const train = new Uint8Array(width * height);
  const present = new Uint8Array(256);
  const src = decoded.data;
  let unknownPixels = 0;
  for (let i = 0; i < train.length; i++) {
    const id = src[i * channels]!;
    const t = data.lut[id]!;
    train[i] = t;
    present[t] = 1;
    unknownPixels += 1 - data.known[id]!;
  }
  let unknownIds: UnknownIds | undefined;
  if (unknownPixels > 0) {
    const ids = new Set<number>();
    for (let i = 0; i < train.length; i++) if (!data.known[src[i * channels]!]) ids.add(src[i * channels]!);
    const shown = [...ids].sort((a, b) => a - b).slice(0, 5);
    unknownIds = {
      path: task.label,
      pixels: unknownPixels,
      ids: shown,
      message:
        `${task.label}: ${unknownPixels} pixels have IDs outside the ${data.labelSpace} (${shown.join(', ')}${ids.size > 5 ? ', ...' : ''}); ` +
        'they become 255 (ignored), the record is kept',
    };
  }
  const classes: number[] = [];
  for (let k = 0; k < 255; k++) if (present[k]) classes.push(k);
  record.label = ownBytes(encodePng({ width, height, channels: 1, bitDepth: 8, data: train }));
  record.labelWidth = width;
  record.labelHeight = height;
  return moveWith({ ok: true, key: task.key, record, mask: classMask(classes), classes, unknownIds }, [
    record.image.buffer,
    record.label.buffer,
  ]);
}

/** The pool's no-op task (src/data/pool.ts `destroyPool`): answered once this module is loaded. */
export { ready } from './pool.ts';

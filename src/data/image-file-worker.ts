/**
 * piscina worker of `pipelines/segment.ts` (through `ImageFilePool`, image-files.ts): the two per-image
 * jobs that do not need the model.
 * - `decode` (the default task): reads one image file, decodes it with sharp exactly as the shard reader
 *   decodes an ingested image (read-worker.ts: alpha removed, sRGB, 8 bits), and resizes + normalises it
 *   to the model's input with the evaluation transform (`augmentSample` with `{ resize }`: PIL bicubic,
 *   ImageNet mean/std, REFERENCE 6.3/7), so a file gives the model the same input as its ingested record
 *   gives `pipelines/evaluate.ts`. The input buffer is lent by the main thread and moved back filled; the
 *   decoded RGB (for the overlay) moves along with it.
 * - `write`: one image's outputs: the label map (train IDs through a lookup table, 8-bit grey PNG), the
 *   overlay (palette blended over the image) and the confidence map, each written to a temporary name
 *   and renamed into place (`writeFileReplacing`: an interrupted run leaves no half-written PNG).
 *
 * A file that cannot be used comes back as a fault with its reason (returned, not thrown: a thrown error
 * reaches the main thread as a bare message, and the lent buffer would be lost with it).
 */
import { readFile } from 'node:fs/promises';
import sharp from 'sharp';
import { writeFileReplacing } from '../io/atomic.ts';
import { augmentSample } from './augment.ts';
import type { NumClasses } from './labels.ts';
import { overlayColours, paletteOf } from './palette.ts';
import { encodePng } from './png.ts';
import { Rng } from './rng.ts';
import { moveWith, type Movable } from './transfer.ts';
import { pngTruncation } from './png-truncation.ts';
import { libvipsText } from './libvips-text.ts';

/**
 * Why an image file is skipped:
 * - `unreadable`: the file cannot be read (permissions, vanished, a folder);
 * - `not_an_image`: the bytes are no image format at all (a text file named .png);
 * - `unsupported_format`: an image, but not PNG or JPEG;
 * - `corrupt_image`: PNG/JPEG whose pixels do not decode completely (truncated, damaged).
 */
export type ImageFaultReason = 'unreadable' | 'not_an_image' | 'unsupported_format' | 'corrupt_image';

export interface DecodeTask {
  path: string;
  /** Model input size [h, w]. */
  size: readonly [number, number];
  /** Send the decoded RGB back (for the overlay). */
  keepRgb: boolean;
  /** A lent buffer of h x w x 3 floats (moved in), or null to allocate. */
  input: Float32Array | null;
}

export interface DecodedImage {
  path: string;
  /** The file's own size. */
  width: number;
  height: number;
  /** Normalised model input, size[0] x size[1] x 3 (HWC). */
  input: Float32Array;
  /** The decoded pixels, width x height x 3, when asked for. */
  rgb: Uint8Array | null;
  /** Seconds spent reading, decoding and resizing. */
  seconds: number;
}

export type DecodeReply =
  | { ok: true; image: DecodedImage }
  | { ok: false; reason: ImageFaultReason; message: string; input: Float32Array | null };

export interface WriteTask {
  width: number;
  height: number;
  numClasses: NumClasses;
  /** Predicted train IDs, width x height. */
  trainIds: Uint8Array;
  /** 256 entries: train ID -> the ID written to the label PNG. */
  labelLut: Uint8Array;
  /** Max softmax probability x 255 per pixel, or null for no confidence map. */
  confidence: Uint8Array | null;
  /** The image's pixels, or null for no overlay. */
  rgb: Uint8Array | null;
  alpha: number;
  files: { label: string; overlay: string | null; confidence: string | null };
}

sharp.concurrency(1);
// libvips caches up to 50 MiB of recent operations per process; decoded inputs are never reused here.
sharp.cache(false);

async function decodeImage(task: DecodeTask): Promise<DecodeReply> {
  const t0 = performance.now();
  const fault = (reason: ImageFaultReason, what: string): DecodeReply => ({
    ok: false,
    reason,
    message: `${task.path}: ${what}`,
    input: task.input,
  });
  let bytes: Buffer;
  try {
    bytes = await readFile(task.path);
  } catch (err) {
    return fault('unreadable', `cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  let format: string | undefined;
  try {
    format = (await sharp(bytes).metadata()).format;
  } catch (err) {
    return fault('not_an_image', `not an image (${libvipsText(err)})`);
  }
  if (format !== 'png' && format !== 'jpeg') return fault('unsupported_format', `format ${format} is not supported (PNG or JPEG)`);
  const cut = pngTruncation(bytes);
  if (cut) return fault('corrupt_image', `PNG does not decode (${cut})`);
  let decoded;
  try {
    // the shard reader's decode (read-worker.ts), so that a file and its ingested record give the same pixels
    decoded = await sharp(bytes, { failOn: 'truncated' }).removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  } catch (err) {
    return fault('corrupt_image', `${format.toUpperCase()} does not decode (truncated or damaged: ${libvipsText(err)})`);
  }
  const { width, height, channels } = decoded.info;
  if (channels !== 3 || decoded.data.length !== width * height * 3)
    return fault('unsupported_format', `decodes to ${width}x${height}x${channels}, expected 3 channels of 8 bits`);
  const [h, w] = task.size;
  const input = task.input?.length === h * w * 3 ? task.input : new Float32Array(h * w * 3);
  const rgb = new Uint8Array(decoded.data.buffer, decoded.data.byteOffset, decoded.data.byteLength);
  augmentSample({ image: rgb, label: null, width, height }, { resize: task.size, resizeLabel: false }, new Rng(0), {
    images: input,
    index: 0,
  });
  // sharp's buffer is external memory, which cannot be moved to another thread: the overlay gets a copy
  const keep = task.keepRgb ? new Uint8Array(rgb) : null;
  return { ok: true, image: { path: task.path, width, height, input, rgb: keep, seconds: (performance.now() - t0) / 1000 } };
}

export default async function decode(task: DecodeTask): Promise<Movable<DecodeReply>> {
  const reply = await decodeImage(task);
  const buffers: ArrayBufferLike[] = [];
  if (reply.ok) {
    buffers.push(reply.image.input.buffer);
    if (reply.image.rgb) buffers.push(reply.image.rgb.buffer);
  } else if (reply.input) {
    buffers.push(reply.input.buffer); // the lent buffer goes back with the fault
  }
  return moveWith(reply, buffers);
}

const palettes = new Map<number, Uint8Array>();

export async function write(task: WriteTask): Promise<void> {
  const { width, height, trainIds } = task;
  const ids = new Uint8Array(trainIds.length);
  for (let i = 0; i < ids.length; i++) ids[i] = task.labelLut[trainIds[i]!]!;
  const jobs = [writeFileReplacing(task.files.label, encodePng({ width, height, channels: 1, bitDepth: 8, data: ids }), 'label map')];
  if (task.files.confidence && task.confidence)
    jobs.push(
      writeFileReplacing(
        task.files.confidence,
        encodePng({ width, height, channels: 1, bitDepth: 8, data: task.confidence }),
        'confidence map',
      ),
    );
  if (task.files.overlay && task.rgb) {
    let palette = palettes.get(task.numClasses);
    if (!palette) palettes.set(task.numClasses, (palette = paletteOf(task.numClasses)));
    const blended = overlayColours(task.rgb, trainIds, palette, task.numClasses, task.alpha);
    const png = await sharp(blended, { raw: { width, height, channels: 3 } })
      .png()
      .toBuffer();
    jobs.push(writeFileReplacing(task.files.overlay, png, 'overlay'));
  }
  await Promise.all(jobs);
}

/** The pool's no-op task (src/data/pool.ts `destroyPool`): answered once this module is loaded. */
export { ready } from './pool.ts';

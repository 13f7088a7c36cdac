/**
 * Target-val previews for report.html: at the end of each training phase the first `PREVIEW_IMAGES`
 * images of the target validation set go through the model exactly as the evaluation sees them (the
 * evaluation spec, then stages/evaluate.ts: logits upsampled to the label, argmax), and their input, ground
 * truth and prediction (Cityscapes class colours, src/data/palette.ts) are written as small PNGs to
 * `<run>/report-data/previews` (src/observe/report-data.ts names the files). Rendered when the phase ends,
 * so the report does not need the phase's checkpoint, which a later phase may prune.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { lastValueFrom, tap, type Observable } from 'rxjs';
import sharp from 'sharp';
import { IMAGENET_MEAN, IMAGENET_STD } from '../data/augment.ts';
import type { NumClasses } from '../data/labels.ts';
import { colourise, paletteOf } from '../data/palette.ts';
import { Credits } from '../graph/flow.ts';
import { removeStaleTemporaries, writeFileAtomic, writeJsonAtomic } from '../io/atomic.ts';
import { previewFile, reportDataPaths, type PreviewIndex } from '../observe/report-data.ts';
import type { SegModel } from '../ops/model/deeplab.ts';
import type { Batch } from '../stages/collate.ts';
import { evaluate } from '../stages/evaluate.ts';
import { feedBatches } from '../stages/feed-batches.ts';
import { inOrder } from '../stages/read-shards.ts';
import type { RunContext } from './context.ts';
import { STREAMS } from './streams.ts';
import { specs } from './trainer.ts';

/** Target-val images previewed (the first ones, in key order). */
export const PREVIEW_IMAGES = 4;
/** Widest preview in pixels (narrower labels keep their size: no upscaling). */
export const PREVIEW_WIDTH = 320;

export interface PreviewImage {
  key: string;
  /** The model's input as RGB bytes (normalisation undone), at the evaluation size. */
  input: { width: number; height: number; rgb: Uint8Array };
  /** Train IDs at the label's resolution (255 = ignore). */
  truth: Uint8Array;
  prediction: Uint8Array;
  labelWidth: number;
  labelHeight: number;
}

/** RGB bytes of a normalised NHWC sample (REFERENCE 6.3's Normalize undone), sample `i` of `images`. */
export function denormalize(images: Float32Array, i: number, width: number, height: number): Uint8Array {
  const n = width * height * 3;
  const out = new Uint8Array(n);
  for (let p = 0; p < n; p++) {
    const c = p % 3;
    out[p] = Math.round(Math.min(255, Math.max(0, (images[i * n + p]! * IMAGENET_STD[c]! + IMAGENET_MEAN[c]!) * 255)));
  }
  return out;
}

/** The previews of a pass over `batches` (labelled): one per image, in order; the batches are released. */
export async function previewImages(batches: Observable<Batch>, model: SegModel, numClasses: number): Promise<PreviewImage[]> {
  const out: PreviewImage[] = [];
  const seen = new Map<string, Omit<PreviewImage, 'prediction'>>();
  await lastValueFrom(
    batches.pipe(
      tap((b) => {
        if (!b.labels) throw new Error(`previews: batch (${b.keys[0]}...) has no labels`);
        const lpx = b.labelWidth * b.labelHeight;
        b.keys.forEach((key, i) =>
          seen.set(key, {
            key,
            input: { width: b.width, height: b.height, rgb: denormalize(b.images, i, b.width, b.height) },
            truth: Uint8Array.from(b.labels!.subarray(i * lpx, (i + 1) * lpx)),
            labelWidth: b.labelWidth,
            labelHeight: b.labelHeight,
          }),
        );
      }),
      evaluate({
        model,
        numClasses,
        release: (b) => b.release(),
        onPredictions: (keys, pred, h, w) =>
          keys.forEach((key, i) => out.push({ ...seen.get(key)!, prediction: Uint8Array.from(pred.subarray(i * h * w, (i + 1) * h * w)) })),
      }),
    ),
    { defaultValue: null },
  );
  return out;
}

/** The preview size of a `width` x `height` label: at most PREVIEW_WIDTH wide, same aspect. */
export function previewSize(width: number, height: number): [number, number] {
  const w = Math.min(PREVIEW_WIDTH, width);
  return [w, Math.max(1, Math.round((height * w) / width))];
}

/**
 * RGB of a train-ID map in the label space of `numClasses` (19: Cityscapes colours; 16: each SYNTHIA
 * class in its Cityscapes class's colour, `paletteOf`); IDs without a class black.
 */
export function classColours(ids: ArrayLike<number>, numClasses: number): Uint8Array {
  if (numClasses !== 16 && numClasses !== 19) return colourise(ids);
  const palette = paletteOf(numClasses as NumClasses);
  const out = new Uint8Array(ids.length * 3);
  for (let i = 0; i < ids.length; i++) {
    const k = ids[i]!;
    if (k < numClasses) out.set(palette.subarray(3 * k, 3 * k + 3), 3 * i);
  }
  return out;
}

/** PNGs of a preview at the preview size: input (smooth resize), ground truth and prediction (nearest: class colours stay pure). */
export async function previewPngs(p: PreviewImage, numClasses: number): Promise<{ input: Buffer; truth: Buffer; prediction: Buffer }> {
  const [w, h] = previewSize(p.labelWidth, p.labelHeight);
  const png = (rgb: Uint8Array, width: number, height: number, kernel: 'nearest' | 'lanczos3') =>
    sharp(rgb, { raw: { width, height, channels: 3 } })
      .resize(w, h, { fit: 'fill', kernel })
      .png()
      .toBuffer();
  const [input, truth, prediction] = await Promise.all([
    png(p.input.rgb, p.input.width, p.input.height, 'lanczos3'),
    png(classColours(p.truth, numClasses), p.labelWidth, p.labelHeight, 'nearest'),
    png(classColours(p.prediction, numClasses), p.labelWidth, p.labelHeight, 'nearest'),
  ]);
  return { input, truth, prediction };
}

/**
 * Writes the previews of `phase` (module comment) and adds the phase to the index. Best effort: the
 * report is a by-product of the run, so a failure (a full disk) is logged, never thrown. No-op without
 * a target validation set.
 */
export async function writePreviews(ctx: RunContext, phase: string): Promise<void> {
  const dataset = ctx.data.targetVal;
  if (!dataset) return;
  const paths = reportDataPaths(ctx.dirs.run);
  try {
    const keys = dataset.keys.slice(0, PREVIEW_IMAGES);
    const images = await previewImages(
      feedBatches({
        dataset,
        sampler: inOrder(keys),
        reader: ctx.reader,
        spec: specs(ctx).evaluation,
        credits: new Credits(Math.max(1, keys.length)),
        batchSize: keys.length,
        seed: ctx.cfg.seed,
        stream: STREAMS.evaluation,
        count: keys.length,
      }),
      ctx.model,
      ctx.cfg.data.numClasses,
    );
    await mkdir(paths.previews, { recursive: true });
    await removeStaleTemporaries(paths.previews); // what a killed writer left
    for (const [i, image] of images.entries()) {
      const png = await previewPngs(image, ctx.cfg.data.numClasses);
      await writeFileAtomic(join(paths.previews, previewFile(i, { input: true })), [png.input], { what: 'preview' });
      await writeFileAtomic(join(paths.previews, previewFile(i, { truth: true })), [png.truth], { what: 'preview' });
      await writeFileAtomic(join(paths.previews, previewFile(i, { phase })), [png.prediction], { what: 'preview' });
    }
    // the phases already previewed stay when the images are the same ones (a resumed run)
    const previous = await readFile(paths.previewIndex, 'utf8').then(
      (t) => JSON.parse(t) as PreviewIndex,
      () => null,
    );
    const imageKeys = images.map((p) => p.key);
    const same = previous !== null && JSON.stringify(previous.keys) === JSON.stringify(imageKeys);
    const phases = [...(same ? previous.phases.filter((p) => p !== phase) : []), phase];
    await writeJsonAtomic(paths.previewIndex, { keys: imageKeys, phases } satisfies PreviewIndex, { what: 'preview index' });
  } catch (err) {
    ctx.events.log(`${phase}: previews for report.html not written: ${(err as Error).message}`);
  }
}

/**
 * Segment-images stage: a user's image files in, one label map (+ overlay, + confidence map) per image
 * out, and a summary at the end. The model pass is evaluation's (REFERENCE 7, src/stages/evaluate.ts):
 * each image resized to the input size, batches of `batchSize`, logits upsampled (bilinear,
 * align_corners) to the image's own size, argmax; so a file's label map equals evaluate's prediction for
 * the same image ingested as a record, pixel for pixel.
 *
 * The flow: files -> decode (worker pool, skip-or-go-on) -> batch -> model -> write (worker pool). All
 * of it runs on one `Credits` pool: at most `inFlight` images exist between the file list and the
 * written PNGs, whatever the number or size of the files. A file that cannot be used is skipped with its
 * reason (`onSkip`) and counted; a failed write (a full disk) fails the flow.
 */
import * as tf from '@tensorflow/tfjs';
import { join } from 'node:path';
import { bufferCount, concatMap, from, of, tap, type Observable } from 'rxjs';
import { Credits, END, pullSource, reduceItems, stage, type StageError } from '../graph/flow.ts';
import type { DecodedImage, ImageFile, ImageFilePool } from '../data/image-files.ts';
import type { NumClasses } from '../data/labels.ts';
import type { SegModel } from '../ops/model/deeplab.ts';

export const DECODE_IMAGE = 'decode-image';
export const WRITE_OUTPUTS = 'write-outputs';

/** What is written per image, under `dir`: labels/STEM.png, overlay/STEM.png, confidence/STEM.png. */
export interface SegmentOutputs {
  dir: string;
  numClasses: NumClasses;
  /** 256 entries: train ID -> the ID the label PNG holds (`trainToCityscapesIds`, or the identity). */
  labelLut: Uint8Array;
  overlay: boolean;
  /** Palette opacity of the overlay. */
  alpha: number;
  confidence: boolean;
}

export interface SegmentImagesOptions {
  files: readonly ImageFile[];
  pool: ImageFilePool;
  model: SegModel;
  /** Model input size [h, w] (a checkpoint's `size.eval`). */
  size: readonly [number, number];
  batchSize: number;
  outputs: SegmentOutputs;
  /** Images between the file list and their written outputs. Default: 2 batches, at least batch + 2 per worker. */
  inFlight?: number;
  /** A file skipped: `error.reason` is an `ImageFaultReason`, the message names the file. */
  onSkip?: (error: StageError) => void;
  /** One file finished: its outputs written, or skipped. */
  onFinished?: (outcome: 'written' | 'skipped') => void;
}

export interface SegmentSummary {
  listed: number;
  written: number;
  /** Skipped files per reason. */
  skipped: Record<string, number>;
  /** Most images in flight at once (the memory bound at work). */
  peakInFlight: number;
}

/** One image's prediction, ready for the writer. */
interface Prediction {
  file: ImageFile;
  image: DecodedImage;
  trainIds: Uint8Array;
  confidence: Uint8Array | null;
}

/**
 * The model on one batch: inputs stacked (their buffers go back to the pool), forward, then per image
 * logits upsampled to its own size, argmax (and the max softmax probability x 255, rounded).
 */
function predict(batch: [ImageFile, DecodedImage][], opts: SegmentImagesOptions): Prediction[] {
  const [h, w] = opts.size;
  const px = h * w * 3;
  const x = new Float32Array(batch.length * px);
  batch.forEach(([, image], i) => {
    x.set(image.input, i * px);
    opts.pool.recycle(image.input);
  });
  const out: Prediction[] = [];
  tf.tidy(() => {
    const { logits } = opts.model.forward(tf.tensor4d(x, [batch.length, h, w, 3]));
    batch.forEach(([file, image], i) => {
      const up = tf.image.resizeBilinear(logits.slice([i, 0, 0, 0], [1, -1, -1, -1]), [image.height, image.width], true);
      const trainIds = new Uint8Array(up.argMax(-1).dataSync());
      const confidence = opts.outputs.confidence ? new Uint8Array(tf.softmax(up).max(-1).mul(255).round().dataSync()) : null;
      out.push({ file, image, trainIds, confidence });
    });
  });
  return out;
}

export function segmentImages(opts: SegmentImagesOptions): Observable<SegmentSummary> {
  const { pool, outputs, files } = opts;
  const threads = pool.threads;
  const credits = new Credits(opts.inFlight ?? Math.max(2 * opts.batchSize, opts.batchSize + 2 * threads));
  if (credits.capacity < opts.batchSize)
    throw new Error(`segmentImages: inFlight (${credits.capacity}) must hold a batch (${opts.batchSize})`);
  const skipped: Record<string, number> = {};
  let written = 0;
  let next = 0;
  const decode = stage(
    DECODE_IMAGE,
    async (file: ImageFile): Promise<[ImageFile, DecodedImage]> => [file, await pool.decode(file.path, opts.size, outputs.overlay)],
    {
      concurrency: Math.max(2, 2 * threads),
      onError: 'skip',
      credits,
      keyOf: (file) => file.stem,
      onSkip: (e) => {
        skipped[e.reason] = (skipped[e.reason] ?? 0) + 1;
        opts.onSkip?.(e);
        opts.onFinished?.('skipped');
      },
    },
  );
  const write = stage(
    WRITE_OUTPUTS,
    async (p: Prediction): Promise<void> => {
      const at = (kind: string) => join(outputs.dir, kind, `${p.file.stem}.png`);
      await pool.write({
        width: p.image.width,
        height: p.image.height,
        numClasses: outputs.numClasses,
        trainIds: p.trainIds,
        labelLut: outputs.labelLut,
        confidence: p.confidence,
        rgb: p.image.rgb,
        alpha: outputs.alpha,
        files: {
          label: at('labels'),
          overlay: outputs.overlay ? at('overlay') : null,
          confidence: outputs.confidence ? at('confidence') : null,
        },
      });
    },
    { concurrency: threads, ordered: false, keyOf: (p) => p.file.stem },
  );
  return pullSource(credits, () => of(next < files.length ? files[next++]! : END)).pipe(
    decode,
    bufferCount(opts.batchSize),
    concatMap((batch) => from(predict(batch, opts))),
    write,
    tap(() => {
      written++;
      credits.release();
      opts.onFinished?.('written');
    }),
    reduceItems(
      () => {},
      () => ({ listed: files.length, written, skipped, peakInFlight: credits.peak }),
    ),
  );
}

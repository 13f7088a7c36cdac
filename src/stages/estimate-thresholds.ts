/**
 * Threshold stage (REFERENCE 5): one model pass over the target set in eval mode. Per batch, logits are
 * upsampled (bilinear, align_corners) to the input size and turned into softmax probabilities on the
 * device; the per-class confidence histograms take them (only K x bins counts leave the device), and each
 * pixel's argmax and confidence (16-bit) go to a scratch LMDB, so that the pseudo-label writer needs no
 * second model pass. Emits the per-class thresholds (upper median, capped) at the end of the pass.
 *
 * The scratch LMDB is deleted before the pass (a killed pass may have left part of one) and closed
 * however the pass ends; a failed write (full disk) names the file and the free space.
 */
import { rm } from 'node:fs/promises';
import * as tf from '@tensorflow/tfjs';
import { open, type RootDatabase } from 'lmdb';
import { defer, finalize, from, switchMap, type OperatorFunction } from 'rxjs';
import { reduceItems } from '../graph/flow.ts';
import { describeWriteFailureSync } from '../io/atomic.ts';
import { crashPoint } from '../io/crash-points.ts';
import type { SegModel } from '../ops/model/deeplab.ts';
import { ConfidenceHistogram } from '../ops/thresholds.ts';
import { batchTensors, type Batch } from './collate.ts';

export interface ScratchPrediction {
  width: number;
  height: number;
  /** argmax class per pixel */
  pred: Uint8Array;
  /** max softmax probability per pixel x 65535, as the bytes of a Uint16Array (msgpack mangles Uint16Arrays) */
  conf: Uint8Array;
}

/** The confidences of a stored prediction (copied into an aligned buffer). */
export function scratchConfidence(p: ScratchPrediction): Uint16Array {
  return new Uint16Array(new Uint8Array(p.conf).buffer);
}

export interface ThresholdResult {
  thresholds: number[];
  /** Pixels predicted per class. */
  counts: number[];
  images: number;
  scratch: string;
}

export interface EstimateThresholdsOptions {
  model: SegModel;
  numClasses: number;
  bins: number;
  cap: number;
  /** Scratch LMDB path for the per-pixel predictions (deleted first, then written). */
  scratch: string;
  release: (batch: Batch) => void;
}

export function estimateThresholds(opts: EstimateThresholdsOptions): OperatorFunction<Batch, ThresholdResult> {
  return (source) =>
    from(removeScratch(opts.scratch)).pipe(
      switchMap(() =>
        defer(() => {
          const hist = new ConfidenceHistogram(opts.numClasses, { bins: opts.bins });
          const db: RootDatabase<ScratchPrediction, string> = open<ScratchPrediction, string>({
            path: opts.scratch,
            compression: true,
            encoding: 'msgpack',
          });
          let images = 0;
          let closed = false;
          return source.pipe(
            reduceItems(
              (batch: Batch) => {
                const [predT, confT] = tf.tidy(() => {
                  const { images: x } = batchTensors(batch);
                  const { logits } = opts.model.forward(x);
                  const probs = tf.softmax(tf.image.resizeBilinear(logits, [batch.height, batch.width], true)) as tf.Tensor4D;
                  const [pred, conf] = [probs.argMax(-1), probs.max(-1)];
                  hist.addTop(conf, pred);
                  return [pred, conf];
                });
                // read outside tf.tidy: a typed array returned from tidy is walked element by element as a
                // possible tensor container (a third of this pass's time at 256x512)
                const pred = predT!.dataSync();
                const conf = confT!.dataSync();
                tf.dispose([predT!, confT!]);
                const px = batch.height * batch.width;
                // one synchronous transaction per batch: a full disk throws here (src/io/atomic.ts says why not async)
                try {
                  db.transactionSync(() =>
                    batch.keys.forEach((key, i) => {
                      const p = new Uint8Array(px);
                      const c = new Uint16Array(px);
                      for (let j = 0; j < px; j++) {
                        p[j] = pred[i * px + j]!;
                        c[j] = Math.round(conf[i * px + j]! * 65535);
                      }
                      db.putSync(key, { width: batch.width, height: batch.height, pred: p, conf: new Uint8Array(c.buffer) });
                    }),
                  );
                } catch (err) {
                  throw describeWriteFailureSync('threshold pass scratch', opts.scratch, err);
                }
                images += batch.n;
                crashPoint('thresholds');
              },
              async () => {
                closed = true;
                await db.close();
                return { thresholds: hist.thresholds({ cap: opts.cap }), counts: hist.counts(), images, scratch: opts.scratch };
              },
              opts.release,
            ),
            finalize(() => {
              // an aborted or failed pass: close, and give the space back (the next pass starts afresh anyway)
              if (closed) return;
              void db
                .close()
                .catch(() => undefined)
                .then(() => removeScratch(opts.scratch))
                .catch(() => undefined);
            }),
          );
        }),
      ),
    );
}

async function removeScratch(path: string): Promise<void> {
  await rm(path, { force: true });
  await rm(`${path}-lock`, { force: true });
}

/**
 * Evaluation stage (REFERENCE 7): single scale, no flip; logits upsampled (bilinear, align_corners) to
 * the label's native size, argmax, confusion matrix accumulated on the device over the whole set. Emits
 * mIoU, per-class IoU, tail-class mIoU (and the 13-class mIoU* for 16 classes) at the end of the pass.
 */
import * as tf from '@tensorflow/tfjs';
import { Observable, type OperatorFunction } from 'rxjs';
import { ConfusionMatrix } from '../ops/metrics.ts';
import type { SegModel } from '../ops/model/deeplab.ts';
import type { Batch } from './collate.ts';
import { batchTensors } from './update-prototypes.ts';

export interface EvalReport {
  miou: number;
  classIoU: number[];
  tailMiou: number | null;
  miou13: number | null;
  pixelAccuracy: number;
  images: number;
}

export interface EvaluateOptions {
  model: SegModel;
  numClasses: number;
  release: (batch: Batch) => void;
}

export function evaluate(opts: EvaluateOptions): OperatorFunction<Batch, EvalReport> {
  return (source) =>
    new Observable<EvalReport>((subscriber) => {
      const cm = new ConfusionMatrix(opts.numClasses);
      let images = 0;
      const sub = source.subscribe({
        next(batch) {
          try {
            tf.tidy(() => {
              const { images: x, labels } = batchTensors(batch);
              if (!labels) throw new Error(`evaluate: batch (${batch.keys[0]}...) has no labels`);
              const { logits } = opts.model.forward(x);
              const pred = tf.image.resizeBilinear(logits, [batch.labelHeight, batch.labelWidth], true).argMax(-1);
              cm.add(pred, labels);
            });
            images += batch.n;
          } catch (err) {
            subscriber.error(err);
          } finally {
            opts.release(batch);
          }
        },
        error: (e) => subscriber.error(e),
        complete() {
          subscriber.next({
            miou: cm.miou(), classIoU: cm.iou(), images, pixelAccuracy: cm.pixelAccuracy(),
            tailMiou: opts.numClasses === 19 ? cm.tailMiou() : null,
            miou13: opts.numClasses === 16 ? cm.miou13() : null,
          });
          subscriber.complete();
        },
      });
      return () => sub.unsubscribe();
    });
}

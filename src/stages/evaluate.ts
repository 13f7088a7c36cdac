/**
 * Evaluation stage (REFERENCE 7): single scale, no flip; logits upsampled (bilinear, align_corners) to
 * the label's native size, argmax, confusion matrix accumulated on the device over the whole set. Emits
 * mIoU, per-class IoU, tail-class mIoU (and the 13-class mIoU* for 16 classes) at the end of the pass.
 */
import * as tf from '@tensorflow/tfjs';
import { defer, type OperatorFunction } from 'rxjs';
import { reduceItems } from '../graph/flow.ts';
import { crashPoint } from '../io/crash-points.ts';
import { downsampleLabels } from '../ops/masks.ts';
import { ConfusionMatrix, classCenterDistance } from '../ops/metrics.ts';
import type { SegModel } from '../ops/model/deeplab.ts';
import { batchTensors, type Batch } from './collate.ts';

export interface EvalReport {
  miou: number;
  classIoU: number[];
  tailMiou: number | null;
  miou13: number | null;
  pixelAccuracy: number;
  images: number;
  /** Class-centre distance per class on the first `ccdImages` images (REFERENCE 9), or null. */
  ccd: number[] | null;
}

export interface EvaluateOptions {
  model: SegModel;
  numClasses: number;
  release: (batch: Batch) => void;
  /** Receives each batch's predictions (train IDs at label resolution), e.g. to write colour PNGs. */
  onPredictions?: (keys: string[], pred: Int32Array, height: number, width: number) => void;
  /**
   * CCD over the encoder features of the first N images, labels nearest-downsampled to the feature
   * grid (ground truth; features as the model outputs them, not normalised). 0 = off.
   */
  ccdImages?: number;
}

export function evaluate(opts: EvaluateOptions): OperatorFunction<Batch, EvalReport> {
  return (source) =>
    defer(() => {
      const cm = new ConfusionMatrix(opts.numClasses);
      let images = 0;
      const ccdFeatures: tf.Tensor2D[] = [];
      const ccdLabels: tf.Tensor1D[] = [];
      let ccdTaken = 0;
      return source.pipe(
        reduceItems(
          (batch: Batch) => {
            tf.tidy(() => {
              const { images: x, labels } = batchTensors(batch);
              if (!labels) throw new Error(`evaluate: batch (${batch.keys[0]}...) has no labels`);
              const { features, logits } = opts.model.forward(x);
              const pred = tf.image.resizeBilinear(logits, [batch.labelHeight, batch.labelWidth], true).argMax(-1);
              cm.add(pred, labels);
              if (opts.onPredictions) opts.onPredictions(batch.keys, pred.dataSync() as Int32Array, batch.labelHeight, batch.labelWidth);
              const take = Math.min(batch.n, (opts.ccdImages ?? 0) - ccdTaken);
              if (take > 0) {
                const [, h, w, c] = features.shape;
                const f = features.slice([0, 0, 0, 0], [take, h, w, c]);
                const l = downsampleLabels(labels.slice([0, 0, 0], [take, batch.labelHeight, batch.labelWidth]) as tf.Tensor3D, [h, w]);
                ccdFeatures.push(tf.keep(f.reshape([-1, c]) as tf.Tensor2D));
                ccdLabels.push(tf.keep(l.flatten() as tf.Tensor1D));
                ccdTaken += take;
              }
            });
            images += batch.n;
            crashPoint('evaluate');
          },
          () => {
            let ccd: number[] | null = null;
            if (ccdFeatures.length) {
              ccd = tf.tidy(() => classCenterDistance(tf.concat(ccdFeatures, 0), tf.concat(ccdLabels, 0), opts.numClasses));
              tf.dispose([...ccdFeatures, ...ccdLabels]);
            }
            return {
              miou: cm.miou(),
              classIoU: cm.iou(),
              images,
              pixelAccuracy: cm.pixelAccuracy(),
              ccd,
              tailMiou: opts.numClasses === 19 ? cm.tailMiou() : null,
              miou13: opts.numClasses === 16 ? cm.miou13() : null,
            };
          },
          opts.release,
        ),
      );
    });
}

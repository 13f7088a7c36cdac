/**
 * Prototype initialisation, paper Eq. 2 (REFERENCE 4.3): one pass over the source set, each image's class
 * means of its L2-normalised features (pixels kept where the prediction agrees with the label, REFERENCE
 * 8.2), averaged over the images that contain the class. Emits the [K, C] prototypes and the classes never
 * seen at the end of the pass; holds K x C sums whatever the number of images.
 */
import * as tf from '@tensorflow/tfjs';
import { defer, type OperatorFunction } from 'rxjs';
import { reduceItems } from '../graph/flow.ts';
import { crashPoint } from '../io/crash-points.ts';
import { downsampleLabels, refineSourceMask } from '../ops/masks.ts';
import type { SegModel } from '../ops/model/deeplab.ts';
import { PrototypeAccumulator } from '../ops/prototypes.ts';
import { batchTensors, type Batch } from './collate.ts';

export interface AccumulateOptions {
  model: SegModel;
  numClasses: number;
  /** Agreement filter (authors' code; REFERENCE 8.2). Default true. */
  refine?: boolean;
  /**
   * 'running' (default): eval-mode BN; 'batch': trainable BN normalises each batch by its own statistics
   * and leaves the running ones alone (as the source batches of training are, under `model.bnStats: 'target'`).
   */
  bnStats?: 'running' | 'batch';
  release: (batch: Batch) => void;
}

/** Paper Eq. 2: emits, at the end of the pass, the initial prototypes and the classes never seen. */
export function accumulatePrototypes(
  opts: AccumulateOptions,
): OperatorFunction<Batch, { prototypes: tf.Tensor2D; counts: number[]; missing: number[] }> {
  return (source) =>
    defer(() => {
      const acc = new PrototypeAccumulator(opts.numClasses, opts.model.featureChannels);
      return source.pipe(
        reduceItems(
          (batch: Batch) => {
            tf.tidy(() => {
              const { images, labels } = batchTensors(batch);
              if (!labels) throw new Error(`prototypes: source batch (${batch.keys[0]}...) has no labels`);
              const batchStats = opts.bnStats === 'batch';
              const { features, logits } = opts.model.forward(images, { training: batchStats, trackStats: !batchStats });
              let mask = downsampleLabels(labels, [features.shape[1], features.shape[2]]);
              if (opts.refine ?? true) mask = refineSourceMask(mask, logits);
              acc.add(features, mask);
            });
            crashPoint('prototypes');
          },
          () => {
            const r = acc.result();
            acc.dispose();
            return r;
          },
          opts.release,
        ),
      );
    });
}

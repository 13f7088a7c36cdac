/**
 * Prototypes: the class centroids of the source features (REFERENCE 4.3, 4.4).
 * - `Prototypes` holds the [K, C] tensor through the contrastive phase and is updated by EMA inside the
 *   step, before the loss (the current batch contributes, as in the authors' code). It is checkpointed
 *   (the authors' code never saves it).
 * - `accumulatePrototypes` is the initialisation pass: over the source set in eval mode, per image class
 *   means of normalised features with the agreement filter, averaged over the images containing the class.
 */
import * as tf from '@tensorflow/tfjs';
import { defer, type OperatorFunction } from 'rxjs';
import { reduceItems } from '../graph/flow.ts';
import { crashPoint } from '../io/crash-points.ts';
import { downsampleLabels, refineSourceMask } from '../ops/masks.ts';
import type { SegModel } from '../ops/model/deeplab.ts';
import { PrototypeAccumulator, updatePrototypes, type AbsentClassPolicy } from '../ops/prototypes.ts';
import type { Batch } from './collate.ts';

export class Prototypes {
  private value: tf.Variable | null = null;
  /** Norm of the last EMA change (metrics). */
  lastUpdateNorm = 0;

  get tensor(): tf.Tensor2D {
    if (!this.value) throw new Error('prototypes: not initialised (run the prototypes phase or resume from a checkpoint that has them)');
    return this.value as tf.Tensor2D;
  }

  get ready(): boolean {
    return this.value !== null;
  }

  set(t: tf.Tensor2D): void {
    if (this.value) this.value.assign(t);
    else this.value = tf.variable(t, false);
  }

  /** EMA update with the current batch's features (detached) and mask (REFERENCE 4.4). */
  update(features: tf.Tensor4D, mask: tf.Tensor3D, opts: { alpha: number; absent: AbsentClassPolicy }): void {
    tf.tidy(() => {
      const next = updatePrototypes(this.tensor, features, mask, opts);
      this.lastUpdateNorm = tf.norm(tf.sub(next, this.tensor)).dataSync()[0]!;
      this.value!.assign(next);
    });
  }

  dispose(): void {
    this.value?.dispose();
    this.value = null;
  }
}

/** Images [B,H,W,3] and int32 labels [B,Hl,Wl] of a batch as tensors (caller disposes). */
export function batchTensors(batch: Batch): { images: tf.Tensor4D; labels: tf.Tensor3D | null } {
  return {
    images: tf.tensor4d(batch.images, [batch.n, batch.height, batch.width, 3]),
    labels: batch.labels ? tf.tensor3d(batch.labels, [batch.n, batch.labelHeight, batch.labelWidth], 'int32') : null,
  };
}

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

/** Emits, at the end of the pass, the initial prototypes and the classes never seen. */
export function accumulatePrototypes(opts: AccumulateOptions): OperatorFunction<Batch, { prototypes: tf.Tensor2D; counts: number[]; missing: number[] }> {
  return (source) => defer(() => {
    const acc = new PrototypeAccumulator(opts.numClasses, opts.model.featureChannels);
    return source.pipe(reduceItems((batch: Batch) => {
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
    }, () => {
      const r = acc.result();
      acc.dispose();
      return r;
    }, opts.release));
  });
}

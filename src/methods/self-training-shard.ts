/**
 * The self-training step (self-training.ts, `anchoredSelfTrainingStep`) on one shard of its batch, as a
 * data-parallel program (src/parallel/program.ts): `pseudoWeight` x the cross-entropy of the target
 * prediction against its pseudo-labels, plus `sourceWeight` x the cross-entropy of the labelled source
 * shard when the batch has one; each a mean over the whole batch's labelled pixels.
 */
import * as tf from '@tensorflow/tfjs';
import { segCrossEntropy } from '../ops/losses.ts';
import type { SegModel } from '../ops/model/deeplab.ts';
import type { BnMode } from '../ops/model/layers.ts';
import { buildDeeplabReplica, followBatchNorm, type DeeplabReplica } from '../parallel/deeplab-replica.ts';
import { meanPart, type Program, type ShardContext } from '../parallel/program.ts';

export interface SelfTrainingShardArgs {
  bn: BnMode;
  pseudoWeight: number;
  sourceWeight: number;
  /** Source batches update BN's running statistics (model.bnStats 'all'). */
  trackSource: boolean;
}

/**
 * CE of `images`' prediction upsampled to `labels`: the mean over its labelled pixels, or with `batchMean`
 * this shard's part of the batch's (`input`: the labels' name in the shard program, counted on the host).
 */
function ce(
  model: SegModel,
  images: tf.Tensor4D,
  labels: tf.Tensor3D,
  input: string,
  trackStats: boolean,
  batchMean: ShardContext['batchMean'] | null,
): tf.Scalar {
  const logits = model.forward(images, { training: true, trackStats }).logits;
  const up = tf.image.resizeBilinear(logits, [labels.shape[1], labels.shape[2]], true);
  return meanPart(batchMean, segCrossEntropy(up, labels), { labelledIn: input });
}

/**
 * The self-training loss (paper Eq. 9, plus the source anchor when a source batch comes along): the
 * one-thread step's (self-training.ts, `batchMean` null: means over this batch), the shard program's with
 * `ShardContext.batchMean`.
 */
export function selfTrainingLoss(
  model: SegModel,
  target: { images: tf.Tensor4D; labels: tf.Tensor3D },
  source: { images: tf.Tensor4D; labels: tf.Tensor3D } | null,
  a: Omit<SelfTrainingShardArgs, 'bn'>,
  batchMean: ShardContext['batchMean'] | null = null,
): { total: tf.Scalar; terms: Record<string, tf.Scalar> } {
  const t = ce(model, target.images, target.labels, 'labels', true, batchMean);
  const ssl = a.pseudoWeight === 1 ? t : (tf.mul(t, a.pseudoWeight) as tf.Scalar);
  if (!source) return { total: ssl, terms: { ssl } };
  const s = ce(model, source.images, source.labels, 'sourceLabels', a.trackSource, batchMean);
  return { total: tf.add(ssl, tf.mul(s, a.sourceWeight)) as tf.Scalar, terms: { ssl, source: s } };
}

export const program: Program<DeeplabReplica> = {
  build: buildDeeplabReplica,
  prepare: (r, args) => followBatchNorm(r, (args as unknown as SelfTrainingShardArgs).bn),
  loss: (r, t, args, shard) =>
    selfTrainingLoss(
      r.model,
      { images: t.images as tf.Tensor4D, labels: t.labels as tf.Tensor3D },
      t.sourceImages ? { images: t.sourceImages as tf.Tensor4D, labels: t.sourceLabels as tf.Tensor3D } : null,
      args as unknown as SelfTrainingShardArgs,
      shard.batchMean,
    ),
};

export const SELF_TRAINING_SHARD = new URL(import.meta.url).href;

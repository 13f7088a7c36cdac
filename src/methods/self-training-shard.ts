/**
 * The self-training step (self-training.ts, `anchoredSelfTrainingStep`) on one shard of its batch, as a
 * data-parallel program (src/parallel/program.ts): `pseudoWeight` x the cross-entropy of the target
 * prediction against its pseudo-labels, plus `sourceWeight` x the cross-entropy of the labelled source
 * shard when the batch has one; each a mean over the whole batch's labelled pixels.
 */
import * as tf from '@tensorflow/tfjs';
import { segCrossEntropy } from '../ops/losses.ts';
import { labelledPixels } from '../ops/masks.ts';
import type { BnMode } from '../ops/model/layers.ts';
import { buildDeeplabReplica, followBatchNorm, type DeeplabReplica } from '../parallel/deeplab-replica.ts';
import type { Program } from '../parallel/program.ts';

export interface SelfTrainingShardArgs {
  bn: BnMode;
  pseudoWeight: number;
  sourceWeight: number;
  /** Source batches update BN's running statistics (model.bnStats 'all'). */
  trackSource: boolean;
}

/** CE of `images`' prediction upsampled to `labels`, as this shard's part of the batch's mean. */
function shardCe(
  r: DeeplabReplica,
  images: tf.Tensor4D,
  labels: tf.Tensor3D,
  trackStats: boolean,
  batchMean: (m: tf.Scalar, n: number) => tf.Scalar,
) {
  const logits = r.model.forward(images, { training: true, trackStats }).logits;
  const up = tf.image.resizeBilinear(logits, [labels.shape[1], labels.shape[2]], true);
  return batchMean(segCrossEntropy(up, labels), labelledPixels(labels));
}

export const program: Program<DeeplabReplica> = {
  build: buildDeeplabReplica,
  prepare: (r, args) => followBatchNorm(r, (args as unknown as SelfTrainingShardArgs).bn),
  loss: (r, t, args, shard): { total: tf.Scalar; terms: Record<string, tf.Scalar> } => {
    const a = args as unknown as SelfTrainingShardArgs;
    const ce = shardCe(r, t.images as tf.Tensor4D, t.labels as tf.Tensor3D, true, shard.batchMean);
    const ssl = a.pseudoWeight === 1 ? ce : (tf.mul(ce, a.pseudoWeight) as tf.Scalar);
    if (!t.sourceImages) return { total: ssl, terms: { ssl } };
    const source = shardCe(r, t.sourceImages as tf.Tensor4D, t.sourceLabels as tf.Tensor3D, a.trackSource, shard.batchMean);
    return { total: tf.add(ssl, tf.mul(source, a.sourceWeight)) as tf.Scalar, terms: { ssl, source } };
  },
};

export const SELF_TRAINING_SHARD = new URL(import.meta.url).href;

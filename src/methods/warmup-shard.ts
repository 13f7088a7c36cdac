/**
 * The warm-up's step without the adversarial term (warmup.ts) on one shard of its batch, as a
 * data-parallel program (src/parallel/program.ts): with `targetStats`, the target shard forward for BN's
 * running statistics (no gradient), then source cross-entropy on logits / sourceTemperature, as this
 * shard's part of the mean over the batch's labelled pixels. Over all replicas: warmup.ts's single-thread step.
 */
import * as tf from '@tensorflow/tfjs';
import { segCrossEntropy } from '../ops/losses.ts';
import type { SegModel } from '../ops/model/deeplab.ts';
import type { BnMode } from '../ops/model/layers.ts';
import { buildDeeplabReplica, followBatchNorm, type DeeplabReplica } from '../parallel/deeplab-replica.ts';
import type { Program } from '../parallel/program.ts';

export interface WarmupShardArgs {
  bn: BnMode;
  temperature: number;
  /** Source batches update BN's running statistics (model.bnStats 'all'). */
  trackSource: boolean;
  /** The target shard is passed forward for BN's running statistics (model.bnStats 'target'). */
  targetStats: boolean;
}

/**
 * The warm-up's source CE (+ target statistics pass) on a shard, mean over the shard's labelled pixels,
 * and the source logits upsampled to the labels (what the adversarial step's discriminator sees). Also
 * the one-thread step's (warmup.ts `warmupStep`): one loss for both paths.
 */
export function warmupLoss(
  model: SegModel,
  images: tf.Tensor4D,
  labels: tf.Tensor3D,
  target: tf.Tensor4D | null,
  a: Pick<WarmupShardArgs, 'temperature' | 'trackSource' | 'targetStats'>,
): { ce: tf.Scalar; logits: tf.Tensor4D } {
  if (a.targetStats)
    tf.tidy(() => {
      model.forward(target!, { training: true, trackStats: true });
    });
  const raw = model.forward(images, { training: true, trackStats: a.trackSource }).logits;
  const logits = tf.image.resizeBilinear(raw, [labels.shape[1], labels.shape[2]], true);
  return { ce: segCrossEntropy(logits, labels, { temperature: a.temperature }), logits };
}

export const program: Program<DeeplabReplica> = {
  build: buildDeeplabReplica,
  prepare: (r, args) => followBatchNorm(r, (args as unknown as WarmupShardArgs).bn),
  loss: (r, t, args, shard) => {
    const labels = t.labels as tf.Tensor3D;
    const { ce } = warmupLoss(
      r.model,
      t.images as tf.Tensor4D,
      labels,
      (t.target as tf.Tensor4D | undefined) ?? null,
      args as unknown as WarmupShardArgs,
    );
    const seg = shard.batchMean(ce, { labelledIn: 'labels' });
    return { total: seg, terms: { seg } };
  },
};

export const WARMUP_SHARD = new URL(import.meta.url).href;

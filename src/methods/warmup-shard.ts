/**
 * The warm-up's step without the adversarial term (warmup.ts) on one shard of its batch, as a
 * data-parallel program (src/parallel/program.ts): with `targetStats`, the target shard forward for BN's
 * running statistics (no gradient), then source cross-entropy on logits / sourceTemperature, weighted by
 * this shard's share of the batch's labelled pixels. Over all replicas: warmup.ts's single-thread step.
 */
import * as tf from '@tensorflow/tfjs';
import { segCrossEntropy } from '../ops/losses.ts';
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

/** The warm-up's source CE (+ target statistics pass) on a shard; also warmup.ts's loss in one process. */
export function warmupLoss(
  r: DeeplabReplica,
  images: tf.Tensor4D,
  labels: tf.Tensor3D,
  target: tf.Tensor4D | null,
  a: WarmupShardArgs,
): tf.Scalar {
  const { model } = r;
  if (a.targetStats)
    tf.tidy(() => {
      model.forward(target!, { training: true, trackStats: true });
    });
  const logits = model.forward(images, { training: true, trackStats: a.trackSource }).logits;
  const ls = tf.image.resizeBilinear(logits, [labels.shape[1], labels.shape[2]], true);
  return segCrossEntropy(ls, labels, { temperature: a.temperature });
}

export const program: Program<DeeplabReplica> = {
  build: buildDeeplabReplica,
  prepare: (r, args) => followBatchNorm(r, (args as unknown as WarmupShardArgs).bn),
  loss: (r, shard, args) => {
    const a = args as unknown as WarmupShardArgs & { weight: number };
    const seg = tf.mul(
      warmupLoss(r, shard.images as tf.Tensor4D, shard.labels as tf.Tensor3D, (shard.target as tf.Tensor4D | undefined) ?? null, a),
      a.weight,
    ) as tf.Scalar;
    return { total: seg, terms: { seg } };
  },
  share: (shard) => (shard.labels!.data as Int32Array).reduce((n, v) => n + (v !== 255 ? 1 : 0), 0),
};

export const WARMUP_SHARD = new URL(import.meta.url).href;

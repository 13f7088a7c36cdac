/**
 * The mean teacher's student loss (mean-teacher.ts, step 3) on one shard of its batch, as a data-parallel
 * program (src/parallel/program.ts). The teacher's labels, ClassMix and the strong augmentation are the
 * main thread's (one teacher, the whole batch); the replicas get the source shard and the student's
 * mixed shard with its labels and pixel weights. With `targetStats` the plain target shard passes forward
 * first for BN's running statistics (no gradient). L_seg, the weighted mixed CE and, with
 * `contrastWeight` > 0, SPCL's L_cl^s and L_cl^t (prototype EMA of Eq. 3 from every replica's source
 * shard, spcl-shard.ts `shardPrototypeEma`) are each a mean over the whole batch's counted pixels.
 */
import * as tf from '@tensorflow/tfjs';
import { contrastiveLoss, detach, segCrossEntropy } from '../ops/losses.ts';
import { downsampleLabels, labelledPixels, refineSourceMask } from '../ops/masks.ts';
import type { SegModel } from '../ops/model/deeplab.ts';
import type { BnMode } from '../ops/model/layers.ts';
import type { AbsentClassPolicy } from '../ops/prototypes.ts';
import { buildDeeplabReplica, followBatchNorm, type DeeplabReplica } from '../parallel/deeplab-replica.ts';
import { meanPart, type Program, type ShardContext } from '../parallel/program.ts';
import { shardPrototypeEma } from './spcl-shard.ts';

export interface MeanTeacherShardArgs {
  bn: BnMode;
  /** Source batches update BN's running statistics (model.bnStats 'all'). */
  trackSource: boolean;
  /** The plain target batch passes forward for BN's running statistics, and the mixed one leaves them alone. */
  targetStats: boolean;
  contrastWeight: number;
  /** SPCL's contrastive temperature (spcl.temperature). */
  temperature: number;
  /** Prototype EMA (prototypes.alpha, prototypes.absent). */
  alpha: number;
  absent: AbsentClassPolicy;
}

/** What the student trains on: the source batch, and the mixed (or plain) target batch the teacher labelled. */
export interface StudentBatch {
  source: { images: tf.Tensor4D; labels: tf.Tensor3D };
  mixed: { images: tf.Tensor4D; labels: tf.Tensor3D; pixelWeights: tf.Tensor3D };
  /** The plain target batch, passed forward for BN's statistics when `targetStats`. */
  target: tf.Tensor4D | null;
}

/**
 * Source CE + the mixed batch's CE weighted per pixel (+ `contrastWeight` x (L_cl^s + L_cl^t) against
 * the prototypes `prototypesAfter` returns after its EMA with this batch's source features and mask).
 * The one-thread step's (`batchMean` null: means over this batch) and the shard program's (the two CE
 * terms' labelled pixels are those of its inputs 'labels' and 'mixedLabels', counted on the host).
 */
export function meanTeacherLoss(
  model: SegModel,
  b: StudentBatch,
  a: Omit<MeanTeacherShardArgs, 'bn' | 'alpha' | 'absent'>,
  prototypesAfter: (features: tf.Tensor4D, mask: tf.Tensor3D) => tf.Tensor2D,
  batchMean: ShardContext['batchMean'] | null = null,
): { total: tf.Scalar; terms: Record<string, tf.Scalar> } {
  const part = (m: tf.Scalar, mask: tf.Tensor) => meanPart(batchMean, m, () => labelledPixels(mask));
  if (a.targetStats) tf.tidy(() => void model.forward(b.target!, { training: true, trackStats: true }));
  const { images: xs, labels: ys } = b.source;
  const src = model.forward(xs, { training: true, trackStats: a.trackSource });
  const seg = meanPart(batchMean, segCrossEntropy(tf.image.resizeBilinear(src.logits, [ys.shape[1], ys.shape[2]], true), ys), {
    labelledIn: 'labels',
  });
  const { images, labels, pixelWeights } = b.mixed;
  const mix = model.forward(images, { training: true, trackStats: !a.targetStats });
  const up = tf.image.resizeBilinear(mix.logits, [labels.shape[1], labels.shape[2]], true);
  const mixed = meanPart(batchMean, segCrossEntropy(up, labels, { pixelWeights }), { labelledIn: 'mixedLabels' });
  const terms: Record<string, tf.Scalar> = { seg, mixed };
  let total = tf.add(seg, mixed) as tf.Scalar;
  if (a.contrastWeight > 0) {
    const ms = refineSourceMask(downsampleLabels(ys, [src.features.shape[1], src.features.shape[2]]), detach(src.logits));
    const P = prototypesAfter(src.features, ms); // Eq. 3
    const mt = downsampleLabels(labels, [mix.features.shape[1], mix.features.shape[2]]);
    terms.cl_source = part(contrastiveLoss(src.features, ms, P, { temperature: a.temperature }), ms); // Eq. 4
    terms.cl_target = part(contrastiveLoss(mix.features, mt, P, { temperature: a.temperature }), mt); // Eq. 6
    total = tf.add(total, tf.mul(tf.add(terms.cl_source, terms.cl_target), a.contrastWeight)) as tf.Scalar;
  }
  return { total, terms };
}

export const program: Program<DeeplabReplica> = {
  build: buildDeeplabReplica,
  prepare: (r, args) => followBatchNorm(r, (args as unknown as MeanTeacherShardArgs).bn),
  loss: (r, t, args, shard) => {
    const a = args as unknown as MeanTeacherShardArgs;
    return meanTeacherLoss(
      r.model,
      {
        source: { images: t.images as tf.Tensor4D, labels: t.labels as tf.Tensor3D },
        mixed: { images: t.mixed as tf.Tensor4D, labels: t.mixedLabels as tf.Tensor3D, pixelWeights: t.pixelWeights as tf.Tensor3D },
        target: (t.target as tf.Tensor4D | undefined) ?? null,
      },
      a,
      shardPrototypeEma(t.prototypes as tf.Tensor2D, a, shard),
      shard.batchMean,
    );
  },
};

export const MEAN_TEACHER_SHARD = new URL(import.meta.url).href;

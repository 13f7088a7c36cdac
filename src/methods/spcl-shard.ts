/**
 * The contrastive step (spcl.ts, paper Eq. 8) on one shard of its batch, as a data-parallel program
 * (src/parallel/program.ts). The prototype EMA (Eq. 3) before the loss takes the per-class sums and
 * counts of every replica's source shard, so each replica updates the prototypes (given whole) to what
 * one process would, and the main thread's replica hands them back (`prototypes`). L_seg, L_cl^s and
 * L_cl^t are each a mean over the whole batch's counted pixels (labelled; kept by the masks).
 */
import * as tf from '@tensorflow/tfjs';
import { contrastiveLoss, detach, segCrossEntropy } from '../ops/losses.ts';
import { downsampleLabels, labelledPixels, refineSourceMask } from '../ops/masks.ts';
import type { SegModel } from '../ops/model/deeplab.ts';
import type { BnMode } from '../ops/model/layers.ts';
import { updatePrototypes, type AbsentClassPolicy } from '../ops/prototypes.ts';
import { buildDeeplabReplica, followBatchNorm, type DeeplabReplica } from '../parallel/deeplab-replica.ts';
import { meanPart, type Program, type ShardContext } from '../parallel/program.ts';

export interface SpclShardArgs {
  bn: BnMode;
  sourceTemperature: number;
  temperature: number;
  lambda: number;
  refineSource: boolean;
  alpha: number;
  absent: AbsentClassPolicy;
  /** Source batches update BN's running statistics (model.bnStats 'all'). */
  trackSource: boolean;
}

/**
 * The contrastive step's loss (paper Eq. 8): L_seg on the source + lambda (L_cl^s + L_cl^t) against the
 * prototypes that `prototypesAfter` returns after its EMA with this batch's source features and mask
 * (Eq. 3, before the loss: the authors' order). The one-thread step's (spcl.ts, `batchMean` null: means over
 * this batch) and the shard program's (`ShardContext.batchMean`, the whole batch's class sums; L_seg's
 * labelled pixels are those of the program's input 'labels', counted on the host before the step).
 */
export function spclLoss(
  model: SegModel,
  source: { images: tf.Tensor4D; labels: tf.Tensor3D },
  target: { images: tf.Tensor4D; labels: tf.Tensor3D },
  a: Pick<SpclShardArgs, 'sourceTemperature' | 'temperature' | 'lambda' | 'refineSource' | 'trackSource'>,
  prototypesAfter: (features: tf.Tensor4D, mask: tf.Tensor3D) => tf.Tensor2D,
  batchMean: ShardContext['batchMean'] | null = null,
): { total: tf.Scalar; terms: Record<string, tf.Scalar> } {
  const part = (m: tf.Scalar, mask: tf.Tensor) => meanPart(batchMean, m, () => labelledPixels(mask));
  const { features: fs, logits: ls } = model.forward(source.images, { training: true, trackStats: a.trackSource });
  const up = tf.image.resizeBilinear(ls, [source.labels.shape[1], source.labels.shape[2]], true);
  const seg = meanPart(batchMean, segCrossEntropy(up, source.labels, { temperature: a.sourceTemperature }), { labelledIn: 'labels' });
  // M_s: the label at the feature grid, kept where the prediction agrees (REFERENCE 4.2)
  let ms = downsampleLabels(source.labels, [fs.shape[1], fs.shape[2]]);
  if (a.refineSource) ms = refineSourceMask(ms, detach(ls));
  const P = prototypesAfter(fs, ms);
  const ft = model.forward(target.images, { training: true }).features;
  // Eq. 5, M_t: the offline pseudo-label (class thresholds on the output, REFERENCE 5) at the feature grid
  const mt = downsampleLabels(target.labels, [ft.shape[1], ft.shape[2]]);
  const clS = part(contrastiveLoss(fs, ms, P, { temperature: a.temperature }), ms); // Eq. 4
  const clT = part(contrastiveLoss(ft, mt, P, { temperature: a.temperature }), mt); // Eq. 6
  const total = tf.add(seg, tf.mul(tf.add(clS, clT), a.lambda)) as tf.Scalar; // Eq. 8
  return { total, terms: { seg, cl_source: clS, cl_target: clT } };
}

/**
 * A shard program's prototype EMA (Eq. 3) from `prototypes` (given whole) with the whole batch's class
 * sums; the main thread's replica hands the result back as output 'prototypes' (`parallelApplyWithPrototypes`).
 */
export function shardPrototypeEma(
  prototypes: tf.Tensor2D,
  a: { alpha: number; absent: AbsentClassPolicy },
  shard: ShardContext,
): (features: tf.Tensor4D, mask: tf.Tensor3D) => tf.Tensor2D {
  return (fs, ms) => {
    const P = updatePrototypes(prototypes, fs, ms, { alpha: a.alpha, absent: a.absent, sum: shard.sum });
    shard.output('prototypes', P);
    return P;
  };
}

export const program: Program<DeeplabReplica> = {
  build: buildDeeplabReplica,
  prepare: (r, args) => followBatchNorm(r, (args as unknown as SpclShardArgs).bn),
  loss: (r, t, args, shard) => {
    const a = args as unknown as SpclShardArgs;
    return spclLoss(
      r.model,
      { images: t.images as tf.Tensor4D, labels: t.labels as tf.Tensor3D },
      { images: t.targetImages as tf.Tensor4D, labels: t.targetLabels as tf.Tensor3D },
      a,
      shardPrototypeEma(t.prototypes as tf.Tensor2D, a, shard),
      shard.batchMean,
    );
  },
};

export const SPCL_SHARD = new URL(import.meta.url).href;

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
import type { BnMode } from '../ops/model/layers.ts';
import { updatePrototypes, type AbsentClassPolicy } from '../ops/prototypes.ts';
import { buildDeeplabReplica, followBatchNorm, type DeeplabReplica } from '../parallel/deeplab-replica.ts';
import type { Program } from '../parallel/program.ts';

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

export const program: Program<DeeplabReplica> = {
  build: buildDeeplabReplica,
  prepare: (r, args) => followBatchNorm(r, (args as unknown as SpclShardArgs).bn),
  loss: (r, t, args, shard) => {
    const a = args as unknown as SpclShardArgs;
    const { model } = r;
    const [xs, ys, xt, yt] = [
      t.images as tf.Tensor4D,
      t.labels as tf.Tensor3D,
      t.targetImages as tf.Tensor4D,
      t.targetLabels as tf.Tensor3D,
    ];
    const { features: fs, logits: ls } = model.forward(xs, { training: true, trackStats: a.trackSource });
    const up = tf.image.resizeBilinear(ls, [ys.shape[1], ys.shape[2]], true);
    const seg = shard.batchMean(segCrossEntropy(up, ys, { temperature: a.sourceTemperature }), labelledPixels(ys));
    let ms = downsampleLabels(ys, [fs.shape[1], fs.shape[2]]);
    if (a.refineSource) ms = refineSourceMask(ms, detach(ls));
    // Eq. 3 with the whole batch's class sums, before the loss
    const P = updatePrototypes(t.prototypes as tf.Tensor2D, fs, ms, { alpha: a.alpha, absent: a.absent, sum: shard.sum });
    shard.output('prototypes', P);
    const ft = model.forward(xt, { training: true }).features;
    const mt = downsampleLabels(yt, [ft.shape[1], ft.shape[2]]);
    const clS = shard.batchMean(contrastiveLoss(fs, ms, P, { temperature: a.temperature }), labelledPixels(ms));
    const clT = shard.batchMean(contrastiveLoss(ft, mt, P, { temperature: a.temperature }), labelledPixels(mt));
    const total = tf.add(seg, tf.mul(tf.add(clS, clT), a.lambda)) as tf.Scalar;
    return { total, terms: { seg, cl_source: clS, cl_target: clT } };
  },
};

export const SPCL_SHARD = new URL(import.meta.url).href;

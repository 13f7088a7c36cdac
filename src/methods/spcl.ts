/**
 * Semantic prototype-based contrastive learning (REFERENCE 1 step 5; paper section 3.2): segmentation
 * cross-entropy on logits / 1.8 plus lambda (Lcl_s + Lcl_t), the pixel-to-prototype contrastive loss of
 * Eq. 3-4 on source features with their (agreement-refined, Eq. 8) labels and on target features with the
 * offline pseudo-labels downsampled to the feature grid (the target mask of Eq. 5); the prototypes follow
 * an EMA of the source batch's class centroids each step (Eq. 6-7).
 */
import * as tf from '@tensorflow/tfjs';
import { contrastiveLoss, detach, segCrossEntropy } from '../ops/losses.ts';
import { downsampleLabels, refineSourceMask } from '../ops/masks.ts';
import { polyLR } from '../ops/optim.ts';
import { applyIfFinite } from '../stages/train-step.ts';
import { batchTensors } from '../stages/update-prototypes.ts';
import type { RunContext } from '../recipe/context.ts';
import type { Method } from '../recipe/method.ts';
import { STREAMS } from '../recipe/streams.ts';
import { releaseBatches, restoreOptimizer, sgd, sourceTargetPairs, train, type PhaseResult, type ResumePoint } from '../recipe/trainer.ts';

/** Step 5: seg (/1.8) + lambda (Lcl_s + Lcl_t); prototype EMA with the current source batch first. */
export async function spclPhase(ctx: RunContext, resume: ResumePoint = { iteration: 0 }): Promise<PhaseResult> {
  const { cfg, model } = ctx;
  const c = cfg.spcl;
  if (!ctx.pseudo) throw new Error('spcl: no pseudo-labels; run the pseudo-labels phase first');
  model.setBatchNorm(c.bn);
  const params = model.trainableParams();
  const opt = sgd(ctx, params);
  restoreOptimizer(opt, resume.optimizer);
  const start = resume.iteration;
  try {
    return await train(ctx, {
      phase: 'spcl', schedule: c, resume, input: sourceTargetPairs(ctx, start, STREAMS.spcl, ctx.pseudo), release: releaseBatches,
      state: () => ({ optimizer: opt.getState() }),
      step: ({ s: sb, t: tb }, it) => {
      const lr = polyLR(c.lr, it, c.maxIter) * ctx.lrScale;
      return tf.tidy(() => {
        const xs = batchTensors(sb);
        const xt = batchTensors(tb);
        const g = applyIfFinite(() => {
          const { features: fs, logits: ls } = model.forward(xs.images, { training: true, trackStats: cfg.model.bnStats === 'all' });
          const up = tf.image.resizeBilinear(ls, [sb.labelHeight, sb.labelWidth], true);
          const seg = segCrossEntropy(up, xs.labels!, { temperature: c.sourceTemperature });
          let ms = downsampleLabels(xs.labels!, [fs.shape[1], fs.shape[2]]);
          if (c.refineSource) ms = refineSourceMask(ms, detach(ls));
          ctx.prototypes.update(fs, ms, { alpha: cfg.prototypes.alpha, absent: cfg.prototypes.absent });
          ctx.events.prototypes?.(ctx.prototypes);
          const ft = model.forward(xt.images, { training: true }).features;
          const mt = downsampleLabels(xt.labels!, [ft.shape[1], ft.shape[2]]);
          const P = ctx.prototypes.tensor;
          const clS = contrastiveLoss(fs, ms, P, { temperature: c.temperature });
          const clT = contrastiveLoss(ft, mt, P, { temperature: c.temperature });
          const total = tf.add(seg, tf.mul(tf.add(clS, clT), c.lambda)) as tf.Scalar;
          return { total, terms: { seg, cl_source: clS, cl_target: clT } };
        }, params, opt, lr);
        return { losses: g.losses, lr, skipped: !g.finite, samples: { source: sb.n, target: tb.n } };
      });
    },
    });
  } finally {
    opt.dispose();
  }
}

export const spcl: Method = { name: 'spcl', kind: 'train', run: spclPhase };

/**
 * Semantic prototype-based contrastive learning (REFERENCE 1 step 5; paper section 3.2), the objective of
 * paper Eq. 8: L_seg (Eq. 7, on source logits / 1.8) + lambda (L_cl^s (Eq. 4) + L_cl^t (Eq. 6)), both
 * contrastive terms the pixel-to-prototype loss of Eq. 1. The source mask M_s is the label downsampled to
 * the feature grid, kept where the prediction agrees (REFERENCE 4.2); the target mask M_t (Eq. 5) is the
 * offline pseudo-label (REFERENCE 5) downsampled likewise. The prototypes follow the EMA of Eq. 3 with the
 * current source batch before the loss.
 */
import * as tf from '@tensorflow/tfjs';
import { polyLR, type SGD } from '../ops/optim.ts';
import { applyIfFinite, parallelApplyWithPrototypes, type GradientSource, type StepOutcome } from '../stages/train-step.ts';
import type { Param } from '../ops/model/params.ts';
import { SPCL_SHARD, spclLoss, type SpclShardArgs } from './spcl-shard.ts';
import { batchTensors, type Batch } from '../stages/collate.ts';
import type { RunContext } from '../recipe/context.ts';
import type { Method } from '../recipe/method.ts';
import { STREAMS } from '../recipe/streams.ts';
import {
  hostBatch,
  releaseBatches,
  restoreOptimizer,
  sgd,
  sourceTargetPairs,
  startDataParallel,
  train,
  type PhaseResult,
  type ResumePoint,
} from '../recipe/trainer.ts';

/** REFERENCE 1 step 5: paper Eq. 8, the prototype EMA (Eq. 3) with the current source batch first. */
export async function spclPhase(ctx: RunContext, resume: ResumePoint = { iteration: 0 }): Promise<PhaseResult> {
  const { cfg, model } = ctx;
  const c = cfg.spcl;
  if (!ctx.pseudo) throw new Error('spcl: no pseudo-labels; run the pseudo-labels phase first');
  model.setBatchNorm(c.bn);
  const params = model.trainableParams();
  const opt = sgd(ctx, params);
  restoreOptimizer(opt, resume.optimizer);
  const start = resume.iteration;
  // the same step over data-parallel replicas when train.threads > 1 (spcl-shard.ts)
  const dp = await startDataParallel(ctx, 'spcl', SPCL_SHARD, Math.min(cfg.batch.source, cfg.batch.target));
  try {
    return await train(ctx, {
      phase: 'spcl',
      schedule: c,
      resume,
      input: sourceTargetPairs(ctx, start, STREAMS.spcl, ctx.pseudo),
      release: releaseBatches,
      state: () => ({ optimizer: opt.getState() }),
      step: contrastiveStep(ctx, params, opt, dp),
    });
  } finally {
    await dp?.close();
    opt.dispose();
  }
}

/**
 * One contrastive step (paper Eq. 8), the prototypes' EMA with the current source batch first (Eq. 3).
 * With `replicas`, the same step over data-parallel replicas (spcl-shard.ts).
 */
export function contrastiveStep(ctx: RunContext, params: Param[], opt: SGD, dp: GradientSource | null) {
  const { cfg, model } = ctx;
  const c = cfg.spcl;
  const shardArgs: SpclShardArgs = {
    bn: model.batchNorm,
    sourceTemperature: c.sourceTemperature,
    temperature: c.temperature,
    lambda: c.lambda,
    refineSource: c.refineSource,
    alpha: cfg.prototypes.alpha,
    absent: cfg.prototypes.absent,
    trackSource: cfg.model.bnStats === 'all',
  };
  return ({ s: sb, t: tb }: { s: Batch; t: Batch }, it: number): StepOutcome => {
    const lr = polyLR(c.lr, it, c.maxIter) * ctx.lrScale;
    if (dp) {
      const t = hostBatch(tb);
      const batch = { ...hostBatch(sb), targetImages: t.images!, targetLabels: t.labels! };
      const g = parallelApplyWithPrototypes(ctx.prototypes, dp, batch, { ...shardArgs }, params, opt, lr);
      ctx.events.prototypes?.(ctx.prototypes);
      return { losses: g.losses, lr, skipped: !g.finite, samples: { source: sb.n, target: tb.n } };
    }
    return tf.tidy(() => {
      const xs = batchTensors(sb);
      const xt = batchTensors(tb);
      const g = applyIfFinite(
        () =>
          spclLoss(model, { images: xs.images, labels: xs.labels! }, { images: xt.images, labels: xt.labels! }, shardArgs, (fs, ms) => {
            // Eq. 3: the prototypes' EMA with this batch, before the loss (the authors' order)
            ctx.prototypes.update(fs, ms, { alpha: cfg.prototypes.alpha, absent: cfg.prototypes.absent });
            ctx.events.prototypes?.(ctx.prototypes);
            return ctx.prototypes.tensor;
          }),
        params,
        opt,
        lr,
      );
      return { losses: g.losses, lr, skipped: !g.finite, samples: { source: sb.n, target: tb.n } };
    });
  };
}

export const spcl: Method = { name: 'spcl', kind: 'train', steps: (cfg) => cfg.spcl.iterations, run: spclPhase };

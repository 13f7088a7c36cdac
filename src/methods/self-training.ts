/**
 * Self-training (REFERENCE 1 step 8; paper Eq. 9): cross-entropy of the target prediction against the
 * offline pseudo-labels, BN as `ssl.bn`, with a labelled source batch beside each target batch when
 * `ssl.sourceWeight` > 0 (not in the paper; the synthetic preset's documented switch).
 */
import * as tf from '@tensorflow/tfjs';
import { map, zip } from 'rxjs';
import type { Param } from '../ops/model/params.ts';
import { polyLR, type SGD } from '../ops/optim.ts';
import { batchTensors, type Batch } from '../stages/collate.ts';
import { applyIfFinite, parallelApplyIfFinite, type GradientSource } from '../stages/train-step.ts';
import { SELF_TRAINING_SHARD, selfTrainingLoss, type SelfTrainingShardArgs } from './self-training-shard.ts';
import { batches, type RunContext } from '../recipe/context.ts';
import type { Method } from '../recipe/method.ts';
import { STREAMS } from '../recipe/streams.ts';
import {
  hostBatch,
  releaseBatches,
  restoreOptimizer,
  startDataParallel,
  sgd,
  sourceBatches,
  specs,
  train,
  type PhaseResult,
  type ResumePoint,
} from '../recipe/trainer.ts';

/** REFERENCE 1 step 8, paper Eq. 9: self-training on target pseudo-labels, BN as ssl.bn, plain CE. */
export async function sslPhase(ctx: RunContext, resume: ResumePoint = { iteration: 0 }): Promise<PhaseResult> {
  const { cfg, model } = ctx;
  const c = cfg.ssl;
  if (!ctx.pseudo) throw new Error('ssl: no pseudo-labels; run the pseudo-labels phase first');
  model.setBatchNorm(c.bn);
  const params = model.trainableParams();
  const opt = sgd(ctx, params);
  restoreOptimizer(opt, resume.optimizer);
  const size = cfg.batch.source + cfg.batch.target;
  const start = resume.iteration;
  const tgt = batches(ctx, {
    domain: 'target',
    spec: specs(ctx).sslTarget,
    batchSize: size,
    mode: 'train',
    stream: STREAMS.sslTarget,
    start: start * size,
    pseudo: ctx.pseudo,
  });
  // ssl.sourceWeight > 0: a labelled source batch beside each target batch (not in the paper; a documented switch)
  const input =
    c.sourceWeight > 0
      ? zip(tgt, sourceBatches(ctx, STREAMS.sslSource, start)).pipe(map(([t, s]) => ({ t, s: s as Batch | null })))
      : tgt.pipe(map((t) => ({ t, s: null as Batch | null })));
  const lrAt = (it: number) => polyLR(c.lr, it, c.maxIter) * ctx.lrScale;
  const dp = await startDataParallel(ctx, 'ssl', SELF_TRAINING_SHARD, c.sourceWeight > 0 ? Math.min(size, cfg.batch.source) : size);
  try {
    return await train(ctx, {
      phase: 'ssl',
      schedule: c,
      resume,
      input,
      release: releaseBatches,
      state: () => ({ optimizer: opt.getState() }),
      step: anchoredSelfTrainingStep(params, opt, lrAt, ctx, c.sourceWeight, c.pseudoWeight, dp),
    });
  } finally {
    await dp?.close();
    opt.dispose();
  }
}

/**
 * One self-training step (REFERENCE 1 step 8): `pseudoWeight` (1 = the paper) x the cross-entropy of the
 * target prediction against its pseudo-labels, plus `sourceWeight` x the cross-entropy of a labelled
 * source batch when one comes along (`ssl.sourceWeight`, `continuous.sourceWeight`; 0 = none, the paper).
 * With `replicas`, the same step over data-parallel replicas (self-training-shard.ts).
 */
export function anchoredSelfTrainingStep(
  params: Param[],
  opt: SGD,
  lrAt: (iteration: number) => number,
  ctx: RunContext,
  sourceWeight: number,
  pseudoWeight = 1,
  replicas: GradientSource | null = null,
) {
  return ({ t: tb, s: sb }: { t: Batch; s: Batch | null }, it: number) => {
    const lr = lrAt(it);
    const withSource = Boolean(sb && sourceWeight > 0);
    const outcome = (g: { losses: Record<string, number>; finite: boolean }) => ({
      losses: g.losses,
      lr,
      skipped: !g.finite,
      samples: { target: tb.n, source: withSource ? sb!.n : 0 },
      stats: { labelled_share: labelledShare(tb) },
    });
    const args: SelfTrainingShardArgs = {
      bn: ctx.model.batchNorm,
      pseudoWeight,
      sourceWeight,
      trackSource: ctx.cfg.model.bnStats === 'all',
    };
    if (replicas) {
      const src = withSource ? hostBatch(sb!) : {};
      const batch = { ...hostBatch(tb), ...(withSource ? { sourceImages: src.images!, sourceLabels: src.labels! } : {}) };
      return outcome(parallelApplyIfFinite(replicas, batch, { ...args }, params, opt, lr));
    }
    return tf.tidy(() => {
      const xt = batchTensors(tb);
      const xs = withSource ? batchTensors(sb!) : null;
      const g = applyIfFinite(
        () =>
          selfTrainingLoss(
            ctx.model,
            { images: xt.images, labels: xt.labels! },
            xs ? { images: xs.images, labels: xs.labels! } : null,
            args,
          ),
        params,
        opt,
        lr,
      );
      return outcome(g);
    });
  };
}

export const selfTraining: Method = { name: 'ssl', kind: 'train', steps: (cfg) => cfg.ssl.iterations, run: sslPhase };

/** The share of a batch's pixels that carry a pseudo-label (not 255): what the thresholds left to learn from. */
function labelledShare(batch: Batch): number {
  const labels = batch.labels;
  if (!labels) return 0;
  const n = batch.n * batch.labelHeight * batch.labelWidth;
  let kept = 0;
  for (let i = 0; i < n; i++) if (labels[i] !== 255) kept++;
  return kept / n;
}

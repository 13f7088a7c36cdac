/**
 * Warm-up (REFERENCE 1 step 1, AdaptSegNet-style): source cross-entropy (paper Eq. 7)
 * on logits / 1.8, plus the output-space adversarial term of AdaptSegNet when `warmup.lambdaAdv` > 0, with
 * its discriminator (checkpointed in the file's discriminator sections).
 */
import * as tf from '@tensorflow/tfjs';
import { map, type Observable } from 'rxjs';
import { discriminator, type Discriminator } from '../ops/model/discriminator.ts';
import { Adam, polyLR, type SGD } from '../ops/optim.ts';
import type { SegModel } from '../ops/model/deeplab.ts';
import type { Param } from '../ops/model/params.ts';
import { batchTensors, type Batch } from '../stages/collate.ts';
import { applyIfFinite, parallelApplyIfFinite } from '../stages/train-step.ts';
import { WARMUP_SHARD, warmupLoss, type WarmupShardArgs } from './warmup-shard.ts';
import {
  ADVERSARIAL_SHARD,
  adversarialReplica,
  adversarialTerm,
  discriminatorLoss,
  type AdversarialShardArgs,
  disposeKept,
  type KeptPredictions,
} from './warmup-adversarial-shard.ts';
import type { DataParallel } from '../parallel/data-parallel.ts';
import { describeDeeplab } from '../parallel/deeplab-replica.ts';
import type { HostTensors } from '../parallel/program.ts';
import type { BnMode } from '../ops/model/layers.ts';
import type { RunContext } from '../recipe/context.ts';
import type { Method } from '../recipe/method.ts';
import { STREAMS } from '../recipe/streams.ts';
import {
  hostBatch,
  releaseBatches,
  restoreOptimizer,
  startDataParallel,
  sgd,
  sourceBatches,
  sourceTargetPairs,
  train,
  type PhaseResult,
  type ResumePoint,
} from '../recipe/trainer.ts';

/**
 * Step 1 (REFERENCE 1): source CE on logits / 1.8 + lambda_adv * BCE(D(target softmax), source); then D.
 * With lambdaAdv = 0 there is no discriminator: source CE only. Then, when BN is trainable and its
 * running statistics follow the target (`model.bnStats: 'target'`), each step still passes its target
 * batch forward, without gradient, so the running statistics are the target's (the synthetic preset's
 * warm-up); with `model.bnStats: 'all'` the target batch is not used at all (the source-only baseline).
 */
export async function warmupPhase(ctx: RunContext, resume: ResumePoint = { iteration: 0 }): Promise<PhaseResult> {
  const { cfg, model } = ctx;
  const w = cfg.warmup;
  const adversarial = w.lambdaAdv > 0;
  const trackSource = cfg.model.bnStats === 'all';
  ctx.model.setBatchNorm(w.bn);
  const targetStats = !adversarial && !trackSource && ctx.model.batchNorm === 'trainable';
  const disc: Discriminator = discriminator({ numClasses: cfg.data.numClasses, ndf: w.ndf, seed: cfg.seed + 17 });
  const params = model.trainableParams();
  const opt = sgd(ctx, params);
  const dParams = [...disc.store.params.values()];
  const dOpt = new Adam([{ params: dParams, lrMult: 1 }], { beta1: 0.9, beta2: 0.99 });
  restoreOptimizer(opt, resume.optimizer);
  restoreOptimizer(dOpt, resume.discriminatorOptimizer);
  if (resume.discriminator) {
    for (const [k, v] of resume.discriminator) disc.store.get(k).assign(v);
    tf.dispose([...resume.discriminator.values()]);
  }
  const start = resume.iteration;
  // a target batch is read only when this step uses it (the adversarial term, or target BN statistics);
  // the source-only baseline never decodes a target image
  const usesTarget = adversarial || targetStats;
  const input: Observable<{ s: Batch; t: Batch | null }> = usesTarget
    ? sourceTargetPairs(ctx, start, STREAMS.warmup, null)
    : sourceBatches(ctx, STREAMS.warmup, start).pipe(map((s) => ({ s, t: null as Batch | null })));
  // the step runs over data-parallel replicas when train.threads > 1 (the adversarial one with D in each)
  const rows = usesTarget ? Math.min(cfg.batch.source, cfg.batch.target) : cfg.batch.source;
  const advReplica = adversarial ? adversarialReplica(model, disc) : null;
  const dp = await startDataParallel(
    ctx,
    'warmup',
    adversarial ? ADVERSARIAL_SHARD : WARMUP_SHARD,
    rows,
    advReplica ? { replica: advReplica, description: { ...describeDeeplab(model), ndf: w.ndf } } : undefined,
  );
  const nets: WarmupNets = { model, params, opt, disc: adversarial ? { net: disc, params: dParams, opt: dOpt } : null };
  const stepOpts = { lambdaAdv: w.lambdaAdv, temperature: w.sourceTemperature, trackSource, targetStats };
  try {
    return await train(ctx, {
      phase: 'warmup',
      schedule: w,
      resume,
      input,
      release: releaseBatches,
      // the discriminator and its Adam state go into the checkpoint's own sections
      state: () => ({
        optimizer: opt.getState(),
        discriminator: new Map([...disc.store.params].map(([k, p]) => [k, p.variable as tf.Tensor])),
        discriminatorOptimizer: dOpt.getState(),
      }),
      step: ({ s: sb, t: tb }, it) => {
        const lr = polyLR(w.lr, it, w.maxIter) * ctx.lrScale;
        const lrD = polyLR(w.lrD, it, w.maxIter) * ctx.lrScale;
        if (dp) {
          const batch = { ...hostBatch(sb), ...(usesTarget ? { target: hostBatch(tb!).images! } : {}) };
          return {
            ...parallelWarmupStep(dp, nets, batch, { ...stepOpts, lr, lrD }, model.batchNorm),
            samples: { source: sb.n, target: tb ? tb.n : 0 },
          };
        }
        return tf.tidy(() => {
          const xs = batchTensors(sb);
          const xt = tb ? batchTensors(tb).images : null;
          return {
            ...warmupStep(nets, { source: xs.images, labels: xs.labels!, target: xt }, { ...stepOpts, lr, lrD }),
            samples: { source: sb.n, target: tb ? tb.n : 0 },
          };
        });
      },
    });
  } finally {
    await dp?.close();
    advReplica?.dispose();
    opt.dispose();
    dOpt.dispose();
    disc.dispose();
  }
}

export const warmup: Method = { name: 'warmup', kind: 'train', steps: (cfg) => cfg.warmup.iterations, run: warmupPhase };

/** What a one-thread warm-up step trains: the model and its SGD, and the discriminator with its Adam when adversarial. */
export interface WarmupNets {
  model: SegModel;
  params: Param[];
  opt: SGD;
  disc: { net: Discriminator; params: Param[]; opt: Adam } | null;
}

export interface WarmupStepOptions {
  lr: number;
  lrD: number;
  lambdaAdv: number;
  /** Source logits are divided by this in the CE (1.8). */
  temperature: number;
  /** Source batches update BN's running statistics (`model.bnStats: 'all'`). */
  trackSource: boolean;
  /** A target forward without gradient updates BN's running statistics first (`model.bnStats: 'target'`, no adversarial term). */
  targetStats: boolean;
}

/**
 * One warm-up step on one thread (REFERENCE 1 step 1): source CE on logits / temperature, plus, when
 * `nets.disc` is set, lambda_adv * BCE(D(target softmax), source) and then D's own update on the
 * detached source (tempered) and target predictions. `target` is null when neither the adversarial term
 * nor target BN statistics need it. Call inside tf.tidy. Also what `bench/warmup-step.ts` times.
 */
export function warmupStep(
  nets: WarmupNets,
  batch: { source: tf.Tensor4D; labels: tf.Tensor3D; target: tf.Tensor4D | null },
  o: WarmupStepOptions,
): { losses: Record<string, number>; lr: number; lrs?: Record<string, number>; skipped: boolean } {
  const { model, disc } = nets;
  const xt = batch.target;
  // D's input, from the net's pass (set inside the gradient closure)
  const held: { kept: KeptPredictions | null } = { kept: null };
  const g = applyIfFinite(
    (): { total: tf.Scalar; terms: Record<string, tf.Scalar> } => {
      // the source CE of the shard program (and its target statistics pass), on the whole batch
      const { ce: seg, logits: ls } = warmupLoss(model, batch.source, batch.labels, xt, o);
      if (!disc) return { total: seg, terms: { seg } };
      const term = adversarialTerm(model, disc.net, xt!, ls, o);
      held.kept = term.kept;
      return { total: tf.add(seg, term.adv) as tf.Scalar, terms: { seg, adv: term.adv } };
    },
    nets.params,
    nets.opt,
    o.lr,
  );
  if (!disc) return { losses: g.losses, lr: o.lr, skipped: !g.finite };
  const kept = held.kept!;
  const d = applyIfFinite(() => ({ total: discriminatorLoss(disc.net, kept), terms: {} }), disc.params, disc.opt, o.lrD);
  disposeKept(kept);
  return {
    losses: { ...g.losses, disc: d.losses.total! },
    lr: o.lr,
    lrs: { discriminator: o.lrD },
    skipped: !g.finite || !d.finite,
  };
}

/**
 * `warmupStep` with its batch split over data-parallel replicas: the program of warmup-shard.ts, or
 * with a discriminator warmup-adversarial-shard.ts's two calls (the net's update, then D's on the
 * predictions each replica kept). `batch`: images and labels of the source, `target` when the step
 * reads one. Over all replicas: the one-thread step to float tolerance (test/parallel).
 */
export function parallelWarmupStep(
  dp: DataParallel,
  nets: WarmupNets,
  batch: HostTensors,
  o: WarmupStepOptions,
  bn: BnMode,
): { losses: Record<string, number>; lr: number; lrs?: Record<string, number>; skipped: boolean } {
  if (!nets.disc) {
    const args: WarmupShardArgs = { bn, temperature: o.temperature, trackSource: o.trackSource, targetStats: o.targetStats };
    const g = parallelApplyIfFinite(dp, batch, { ...args }, nets.params, nets.opt, o.lr);
    return { losses: g.losses, lr: o.lr, skipped: !g.finite };
  }
  const args: AdversarialShardArgs = {
    stage: 'generator',
    bn,
    temperature: o.temperature,
    lambdaAdv: o.lambdaAdv,
    trackSource: o.trackSource,
  };
  const g = parallelApplyIfFinite(dp, batch, { ...args }, nets.params, nets.opt, o.lr);
  const d = parallelApplyIfFinite(dp, {}, { ...args, stage: 'discriminator' }, nets.disc.params, nets.disc.opt, o.lrD);
  return {
    losses: { ...g.losses, disc: d.losses.total! },
    lr: o.lr,
    lrs: { discriminator: o.lrD },
    skipped: !g.finite || !d.finite,
  };
}

/**
 * The phases of the SPCL recipe (REFERENCE 1), each composed from stages:
 * warm-up (source CE /1.8 + output-space adversarial), prototype initialisation, thresholds +
 * pseudo-labels, contrastive training (seg + lambda (Lcl_s + Lcl_t), prototype EMA each step), and
 * self-training on target pseudo-labels with trainable BN. Each training phase starts a fresh optimiser
 * and iteration counter from the current weights (as the authors' scripts do), checkpoints every
 * `checkpoint.every` iterations and at its end, and is resumable from its last checkpoint.
 */
import { basename } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { NEVER, fromEvent, lastValueFrom, map, of, take, takeUntil, toArray, zip, type Observable } from 'rxjs';
import type { AugmentSpec } from '../data/augment.ts';
import { bceWithLogits, contrastiveLoss, detach, segCrossEntropy } from '../ops/losses.ts';
import { downsampleLabels, refineSourceMask } from '../ops/masks.ts';
import { discriminator, type Discriminator } from '../ops/model/discriminator.ts';
import type { Param } from '../ops/model/params.ts';
import { Adam, SGD, polyLR, type OptimizerState } from '../ops/optim.ts';
import { modelState, type CheckpointState } from '../io/weights.ts';
import type { Batch } from '../stages/collate.ts';
import { estimateThresholds } from '../stages/estimate-thresholds.ts';
import { evaluate, type EvalReport } from '../stages/evaluate.ts';
import { NonFiniteStreak, applyIfFinite, forceNonFinite, nonFiniteInjection, trainStep, type StepReport } from '../stages/train-step.ts';
import { accumulatePrototypes, batchTensors } from '../stages/update-prototypes.ts';
import { writeGeneration } from '../stages/write-pseudo-labels.ts';
import type { GenerationInfo } from '../data/pseudo-labels.ts';
import { AbortedError, failOnAbort } from '../graph/flow.ts';
import { batches, type PhaseResultLike, type RunContext } from './context.ts';
import type { PhaseName, TrainPhaseConfig } from './config.ts';

export type PhaseResult = PhaseResultLike;

/** Where a training phase resumes: iteration and optimiser states from a checkpoint. */
export interface ResumePoint {
  iteration: number;
  /** Loss terms of the step that reached `iteration` (the phase's result when no step is left). */
  losses?: Record<string, number>;
  optimizer?: OptimizerState;
  discriminator?: Map<string, tf.Tensor>;
  discriminatorOptimizer?: OptimizerState;
}

const JITTER = { brightness: 0.5, contrast: 0.5, saturation: 0.5, hue: 0.2 };

export function specs(ctx: RunContext) {
  const { source, target, eval: ev } = ctx.cfg.size;
  return {
    sourceTrain: { jitter: JITTER, resize: source } satisfies AugmentSpec,
    sourcePlain: { resize: source } satisfies AugmentSpec,
    targetPlain: { resize: target } satisfies AugmentSpec,
    targetSsl: { ...(ctx.cfg.ssl.jitter ? { jitter: JITTER } : {}), scale: ctx.cfg.ssl.scale, crop: target, flipProb: 0.5 } satisfies AugmentSpec,
    evaluation: { resize: ev, resizeLabel: false } satisfies AugmentSpec,
  };
}

export function sgd(ctx: RunContext, params: Param[]): SGD {
  const o = ctx.cfg.optimizer;
  return new SGD([
    { params: params.filter((p) => p.group === 'backbone'), lrMult: 1 },
    { params: params.filter((p) => p.group === 'classifier'), lrMult: o.classifierLrMult },
  ], { momentum: o.momentum, weightDecay: o.weightDecay });
}

/** Loads a checkpointed optimiser state (the optimiser takes its own references; ours are freed). */
export function restoreOptimizer(opt: SGD | Adam, state: OptimizerState | undefined): void {
  if (!state) return;
  opt.setState(state);
  tf.dispose([...state.slots.values()]);
}

export const release = (b: Batch) => b.release();

/** Jittered, labelled source training batches on seed stream `stream`, resumed after `steps` batches. */
export function sourceBatches(ctx: RunContext, stream: number, steps: number): Observable<Batch> {
  const n = ctx.cfg.batch.source;
  return batches(ctx, { domain: 'source', spec: specs(ctx).sourceTrain, batchSize: n, mode: 'train', stream, start: steps * n });
}

/**
 * Training batches of the two-domain phases: a jittered source batch with its labels and a resized
 * target batch (labels from `pseudo`, or none), side by side; streams `stream` and `stream + 1`, resumed
 * after `start` iterations.
 */
function sourceTargetPairs(ctx: RunContext, start: number, stream: number, pseudo: string | null): Observable<{ s: Batch; t: Batch }> {
  const n = ctx.cfg.batch.target;
  const src = sourceBatches(ctx, stream, start);
  const tgt = batches(ctx, { domain: 'target', spec: specs(ctx).targetPlain, batchSize: n, mode: 'train', stream: stream + 1, start: start * n, pseudo });
  return zip(src, tgt).pipe(map(([a, b]) => ({ s: a, t: b })));
}

/** Releases a training step's batches: a source and a target one, either absent in some phases. */
export const releaseBatches = ({ s, t }: { s: Batch | null; t: Batch | null }) => {
  s?.release();
  t?.release();
};

/** A pass stopped by SIGINT/SIGTERM: logged, and its partial result discarded (null). */
async function unlessAborted<T>(ctx: RunContext, what: string, pass: Promise<T>): Promise<T | null> {
  try {
    return await pass;
  } catch (err) {
    if (!(err instanceof AbortedError)) throw err;
    ctx.events.log(`${what}: stopped by a signal; nothing of this pass is kept, --resume runs it again`);
    return null;
  }
}

/** Evaluation pass over the labelled target validation set (null when there is none, or when stopped by a signal). */
export async function evaluatePhase(ctx: RunContext, phase: string): Promise<EvalReport | null> {
  if (!ctx.data.targetVal) return null;
  const report = await unlessAborted(ctx, `${phase}: evaluation`, lastValueFrom(batches(ctx, { domain: 'targetVal', spec: specs(ctx).evaluation, batchSize: 4, mode: 'pass', stream: 900 }).pipe(
    failOnAbort(ctx.signal, 'evaluation'),
    evaluate({ model: ctx.model, numClasses: ctx.cfg.data.numClasses, release }),
  )));
  if (!report) return null;
  ctx.events.log(`${phase}: target val mIoU ${(100 * report.miou).toFixed(2)} over ${report.images} images`);
  ctx.events.evaluated?.(phase, report);
  return report;
}

export function checkpointState(ctx: RunContext, phase: PhaseName, iteration: number, extra: Partial<CheckpointState> = {}): CheckpointState {
  const ex = new Map<string, tf.Tensor>();
  if (ctx.prototypes.ready) ex.set('prototypes', ctx.prototypes.tensor);
  return {
    model: modelState(ctx.model),
    extra: ex,
    ...extra,
    meta: {
      ...extra.meta,
      phase, iteration, done: ctx.done, results: ctx.results, bn: ctx.model.batchNorm, thresholds: ctx.thresholds, pseudo: ctx.pseudo,
      continuous: ctx.continuous, lrScale: ctx.lrScale, rollbacks: ctx.rollbacks,
      preset: ctx.cfg.preset, seed: ctx.cfg.seed, backend: ctx.backend, savedAt: new Date().toISOString(),
      backbone: ctx.cfg.model.backbone, numClasses: ctx.cfg.data.numClasses, size: ctx.cfg.size,
    },
  };
}

/** Test fault injection of non-finite steps (SPCL_INJECT_NONFINITE), once per process across phases and rollbacks. */
const injected = nonFiniteInjection(process.env.SPCL_INJECT_NONFINITE);

/** What the continuous phase adds to the shared training loop. */
export interface TrainExtras {
  /** Ends the loop after the step in progress when it emits (a pseudo-label refresh is due). */
  until?: Observable<unknown>;
  /** Evaluation period in iterations (default: eval.every, or checkpoint.every with best-val). */
  evalEvery?: number;
  /** How the progress line names the end (default: the phase's iterations). */
  total?: string;
}

/**
 * Shared loop of the training phases: take `iterations - start` batches from `input`, run `step`,
 * log, checkpoint every `checkpoint.every` and at the end.
 */
export async function train<B>(ctx: RunContext, phase: PhaseName, pc: TrainPhaseConfig, resume: ResumePoint, input: Observable<B>,
  step: (batch: B, iteration: number) => { losses: Record<string, number>; lr: number; skipped?: boolean },
  releaseBatch: (b: B) => void, state: (iteration: number) => Partial<CheckpointState>, extras: TrainExtras = {}): Promise<PhaseResult> {
  const t0 = performance.now();
  const start = resume.iteration;
  const finite = (l: Record<string, number>) => Object.fromEntries(Object.entries(l).filter(([, v]) => Number.isFinite(v)));
  // the last step's losses go into the checkpoint: a resume with no step left still reports them
  const withLosses = (it: number, losses: Record<string, number>) => ({ ...state(it), meta: { losses: finite(losses) } });
  const every = ctx.cfg.checkpoint.every;
  // best-val selection needs a validation score at every checkpoint
  const evalEvery = extras.evalEvery ?? (ctx.cfg.checkpoint.select === 'best-val' && every > 0 ? every : ctx.cfg.eval.every);
  const total = extras.total ?? String(pc.iterations);
  const starv = (ctx.starvation[phase] ??= { wait: 0, compute: 0 });
  let last: StepReport | null = null;
  let streak: StepReport[] = [];
  const guardedStep = (batch: B, iteration: number) => {
    forceNonFinite(injected(phase, iteration + 1));
    try {
      return step(batch, iteration);
    } finally {
      forceNonFinite(false);
    }
  };
  const stop$ = ctx.signal ? (ctx.signal.aborted ? of(true) : fromEvent(ctx.signal, 'abort')) : NEVER;
  const reports = input.pipe(
    take(Math.max(0, pc.iterations - start)),
    takeUntil(stop$),
    takeUntil(extras.until ?? NEVER),
    trainStep({
      phase, startIteration: start, step: guardedStep, release: releaseBatch, stop: ctx.signal,
      after: async (r) => {
        last = r;
        starv.wait += r.waitSeconds;
        starv.compute += r.seconds;
        ctx.events.step?.(r);
        if (r.iteration % ctx.cfg.logEvery === 0 || r.iteration === pc.iterations) {
          const terms = Object.entries(r.losses).map(([k, v]) => `${k} ${v.toFixed(4)}`).join('  ');
          ctx.events.log(`${phase} ${r.iteration}/${total}  ${terms}  lr ${r.lr.toExponential(2)}  ${(1000 * r.seconds).toFixed(0)} ms/step  wait ${(1000 * r.waitSeconds).toFixed(0)} ms${r.skipped ? '  (update skipped: non-finite loss)' : ''}`);
        }
        streak = r.skipped ? [...streak, r] : [];
        if (streak.length >= ctx.cfg.nonFinite.limit) throw new NonFiniteStreak(phase, streak);
        if (r.iteration >= pc.iterations) return; // the end of the phase is evaluated and saved by the caller
        const evalNow = evalEvery > 0 && r.iteration % evalEvery === 0;
        // no checkpoint while non-finite steps are piling up: a rollback must land before the trouble
        const saveNow = every > 0 && r.iteration % every === 0 && streak.length === 0;
        // Evaluation and checkpoint between steps: the weights do not move meanwhile.
        const miou = evalNow ? (await evaluatePhase(ctx, `${phase} ${r.iteration}`))?.miou ?? null : null;
        if (saveNow) await ctx.checkpoints.save(checkpointState(ctx, phase, r.iteration, withLosses(r.iteration, r.losses)), phase, r.iteration, miou);
      },
    }),
    toArray(),
  );
  await lastValueFrom(reports);
  const finished = last as StepReport | null;
  const reached = finished?.iteration ?? start;
  const losses = finite(finished?.losses ?? resume.losses ?? {});
  await ctx.checkpoints.save(checkpointState(ctx, phase, reached, withLosses(reached, losses)), phase, reached);
  // a signal is the only thing that ends a phase early (the continuous phase's refreshes are not a stop)
  const aborted = Boolean(ctx.signal?.aborted) && reached < pc.iterations;
  if (aborted) ctx.events.log(`${phase}: stopped at iteration ${reached}/${total}; checkpoint written, --resume continues`);
  return { phase, seconds: (performance.now() - t0) / 1000, iterations: reached, eval: null, losses, aborted };
}

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
    ? sourceTargetPairs(ctx, start, 11, null)
    : sourceBatches(ctx, 11, start).pipe(map((s) => ({ s, t: null as Batch | null })));
  try {
    return await train(ctx, 'warmup', w, resume, input, ({ s: sb, t: tb }, it) => {
      const lr = polyLR(w.lr, it, w.maxIter) * ctx.lrScale;
      const lrD = polyLR(w.lrD, it, w.maxIter) * ctx.lrScale;
      return tf.tidy(() => {
        const xs = batchTensors(sb);
        const xt = tb ? batchTensors(tb).images : null;
        let predS: tf.Tensor4D | null = null;
        let predT: tf.Tensor4D | null = null;
        // the weights of this step, as the adversarial target pass would see them
        if (targetStats) tf.tidy(() => { model.forward(xt!, { training: true, trackStats: true }); });
        const g = applyIfFinite((): { total: tf.Scalar; terms: Record<string, tf.Scalar> } => {
          // source batches update BN's running statistics unless they follow the target (model.bnStats)
          const ls = tf.image.resizeBilinear(model.forward(xs.images, { training: true, trackStats: trackSource }).logits, [sb.labelHeight, sb.labelWidth], true);
          const seg = segCrossEntropy(ls, xs.labels!, { temperature: w.sourceTemperature });
          if (!adversarial) return { total: seg, terms: { seg } };
          const lt = tf.image.resizeBilinear(model.forward(xt!, { training: true }).logits, [tb!.height, tb!.width], true);
          const pt = tf.softmax(lt) as tf.Tensor4D;
          const adv = tf.mul(bceWithLogits(disc.forward(pt), 0), w.lambdaAdv) as tf.Scalar;
          // D sees the /1.8-tempered source prediction and the plain target one (REFERENCE 8.11), detached.
          predS = tf.keep(tf.softmax(tf.div(ls, w.sourceTemperature)) as tf.Tensor4D);
          predT = tf.keep(pt);
          return { total: tf.add(seg, adv) as tf.Scalar, terms: { seg, adv } };
        }, params, opt, lr);
        const samples = { source: sb.n, target: tb ? tb.n : 0 };
        if (!adversarial) return { losses: g.losses, lr, skipped: !g.finite, samples };
        const d = applyIfFinite(() => {
          const l = tf.add(tf.mul(bceWithLogits(disc.forward(predS!), 0), 0.5), tf.mul(bceWithLogits(disc.forward(predT!), 1), 0.5)) as tf.Scalar;
          return { total: l, terms: {} };
        }, dParams, dOpt, lrD);
        tf.dispose([predS!, predT!]);
        return { losses: { ...g.losses, disc: d.losses.total! }, lr, lrs: { discriminator: lrD }, skipped: !g.finite || !d.finite, samples };
      });
    }, releaseBatches, () => ({ optimizer: opt.getState(), discriminator: new Map([...disc.store.params].map(([k, p]) => [k, p.variable as tf.Tensor])), discriminatorOptimizer: dOpt.getState() }));
  } finally {
    opt.dispose();
    dOpt.dispose();
    disc.dispose();
  }
}

/** Step 3: prototypes over the whole source set (eval mode, no augmentation, agreement filter). */
export async function prototypesPhase(ctx: RunContext): Promise<PhaseResult> {
  const t0 = performance.now();
  const r = await unlessAborted(ctx, 'prototypes', lastValueFrom(batches(ctx, { domain: 'source', spec: specs(ctx).sourcePlain, batchSize: 4, mode: 'pass', stream: 30 }).pipe(
    failOnAbort(ctx.signal, 'prototypes'),
    accumulatePrototypes({
      model: ctx.model, numClasses: ctx.cfg.data.numClasses, refine: ctx.cfg.spcl.refineSource, release,
      bnStats: ctx.cfg.model.bnStats === 'target' && ctx.model.batchNorm === 'trainable' ? 'batch' : 'running',
    }),
  )));
  if (!r) return { phase: 'prototypes', seconds: (performance.now() - t0) / 1000, iterations: 0, eval: null, losses: {}, aborted: true };
  ctx.prototypes.set(r.prototypes);
  r.prototypes.dispose();
  ctx.events.prototypes?.(ctx.prototypes);
  const names = ctx.data.source.manifest.classNames;
  ctx.events.log(`prototypes: ${ctx.cfg.data.numClasses - r.missing.length} classes initialised` +
    (r.missing.length ? `; never seen (kept at 0): ${r.missing.map((k) => names[k]).join(', ')}` : ''));
  return { phase: 'prototypes', seconds: (performance.now() - t0) / 1000, iterations: 0, eval: null, losses: {} };
}

/** Steps 4 and 7: thresholds (per-class upper median, capped) and pseudo-labels, one model pass. */
export async function pseudoLabelPhase(ctx: RunContext, phase: PhaseName): Promise<PhaseResult> {
  const t0 = performance.now();
  const info = await refreshPseudoLabels(ctx, phase, { phase }, phase === 'pseudo-labels' ? ctx.cfg.pseudo.cap : ctx.cfg.ssl.pseudoCap);
  return { phase, seconds: (performance.now() - t0) / 1000, iterations: 0, eval: null, losses: {}, aborted: info === null };
}

/**
 * One thresholds + pseudo-labels pass over every target image known now, written as a new generation and
 * made current (ctx.thresholds, ctx.pseudo). `source` is the generation's provenance; `cap` the thresholds'
 * confidence cap (pseudo.cap for the first pass, ssl.pseudoCap for the ones self-training learns from).
 * Null when a signal stopped it: nothing of the pass is kept and the current generation stays.
 */
export async function refreshPseudoLabels(ctx: RunContext, label: string, source: Record<string, unknown>, cap: number): Promise<GenerationInfo | null> {
  const { cfg } = ctx;
  const made = await unlessAborted(ctx, label, (async () => {
    const t = await lastValueFrom(batches(ctx, { domain: 'target', spec: specs(ctx).targetPlain, batchSize: 4, mode: 'pass', stream: 40 }).pipe(
      failOnAbort(ctx.signal, 'thresholds'),
      estimateThresholds({ model: ctx.model, numClasses: cfg.data.numClasses, bins: cfg.pseudo.bins, cap, scratch: ctx.dirs.scratch, release }),
    ));
    // generations that retained checkpoints (or this run) use stay: a resume from one of them needs its labels
    const pinned = await ctx.checkpoints.pseudoLabelGenerations();
    if (ctx.pseudo) pinned.add(basename(ctx.pseudo));
    return { t, info: await writeGeneration(t, { dir: ctx.dirs.pseudo, numClasses: cfg.data.numClasses, keep: cfg.pseudo.keep, source: { ...source, cap }, pinned, signal: ctx.signal }) };
  })());
  if (!made) return null;
  const { t, info } = made;
  ctx.thresholds = t.thresholds;
  ctx.pseudo = `${ctx.dirs.pseudo}/${info.file}`;
  ctx.events.pseudoLabels?.(info, t.counts);
  const labelled = info.coverage.reduce((a, c, k) => a + c * t.counts[k]!, 0) / Math.max(1, t.counts.reduce((a, b) => a + b, 0));
  ctx.events.log(`${label}: generation ${info.generation}, ${info.count} images, ${(100 * labelled).toFixed(1)}% of pixels labelled; ` +
    `thresholds (cap ${cap}) ${t.thresholds.map((v) => v.toFixed(2)).join(' ')}`);
  return info;
}

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
    return await train(ctx, 'spcl', c, resume, sourceTargetPairs(ctx, start, 51, ctx.pseudo), ({ s: sb, t: tb }, it) => {
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
    }, releaseBatches, () => ({ optimizer: opt.getState() }));
  } finally {
    opt.dispose();
  }
}

/** Step 8: self-training on target pseudo-labels only, trainable BN (ssl.bn), plain CE. */
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
  const tgt = batches(ctx, { domain: 'target', spec: specs(ctx).targetSsl, batchSize: size, mode: 'train', stream: 81, start: start * size, pseudo: ctx.pseudo });
  // ssl.sourceWeight > 0: a labelled source batch beside each target batch (not in the paper; a documented switch)
  const input = c.sourceWeight > 0
    ? zip(tgt, sourceBatches(ctx, 82, start))
      .pipe(map(([t, s]) => ({ t, s: s as Batch | null })))
    : tgt.pipe(map((t) => ({ t, s: null as Batch | null })));
  const lrAt = (it: number) => polyLR(c.lr, it, c.maxIter) * ctx.lrScale;
  try {
    return await train(ctx, 'ssl', c, resume, input, anchoredSelfTrainingStep(params, opt, lrAt, ctx, c.sourceWeight, c.pseudoWeight), releaseBatches, () => ({ optimizer: opt.getState() }));
  } finally {
    opt.dispose();
  }
}

/**
 * One self-training step (REFERENCE 1 step 8): `pseudoWeight` (1 = the paper) x the cross-entropy of the
 * target prediction against its pseudo-labels, plus `sourceWeight` x the cross-entropy of a labelled
 * source batch when one comes along (`ssl.sourceWeight`, `continuous.sourceWeight`; 0 = none, the paper).
 */
export function anchoredSelfTrainingStep(params: Param[], opt: SGD, lrAt: (iteration: number) => number, ctx: RunContext, sourceWeight: number, pseudoWeight = 1) {
  return ({ t: tb, s: sb }: { t: Batch; s: Batch | null }, it: number) => {
    const lr = lrAt(it);
    return tf.tidy(() => {
      const xt = batchTensors(tb);
      const xs = sb && sourceWeight > 0 ? batchTensors(sb) : null;
      const g = applyIfFinite((): { total: tf.Scalar; terms: Record<string, tf.Scalar> } => {
        const lt = tf.image.resizeBilinear(ctx.model.forward(xt.images, { training: true }).logits, [tb.labelHeight, tb.labelWidth], true);
        const ce = segCrossEntropy(lt, xt.labels!);
        const ssl = pseudoWeight === 1 ? ce : tf.mul(ce, pseudoWeight) as tf.Scalar;
        if (!xs) return { total: ssl, terms: { ssl } };
        const ls = tf.image.resizeBilinear(ctx.model.forward(xs.images, { training: true, trackStats: ctx.cfg.model.bnStats === 'all' }).logits, [sb!.labelHeight, sb!.labelWidth], true);
        const source = segCrossEntropy(ls, xs.labels!);
        return { total: tf.add(ssl, tf.mul(source, sourceWeight)) as tf.Scalar, terms: { ssl, source } };
      }, params, opt, lr);
      return { losses: g.losses, lr, skipped: !g.finite, samples: { target: tb.n, source: xs ? sb!.n : 0 } };
    });
  };
}

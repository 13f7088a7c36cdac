/**
 * The generic trainer: what every method phase uses and none owns. The training loop (`train`: steps,
 * progress lines, step events, checkpoints every `checkpoint.every`, evaluations on schedule, the
 * non-finite streak that triggers a rollback), the checkpoint state, the evaluation pass, the optimiser
 * and the run's batch streams. It knows no method: the step function, its batches and what it adds to
 * a checkpoint come from the method (src/methods).
 */
import * as tf from '@tensorflow/tfjs';
import { NEVER, fromEvent, lastValueFrom, map, of, take, takeUntil, toArray, zip, type Observable } from 'rxjs';
import { augmentSpecs } from '../data/augment.ts';
import type { Param } from '../ops/model/params.ts';
import { Adam, SGD, type OptimizerState } from '../ops/optim.ts';
import { modelState, type CheckpointState } from '../io/weights.ts';
import type { Batch } from '../stages/collate.ts';
import { evaluate, type EvalReport } from '../stages/evaluate.ts';
import { NonFiniteStreak, forceNonFinite, nonFiniteInjection, trainStep, type StepOutcome, type StepReport } from '../stages/train-step.ts';
import { AbortedError, failOnAbort } from '../graph/flow.ts';
import { batches, type PhaseResultLike, type RunContext } from './context.ts';
import { STREAMS, targetStreamOf } from './streams.ts';
import { availableParallelism } from 'node:os';
import { DataParallel } from '../parallel/data-parallel.ts';
import { deeplabReplica, describeDeeplab } from '../parallel/deeplab-replica.ts';
import type { SpclConfig, TrainPhaseConfig } from './config.ts';
import type { BackendName } from '../ops/backend.ts';
import type { HostTensors, Replica } from '../parallel/program.ts';

export type PhaseResult = PhaseResultLike;

/** Where a training phase resumes: iteration and optimiser states from a checkpoint. */
export interface ResumePoint {
  iteration: number;
  /** Loss terms of the step that reached `iteration` (the phase's result when no step is left). */
  losses?: Record<string, number>;
  optimizer?: OptimizerState;
  discriminator?: Map<string, tf.Tensor>;
  discriminatorOptimizer?: OptimizerState;
  /** A method's own tensors from the checkpoint's extra section (copies: the method disposes them). */
  extra?: Map<string, tf.Tensor>;
}

/** The recipe's augmentation specs at the run's sizes (REFERENCE 6.3; `augmentSpecs` is the one source). */
export function specs(ctx: RunContext) {
  return augmentSpecs({ ...ctx.cfg.size, ssl: ctx.cfg.ssl });
}

export function sgd(ctx: RunContext, params: Param[]): SGD {
  const o = ctx.cfg.optimizer;
  return new SGD(
    [
      { params: params.filter((p) => p.group === 'backbone'), lrMult: 1 },
      { params: params.filter((p) => p.group === 'classifier'), lrMult: o.classifierLrMult },
    ],
    { momentum: o.momentum, weightDecay: o.weightDecay },
  );
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
  return batches(ctx, { domain: 'source', spec: specs(ctx).warmupSource, batchSize: n, mode: 'train', stream, start: steps * n });
}

/**
 * Training batches of the two-domain phases: a jittered source batch with its labels and a resized
 * target batch (labels from `pseudo`, or none), side by side; streams `stream` and `stream + 1`, resumed
 * after `start` iterations.
 */
export function sourceTargetPairs(
  ctx: RunContext,
  start: number,
  stream: number,
  pseudo: string | null,
): Observable<{ s: Batch; t: Batch }> {
  const n = ctx.cfg.batch.target;
  const src = sourceBatches(ctx, stream, start);
  const tgt = batches(ctx, {
    domain: 'target',
    spec: specs(ctx).warmupTarget,
    batchSize: n,
    mode: 'train',
    stream: targetStreamOf(stream),
    start: start * n,
    pseudo,
  });
  return zip(src, tgt).pipe(map(([a, b]) => ({ s: a, t: b })));
}

/** Releases a training step's batches: a source and a target one, either absent in some phases. */
export const releaseBatches = ({ s, t }: { s: Batch | null; t: Batch | null }) => {
  s?.release();
  t?.release();
};

/**
 * Replicas `train.threads` asks for on `backend`, before a phase's batch size caps them. 0 = auto: one
 * on wasm, whose kernel threads take the cores (the same results as one thread, and on this 2-core VM
 * the recipe 6-12 % faster than one replica per core: README "Kernel threads"), one per core on cpu.
 */
export function replicasAsked(cfg: SpclConfig, backend: BackendName): number {
  if (cfg.train.threads > 0) return cfg.train.threads;
  return backend === 'cpu' ? availableParallelism() : 1;
}

/** Kernel threads of each replica's wasm backend: `train.kernelThreads`, 0 = the cores left to each replica. */
export function kernelThreadsOf(cfg: SpclConfig): number {
  return cfg.train.kernelThreads || Math.max(1, Math.floor(availableParallelism() / replicasAsked(cfg, 'wasm')));
}

/**
 * Data-parallel replicas of the run's model for a phase whose step is the program in `module`
 * (src/parallel), on the wasm or cpu backend: `train.threads` of them (0 = auto: `replicasAsked`), at most the
 * phase's smallest batch (`rows`: every replica needs a row of each batch); null = the phase's one-thread
 * step. `main`: the main thread's replica and what a
 * worker builds its own from (default: the run's model alone).
 */
export async function startDataParallel(
  ctx: RunContext,
  phase: string,
  module: string,
  rows: number,
  main: { replica: Replica; description: unknown } = { replica: deeplabReplica(ctx.model), description: describeDeeplab(ctx.model) },
): Promise<DataParallel | null> {
  const asked = ctx.cfg.train.threads;
  const wanted = replicasAsked(ctx.cfg, ctx.backend);
  if (wanted <= 1) return null;
  if (ctx.backend === 'tensorflow') {
    if (asked > 1) ctx.events.log(`${phase}: train.threads ${asked} ignored: the tensorflow backend runs its own threads`);
    return null;
  }
  const threads = Math.min(wanted, rows);
  if (threads < wanted && asked > 0)
    ctx.events.log(`${phase}: ${threads} threads, not ${asked}: a batch of ${rows} splits into at most ${rows} shards`);
  if (threads <= 1) return null;
  const t0 = performance.now();
  const dp = await DataParallel.start({
    threads,
    backend: ctx.backend,
    program: { module, description: main.description },
    replica: main.replica,
    kernelThreads: kernelThreadsOf(ctx.cfg),
  });
  ctx.events.log(
    `${phase}: data-parallel over ${threads} threads (this one and ${threads - 1} worker${threads === 2 ? '' : 's'}${kernels(dp.workerKernelThreads)}, ready in ${((performance.now() - t0) / 1000).toFixed(1)} s)`,
  );
  return dp;
}

/** ', K kernel threads each' where the workers' wasm backends run more than one. */
function kernels(counts: number[]): string {
  const most = Math.max(1, ...counts);
  return most > 1 ? `, ${counts.every((c) => c === most) ? most : counts.join('/')} kernel threads each` : '';
}

/** A batch's host arrays for a data-parallel step: images, and labels when it has them. */
export function hostBatch(b: Batch): HostTensors {
  return {
    images: { data: b.images, shape: [b.n, b.height, b.width, 3] },
    ...(b.labels ? { labels: { data: b.labels, shape: [b.n, b.labelHeight, b.labelWidth] } } : {}),
  };
}

/** A pass stopped by SIGINT/SIGTERM: logged, and its partial result discarded (null). */
export async function unlessAborted<T>(ctx: RunContext, what: string, pass: Promise<T>): Promise<T | null> {
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
  const report = await unlessAborted(
    ctx,
    `${phase}: evaluation`,
    lastValueFrom(
      batches(ctx, { domain: 'targetVal', spec: specs(ctx).evaluation, batchSize: 4, mode: 'pass', stream: STREAMS.evaluation }).pipe(
        failOnAbort(ctx.signal, 'evaluation'),
        evaluate({ model: ctx.model, numClasses: ctx.cfg.data.numClasses, release }),
      ),
    ),
  );
  if (!report) return null;
  ctx.events.log(`${phase}: target val mIoU ${(100 * report.miou).toFixed(2)} over ${report.images} images`);
  ctx.events.evaluated?.(phase, report);
  return report;
}

export function checkpointState(ctx: RunContext, phase: string, iteration: number, extra: Partial<CheckpointState> = {}): CheckpointState {
  // a method's own tensors (borrowed: it keeps owning them) go into the extra section beside the prototypes
  const ex = new Map<string, tf.Tensor>(extra.extra ?? []);
  if (ctx.prototypes.ready) ex.set('prototypes', ctx.prototypes.tensor);
  return {
    model: modelState(ctx.model),
    ...extra,
    extra: ex,
    meta: {
      ...extra.meta,
      phase,
      iteration,
      done: ctx.done,
      results: ctx.results,
      bn: ctx.model.batchNorm,
      thresholds: ctx.thresholds,
      pseudo: ctx.pseudo,
      continuous: ctx.continuous,
      lrScale: ctx.lrScale,
      rollbacks: ctx.rollbacks,
      preset: ctx.cfg.preset,
      seed: ctx.cfg.seed,
      backend: ctx.backend,
      savedAt: new Date().toISOString(),
      backbone: ctx.cfg.model.backbone,
      numClasses: ctx.cfg.data.numClasses,
      size: ctx.cfg.size,
    },
  };
}

/** Test fault injection of non-finite steps (SPCL_INJECT_NONFINITE), once per process across phases and rollbacks. */
const injected = nonFiniteInjection(process.env.SPCL_INJECT_NONFINITE);

/** One training phase as the loop runs it: what the method gives `train`. */
export interface TrainLoop<B> {
  /** Phase name (logs, step reports, checkpoints). */
  phase: string;
  /** Its iterations (the loop ends there) and the poly schedule's horizon and base rate. */
  schedule: TrainPhaseConfig;
  /** Where it starts (iteration 0, or a checkpoint's). */
  resume: ResumePoint;
  /** Training batches, resumed at `resume.iteration`. */
  input: Observable<B>;
  /** One step on one batch: update the weights, report the loss terms and the learning rate. */
  step: (batch: B, iteration: number) => StepOutcome;
  /** Gives a batch's buffers back once its step is done. */
  release: (batch: B) => void;
  /**
   * What the method adds to each checkpoint beyond the model and prototypes: optimiser states, its own
   * tensors under `extra` (borrowed for the save; `resume.extra` hands copies back).
   */
  state: (iteration: number) => Partial<CheckpointState>;
  /** Ends the loop after the step in progress when it emits (the continuous phase: a pseudo-label refresh is due). */
  until?: Observable<unknown>;
  /** Evaluation period in iterations (default: eval.every, or checkpoint.every with best-val). */
  evalEvery?: number;
  /** How the progress line names the end (default: the phase's iterations). */
  total?: string;
  /** Called after each step with its report (after the run's own step event). */
  onStep?: (report: StepReport) => void;
}

/**
 * Shared loop of the training phases: take `iterations - start` batches from `input`, run `step`,
 * log, checkpoint every `checkpoint.every` and at the end.
 */
export async function train<B>(ctx: RunContext, loop: TrainLoop<B>): Promise<PhaseResult> {
  const { phase, schedule: pc, resume, input, step, state } = loop;
  const t0 = performance.now();
  const start = resume.iteration;
  const finite = (l: Record<string, number>) => Object.fromEntries(Object.entries(l).filter(([, v]) => Number.isFinite(v)));
  // the last step's losses go into the checkpoint: a resume with no step left still reports them
  const withLosses = (it: number, losses: Record<string, number>) => ({ ...state(it), meta: { losses: finite(losses) } });
  const every = ctx.cfg.checkpoint.every;
  // best-val selection needs a validation score at every checkpoint
  const evalEvery = loop.evalEvery ?? (ctx.cfg.checkpoint.select === 'best-val' && every > 0 ? every : ctx.cfg.eval.every);
  const total = loop.total ?? String(pc.iterations);
  const starv = (ctx.starvation[phase] ??= { wait: 0, compute: 0 });
  let last: StepReport | null = null;
  let streak: StepReport[] = [];
  // time left at this process's pace: of the phase (to `total` when it is a number) and of the run (the
  // later phases' steps at the same pace: a guide, their steps cost what theirs do)
  const end = Number(total);
  const eta = (iteration: number): string => {
    const perStep = (performance.now() - t0) / 1000 / Math.max(1, iteration - start);
    if (!Number.isFinite(end)) return '';
    const phaseLeft = perStep * Math.max(0, end - iteration);
    return `  eta ${duration(phaseLeft)}${ctx.stepsAfter > 0 ? `, run ${duration(phaseLeft + perStep * ctx.stepsAfter)}` : ''}`;
  };
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
    takeUntil(loop.until ?? NEVER),
    trainStep({
      phase,
      startIteration: start,
      step: guardedStep,
      release: loop.release,
      stop: ctx.signal,
      after: async (r) => {
        last = r;
        starv.wait += r.waitSeconds;
        starv.compute += r.seconds;
        ctx.events.step?.(r);
        loop.onStep?.(r);
        if (r.iteration % ctx.cfg.logEvery === 0 || r.iteration === pc.iterations) {
          const terms = Object.entries(r.losses)
            .map(([k, v]) => `${k} ${v.toFixed(4)}`)
            .join('  ');
          ctx.events.log(
            `${phase} ${r.iteration}/${total}  ${terms}  lr ${r.lr.toExponential(2)}  ${(1000 * r.seconds).toFixed(0)} ms/step  wait ${(1000 * r.waitSeconds).toFixed(0)} ms` +
              eta(r.iteration) +
              (r.skipped ? '  (update skipped: non-finite loss)' : ''),
          );
        }
        streak = r.skipped ? [...streak, r] : [];
        if (streak.length >= ctx.cfg.nonFinite.limit) throw new NonFiniteStreak(phase, streak);
        if (r.iteration >= pc.iterations) return; // the end of the phase is evaluated and saved by the caller
        const evalNow = evalEvery > 0 && r.iteration % evalEvery === 0;
        // no checkpoint while non-finite steps are piling up: a rollback must land before the trouble
        const saveNow = every > 0 && r.iteration % every === 0 && streak.length === 0;
        // Evaluation and checkpoint between steps: the weights do not move meanwhile.
        const miou = evalNow ? ((await evaluatePhase(ctx, `${phase} ${r.iteration}`))?.miou ?? null) : null;
        if (saveNow)
          await ctx.checkpoints.save(checkpointState(ctx, phase, r.iteration, withLosses(r.iteration, r.losses)), phase, r.iteration, miou);
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

/** Seconds as 45s, 12m05s or 3h20m. */
export function duration(seconds: number): string {
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

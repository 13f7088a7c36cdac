/**
 * The continuous phase (`--continuous`): self-training (REFERENCE 1 step 8) that goes on after the
 * recipe, or from any checkpoint, for as long as the process runs.
 *
 * - New target images arrive in the target dataset folder (a concurrent `pipelines/ingest.ts`, or a
 *   watched folder that the `watch-target` stage ingests itself); they enter training at the next refresh.
 * - A refresh is one thresholds + pseudo-labels pass over every target image known then (REFERENCE 5),
 *   written as a new generation and switched in atomically; old generations are pruned by `pseudo.keep`.
 *   It happens when the phase starts, every `continuous.refreshEvery` steps, and as soon as
 *   `continuous.refreshNewImages` images have no pseudo-label yet.
 * - Between refreshes, training samples the generation's own images (shuffled epochs whose seed is the
 *   refresh number), so a resumed run draws exactly the batches an uninterrupted one would have.
 * - Evaluation every `continuous.evalEvery` steps, checkpoints every `checkpoint.every` steps and after each
 *   refresh; each checkpoint holds the model, optimiser, prototypes, thresholds, the generation and the
 *   continuous state (refresh number, its first iteration, images covered).
 * The learning rate is constant (`continuous.lr`): a poly schedule has no end here. With
 * `continuous.sourceWeight` > 0 each step also trains on a labelled source batch (an anchor: relabelling
 * from the model being trained drifts, README "Reliability"). With `continuous.teacher` the refreshes label
 * from a mean teacher (src/recipe/teacher.ts: an EMA of the model, factor `continuous.teacherAlpha`, updated
 * after every step) instead of the model itself; the teacher is checkpointed with the rest.
 */
import * as tf from '@tensorflow/tfjs';
import { Subject, map, zip, type Observable } from 'rxjs';
import { generationKeys } from '../data/pseudo-labels.ts';
import { watchTarget, type TargetArrival } from '../stages/watch-target.ts';
import type { EvalReport } from '../stages/evaluate.ts';
import type { Batch } from '../stages/collate.ts';
import type { StepReport } from '../stages/train-step.ts';
import { batches, type RunContext } from '../recipe/context.ts';
import type { Method } from '../recipe/method.ts';
import { STREAMS } from '../recipe/streams.ts';
import { Teacher } from '../recipe/teacher.ts';
import {
  checkpointState,
  evaluatePhase,
  releaseBatches,
  restoreOptimizer,
  sgd,
  sourceBatches,
  specs,
  startDataParallel,
  train,
  type PhaseResult,
  type ResumePoint,
} from '../recipe/trainer.ts';
import { refreshPseudoLabels } from './pseudo-labels.ts';
import { anchoredSelfTrainingStep } from './self-training.ts';
import { SELF_TRAINING_SHARD } from './self-training-shard.ts';
import type { DataParallel } from '../parallel/data-parallel.ts';

/** Seed streams of refresh r: target STREAM_BASE + r, source SOURCE_STREAM_BASE + r (continuous.sourceWeight > 0). */
const STREAM_BASE = STREAMS.continuousTarget;
const SOURCE_STREAM_BASE = STREAMS.continuousSource;

type Step = { t: Batch; s: Batch | null };

export type RefreshTrigger = 'start' | 'steps' | 'arrivals';

/** What the continuous phase reports (report.json, tests). */
export interface ContinuousSummary {
  iterations: number;
  refreshes: number;
  refreshTriggers: Record<RefreshTrigger, number>;
  /** Target images known at the end, and those that arrived while the phase ran. */
  targetImages: number;
  arrived: number;
  ingested: number;
  ingestProblems: number;
  /** Images of the last generation. */
  generationImages: number;
  /** Refreshes labelled by a mean teacher (`continuous.teacher`) rather than the model being trained. */
  teacher: boolean;
  lastEval: EvalReport | null;
  /** Process and tfjs memory every `logEvery` steps (the last MEMORY_SAMPLES of them): a leak shows here. */
  memory: MemorySample[];
}

export interface MemorySample {
  iteration: number;
  /** Seconds since the phase started. */
  seconds: number;
  rss: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
  tensors: number;
  tensorBytes: number;
}

const MEMORY_SAMPLES = 2000;

function memorySample(iteration: number, seconds: number): MemorySample {
  const m = process.memoryUsage();
  const t = tf.memory();
  return {
    iteration,
    seconds,
    rss: m.rss,
    heapUsed: m.heapUsed,
    external: m.external,
    arrayBuffers: m.arrayBuffers,
    tensors: t.numTensors,
    tensorBytes: t.numBytes,
  };
}

export async function continuousPhase(
  ctx: RunContext,
  resume: ResumePoint = { iteration: 0 },
): Promise<PhaseResult & { summary: ContinuousSummary }> {
  const { cfg, model } = ctx;
  const c = cfg.continuous;
  const t0 = performance.now();
  model.setBatchNorm(cfg.ssl.bn);
  const params = model.trainableParams();
  const opt = sgd(ctx, params);
  restoreOptimizer(opt, resume.optimizer);
  const teacher = c.teacher ? new Teacher(ctx, resume, 'continuous') : null;
  if (!teacher)
    tf.dispose([...(resume.extra?.values() ?? [])]); // a teacher a checkpoint holds is not needed
  else ctx.events.log(`continuous: refreshes label from a mean teacher (EMA factor ${c.teacherAlpha} per step)`);
  /** The phase's own state in its checkpoints: the optimiser and, under continuous.teacher, the teacher. */
  const own = () => ({ optimizer: opt.getState(), ...(teacher ? { extra: teacher.state() } : {}) });
  const size = cfg.batch.source + cfg.batch.target;
  const end = c.steps > 0 ? c.steps : Infinity;
  const summary: ContinuousSummary = {
    iterations: resume.iteration,
    refreshes: 0,
    refreshTriggers: { start: 0, steps: 0, arrivals: 0 },
    targetImages: ctx.data.target.keys.length,
    arrived: 0,
    ingested: 0,
    ingestProblems: 0,
    generationImages: ctx.continuous?.images ?? 0,
    teacher: teacher !== null,
    lastEval: null,
    memory: [],
  };
  const sampleMemory = (r: StepReport) => {
    if (r.iteration % cfg.logEvery !== 0) return;
    summary.memory.push(memorySample(r.iteration, (performance.now() - t0) / 1000));
    if (summary.memory.length > MEMORY_SAMPLES) summary.memory.splice(0, summary.memory.length - MEMORY_SAMPLES);
  };
  const pending = () => ctx.data.target.keys.length - (ctx.continuous?.images ?? 0);
  const arrivalsDue = () => c.refreshNewImages > 0 && ctx.continuous !== null && pending() >= c.refreshNewImages;
  let segmentDue: Subject<void> | null = null;
  const onArrival = (a: TargetArrival) => {
    ctx.data.target = a.dataset;
    summary.arrived += a.added;
    summary.ingested += a.ingested;
    summary.ingestProblems += a.problems;
    summary.targetImages = a.dataset.keys.length;
    ctx.events.arrivals?.({ added: a.added, ingested: a.ingested, problems: a.problems, total: a.dataset.keys.length, pending: pending() });
    ctx.events.log(
      `continuous: ${a.added} new target images (${a.ingested} from the watched folder${a.problems ? `, ${a.problems} files with problems` : ''}); ` +
        `${a.dataset.keys.length} in all, ${pending()} without pseudo-labels yet`,
    );
    if (arrivalsDue()) segmentDue?.next();
  };
  const watching = watchTarget({
    dataset: ctx.data.target,
    watch: c.watch || null,
    pollSeconds: c.pollSeconds,
    settleSeconds: c.settleSeconds,
    log: ctx.events.log,
    signal: ctx.signal,
  }).subscribe({ next: onArrival, error: (err: Error) => ctx.events.log(`continuous: watching the target stopped: ${err.message}`) });

  let iteration = resume.iteration;
  let last: PhaseResult | null = null;
  let dp: DataParallel | null = null;
  try {
    // the replicas live as long as the phase: refreshes and evaluations between segments use the main
    // model only, and each step hands the replicas the main model's weights
    dp = await startDataParallel(ctx, 'continuous', SELF_TRAINING_SHARD, c.sourceWeight > 0 ? Math.min(size, cfg.batch.source) : size);
    while (iteration < end && !ctx.signal?.aborted) {
      const state = ctx.continuous;
      const trigger: RefreshTrigger | null =
        state === null || !ctx.pseudo
          ? 'start'
          : c.refreshEvery > 0 && iteration >= state.since + c.refreshEvery
            ? 'steps'
            : arrivalsDue()
              ? 'arrivals'
              : null;
      if (trigger) {
        const refresh = (state?.refresh ?? 0) + 1;
        const info = await refreshPseudoLabels(
          ctx,
          `continuous ${iteration}: refresh ${refresh} (${trigger})`,
          { phase: 'continuous', iteration, refresh, trigger },
          ctx.cfg.ssl.pseudoCap,
          teacher?.model,
        );
        if (!info) break; // stopped by a signal: the last checkpoint (before this refresh) stays the state
        ctx.continuous = { refresh, since: iteration, images: info.count };
        summary.refreshes++;
        summary.refreshTriggers[trigger]++;
        summary.generationImages = info.count;
        ctx.events.refreshed?.(trigger, pending());
        // the refresh is part of the state: a resume does not redo it
        await ctx.checkpoints.save(checkpointState(ctx, 'continuous', iteration, own()), 'continuous', iteration);
        continue; // the signal may have come meanwhile
      }
      const keys = await generationKeys(ctx.pseudo!);
      const segmentEnd = Math.min(end, c.refreshEvery > 0 ? state!.since + c.refreshEvery : Infinity);
      const target = batches(ctx, {
        domain: 'target',
        spec: specs(ctx).sslTarget,
        batchSize: size,
        mode: 'train',
        keys,
        pseudo: ctx.pseudo,
        stream: STREAM_BASE + state!.refresh,
        start: (iteration - state!.since) * size,
      });
      // the source anchor: labelled source batches beside the target ones, resumed at the same draw
      const input: Observable<Step> =
        c.sourceWeight > 0
          ? zip(target, sourceBatches(ctx, SOURCE_STREAM_BASE + state!.refresh, iteration - state!.since)).pipe(map(([t, s]) => ({ t, s })))
          : target.pipe(map((t) => ({ t, s: null })));
      segmentDue = new Subject<void>();
      const selfTrain = anchoredSelfTrainingStep(params, opt, () => c.lr * ctx.lrScale, ctx, c.sourceWeight, 1, dp);
      last = await train(ctx, {
        phase: 'continuous',
        schedule: { iterations: segmentEnd, maxIter: segmentEnd, lr: c.lr },
        resume: { iteration },
        input,
        release: releaseBatches,
        state: own,
        step: (batch: Step, it: number) => {
          const out = selfTrain(batch, it);
          if (teacher && !out.skipped) teacher.update(c.teacherAlpha); // after the student's update, as in the mean-teacher method
          return out;
        },
        until: segmentDue,
        evalEvery: c.evalEvery,
        total: c.steps > 0 ? String(c.steps) : 'inf',
        onStep: sampleMemory,
      });
      segmentDue = null;
      iteration = last.iterations;
      summary.iterations = iteration;
      if (last.aborted) break;
      if (c.evalEvery > 0 && iteration % c.evalEvery === 0 && iteration < end) {
        summary.lastEval = await evaluatePhase(ctx, `continuous ${iteration}`);
      }
    }
  } finally {
    watching.unsubscribe();
    await dp?.close();
    opt.dispose();
    teacher?.dispose();
  }
  summary.iterations = iteration;
  const aborted = Boolean(ctx.signal?.aborted) && iteration < end;
  return {
    phase: 'continuous',
    seconds: (performance.now() - t0) / 1000,
    iterations: iteration,
    eval: null,
    losses: last?.losses ?? {},
    aborted,
    summary,
  };
}

export const continuous: Method = { name: 'continuous', kind: 'endless', steps: (cfg) => cfg.continuous.steps, run: continuousPhase };

/**
 * Train-step stage: one optimisation step per batch on the tfjs backend. The phase plugs in its step
 * (losses, optimisers: REFERENCE 1); this stage owns what every phase needs: the batch goes back to the
 * pool after the step, the time the trainer waited for data is measured (starvation), non-finite losses
 * are reported and their update skipped by `applyIfFinite`, and a report is emitted per step.
 */
import * as tf from '@tensorflow/tfjs';
import { EMPTY, concatMap, defer, type OperatorFunction } from 'rxjs';
import type { Param } from '../ops/model/params.ts';
import { gradients, type SGD, type Adam } from '../ops/optim.ts';
import { crashPoint } from '../io/crash-points.ts';
import type { HostTensors, ProgramArgs } from '../parallel/program.ts';
import type { Prototypes } from './update-prototypes.ts';

export interface StepReport {
  phase: string;
  /** Completed iterations after this step (1-based). */
  iteration: number;
  losses: Record<string, number>;
  lr: number;
  /** Step compute seconds. */
  seconds: number;
  /** Seconds the trainer waited for this batch (data starvation). */
  waitSeconds: number;
  /** The update was skipped (non-finite loss). */
  skipped: boolean;
  /** Learning rates of further optimiser groups of the step (e.g. discriminator). */
  lrs?: Record<string, number>;
  /** Images the step trained on, by domain. */
  samples?: Record<string, number>;
  /** Other per-step figures a method reports (the mean teacher's confidence weight, its mixed-pixel share). */
  stats?: Record<string, number>;
}

export interface StepOutcome {
  losses: Record<string, number>;
  lr: number;
  skipped?: boolean;
  lrs?: Record<string, number>;
  samples?: Record<string, number>;
  stats?: Record<string, number>;
}

export interface TrainStepOptions<B> {
  phase: string;
  /** Iterations already done (resume). */
  startIteration: number;
  step: (batch: B, iteration: number) => StepOutcome;
  release: (batch: B) => void;
  /**
   * Runs after a step and before the next one starts (checkpoint, evaluation): the weights do not move
   * while it runs. Batches that arrive meanwhile wait (their number is bounded by the flow's credits).
   */
  after?: (report: StepReport) => Promise<void> | void;
  /**
   * A stop request (SIGINT/SIGTERM): once aborted, batches already waiting are released untrained, so
   * the flow stops after the step in progress (and its `after`).
   */
  stop?: AbortSignal;
}

/**
 * One step per batch, strictly in sequence. The data wait of a step is the time from the end of the
 * previous step (and its `after`) to the moment this batch was there to be trained on.
 */
export function trainStep<B>(opts: TrainStepOptions<B>): OperatorFunction<B, StepReport> {
  let iteration = opts.startIteration;
  let idleSince = performance.now();
  return concatMap((batch: B) =>
    defer(() => {
      if (!opts.stop?.aborted) return runStep(batch);
      opts.release(batch);
      return EMPTY;
    }),
  );

  async function runStep(batch: B): Promise<StepReport> {
    const arrived = performance.now();
    let report: StepReport;
    try {
      const out = opts.step(batch, iteration);
      crashPoint('step'); // the weights moved in memory; nothing of this step is reported or saved yet
      iteration++;
      report = {
        phase: opts.phase,
        iteration,
        losses: out.losses,
        lr: out.lr,
        skipped: out.skipped ?? false,
        ...(out.lrs ? { lrs: out.lrs } : {}),
        ...(out.samples ? { samples: out.samples } : {}),
        ...(out.stats ? { stats: out.stats } : {}),
        seconds: (performance.now() - arrived) / 1000,
        waitSeconds: (arrived - idleSince) / 1000,
      };
    } finally {
      opts.release(batch);
    }
    await opts.after?.(report);
    // One turn of the event loop between steps: a signal handler (SIGTERM -> abort) runs here even when
    // the next batch is already waiting, so the stop takes effect after this step, not after the queue.
    if (opts.stop) await new Promise((resolve) => setImmediate(resolve));
    idleSince = performance.now();
    return report;
  }
}

/**
 * A streak of consecutive steps whose update was skipped for a non-finite loss: what the run does about
 * it is the `nonFinite` config (roll back to the last checkpoint with a lower learning rate, or stop).
 */
export class NonFiniteStreak extends Error {
  readonly phase: string;
  readonly reports: readonly StepReport[];

  constructor(phase: string, reports: readonly StepReport[]) {
    const last = reports[reports.length - 1]!;
    const losses = Object.entries(last.losses)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ');
    super(
      `${phase}: ${reports.length} steps in a row with a non-finite loss (iterations ${reports[0]!.iteration}-${last.iteration}; last step: ${losses})`,
    );
    this.name = 'NonFiniteStreak';
    this.phase = phase;
    this.reports = reports;
  }
}

/**
 * Fault injection for tests (`SPCL_INJECT_NONFINITE=phase:first:count`, iterations as logged, 1-based):
 * those steps behave as if their loss were NaN (no update, reported non-finite). Once per process.
 */
export function nonFiniteInjection(spec: string | undefined): (phase: string, iteration: number) => boolean {
  const m = spec ? /^([\w-]+):(\d+):(\d+)$/.exec(spec) : null;
  if (spec && !m) throw new Error(`SPCL_INJECT_NONFINITE: expected phase:first-iteration:count, got '${spec}'`);
  if (!m) return () => false;
  const [phase, first, count] = [m[1]!, Number(m[2]), Number(m[3])];
  let spent = false;
  return (p, iteration) => {
    if (spent || p !== phase || iteration < first) return false;
    if (iteration >= first + count) {
      spent = true;
      return false;
    }
    if (iteration === first + count - 1) spent = true;
    return true;
  };
}

let forcedNonFinite = false;

/** While on, `applyIfFinite` treats every loss as NaN (see `nonFiniteInjection`). */
export function forceNonFinite(on: boolean): void {
  forcedNonFinite = on;
}

/**
 * Gradients of `loss` (which returns the total and its terms) w.r.t. `params`; applies `optimizer` only
 * when every term is finite (a NaN/Inf step leaves the weights untouched). Returns the term values.
 */
export function applyIfFinite(
  loss: () => { total: tf.Scalar; terms: Record<string, tf.Scalar> },
  params: Param[],
  optimizer: SGD | Adam,
  lr: number,
): { losses: Record<string, number>; finite: boolean } {
  return tf.tidy(() => {
    let terms: Record<string, tf.Scalar> = {};
    const { value, grads } = gradients(() => {
      const out = loss();
      // the gradient tape frees its intermediates: keep the terms to read them, free them below
      terms = Object.fromEntries(Object.entries(out.terms).map(([k, t]) => [k, tf.keep(t)]));
      return out.total;
    }, params);
    const losses: Record<string, number> = { total: value.dataSync()[0]! };
    for (const [k, t] of Object.entries(terms)) losses[k] = t.dataSync()[0]!;
    tf.dispose(Object.values(terms));
    if (forcedNonFinite) losses.total = NaN;
    const finite = Object.values(losses).every(Number.isFinite);
    if (finite) optimizer.step(grads, lr);
    return { losses, finite };
  });
}

/** What `parallelApplyIfFinite` needs of src/parallel/data-parallel.ts's DataParallel. */
export interface GradientSource {
  gradients(
    batch: HostTensors,
    args: ProgramArgs,
    params: Param[],
    whole?: HostTensors,
  ): { losses: Record<string, number>; grads: Map<string, tf.Tensor>; outputs: Map<string, tf.Tensor> };
}

/**
 * `applyIfFinite` over data-parallel replicas: the program's loss terms and gradients summed over the
 * shards of `batch`; the optimiser (on this thread) applies them only when every term is finite. The
 * program's `outputs` are the caller's to dispose.
 */
export function parallelApplyIfFinite(
  replicas: GradientSource,
  batch: HostTensors,
  args: ProgramArgs,
  params: Param[],
  optimizer: SGD | Adam,
  lr: number,
  whole: HostTensors = {},
): { losses: Record<string, number>; finite: boolean; outputs: Map<string, tf.Tensor> } {
  let outputs = new Map<string, tf.Tensor>();
  const r = tf.tidy(() => {
    const g = replicas.gradients(batch, args, params, whole);
    outputs = g.outputs;
    const losses = g.losses;
    if (forcedNonFinite) losses.total = NaN;
    const finite = Object.values(losses).every(Number.isFinite);
    if (finite) optimizer.step(g.grads, lr);
    return { losses, finite };
  });
  return { ...r, outputs };
}

/**
 * `parallelApplyIfFinite` for a program with the prototype EMA (spcl-shard.ts `shardPrototypeEma`): every
 * replica gets the prototypes whole, and they advance to the EMA step the main thread's replica handed back.
 */
export function parallelApplyWithPrototypes(
  prototypes: Prototypes,
  replicas: GradientSource,
  batch: HostTensors,
  args: ProgramArgs,
  params: Param[],
  optimizer: SGD | Adam,
  lr: number,
): { losses: Record<string, number>; finite: boolean } {
  const P = prototypes.tensor;
  const whole = { prototypes: { data: P.dataSync() as Float32Array, shape: P.shape } };
  const g = parallelApplyIfFinite(replicas, batch, args, params, optimizer, lr, whole);
  prototypes.advance(g.outputs.get('prototypes') as tf.Tensor2D);
  tf.dispose([...g.outputs.values()]);
  return { losses: g.losses, finite: g.finite };
}

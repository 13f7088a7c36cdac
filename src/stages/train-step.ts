/**
 * Train-step stage: one optimisation step per batch on the tfjs backend. The phase plugs in its step
 * (losses, optimisers: REFERENCE 1); this stage owns what every phase needs: the batch goes back to the
 * pool after the step, the time the trainer waited for data is measured (starvation), non-finite losses
 * are reported and their update skipped by `applyIfFinite`, and a report is emitted per step.
 */
import * as tf from '@tensorflow/tfjs';
import { Observable, type OperatorFunction } from 'rxjs';
import type { Param } from '../ops/model/params.ts';
import { gradients, type SGD, type Adam } from '../ops/optim.ts';

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
}

export interface StepOutcome {
  losses: Record<string, number>;
  lr: number;
  skipped?: boolean;
}

export interface TrainStepOptions<B> {
  phase: string;
  /** Iterations already done (resume). */
  startIteration: number;
  step: (batch: B, iteration: number) => StepOutcome;
  release: (batch: B) => void;
}

export function trainStep<B>(opts: TrainStepOptions<B>): OperatorFunction<B, StepReport> {
  return (source) =>
    new Observable<StepReport>((subscriber) => {
      let iteration = opts.startIteration;
      let idleSince = performance.now();
      const sub = source.subscribe({
        next(batch) {
          const arrived = performance.now();
          try {
            const out = opts.step(batch, iteration);
            iteration++;
            const done = performance.now();
            subscriber.next({
              phase: opts.phase, iteration, losses: out.losses, lr: out.lr, skipped: out.skipped ?? false,
              seconds: (done - arrived) / 1000, waitSeconds: (arrived - idleSince) / 1000,
            });
          } catch (err) {
            subscriber.error(err);
          } finally {
            opts.release(batch);
            idleSince = performance.now();
          }
        },
        error: (e) => subscriber.error(e),
        complete: () => subscriber.complete(),
      });
      return () => sub.unsubscribe();
    });
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
    const finite = Object.values(losses).every(Number.isFinite);
    if (finite) optimizer.step(grads, lr);
    return { losses, finite };
  });
}

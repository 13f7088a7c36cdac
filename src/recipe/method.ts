/**
 * What a method phase is to the run: a name, a kind, and `run`. Methods live in src/methods, one file
 * each; a pipeline composes them into a recipe (src/methods/registry.ts) and `runRecipe` runs them in
 * order, with resume, rollback, evaluation and checkpoints around them. A method keeps what it needs
 * beyond the model in its checkpoints through the `state` callback it gives `train` (extra tensors,
 * optimiser state) and finds it again in the ResumePoint it is run with.
 */
import type { RunContext } from './context.ts';
import type { PhaseResult, ResumePoint } from './trainer.ts';

export interface Method {
  /** The phase's name in reports, checkpoints, logs, metrics and `--phase`. */
  readonly name: string;
  /**
   * 'train': training steps, evaluated at the end (and best-val selection applies); 'pass': one pass over
   * a set, not evaluated; 'endless': goes on until stopped or its step budget, evaluated at the end and
   * never marked done, so a resume goes on from its iteration.
   */
  readonly kind: 'train' | 'pass' | 'endless';
  /** Runs the phase from `resume` (iteration 0 when it starts fresh). */
  run(ctx: RunContext, resume: ResumePoint): Promise<PhaseResult>;
}

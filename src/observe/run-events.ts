/**
 * The hooks through which a run reports what happens (logs, metrics, step logs). Defined here, below the
 * recipe and the methods that call them, so that `src/observe` depends on nothing above it.
 */
import type { StageError, Credits } from '../graph/flow.ts';
import type { FaultReport } from '../data/faults.ts';
import type { GenerationInfo } from '../data/pseudo-labels.ts';
import type { EvalReport } from '../stages/evaluate.ts';
import type { StepReport } from '../stages/train-step.ts';
import type { Prototypes } from '../stages/update-prototypes.ts';

/** The datasets a run reads. */
export type Domain = 'source' | 'target' | 'targetVal';

/** Hooks through which a run reports what happens (logs, metrics); all but `log` optional. */
export interface RunEvents {
  log(line: string): void;
  step?(report: StepReport): void;
  /** A sample was skipped; `error.reason` says why (src/data/faults.ts). */
  skip?(stage: string, error: StageError): void;
  /** A sample was kept after a repair (unknown label IDs set to 255). */
  repaired?(stage: string, fault: FaultReport): void;
  evaluated?(phase: string, report: EvalReport): void;
  phase?(phase: string, state: 'start' | 'end'): void;
  /** A sample left the decode-augment workers (their own timing and bytes). */
  decoded?(sample: { seconds: number; encodedBytes: number }): void;
  /** A batch left collate. */
  batched?(domain: Domain, n: number): void;
  /** A bounded flow started: its credits give queue depth and capacity. */
  flow?(name: string, credits: Credits): void;
  pseudoLabels?(info: GenerationInfo, counts: number[]): void;
  checkpoint?(seconds: number, bytes: number): void;
  prototypes?(prototypes: Prototypes): void;
  /** The run completed (every wanted phase done). */
  finished?(): void;
  /** Continuous phase: target images arrived (totals after the arrival; pending = without pseudo-labels). */
  arrivals?(a: { added: number; ingested: number; problems: number; total: number; pending: number }): void;
  /** A streak of non-finite steps rolled the run back to a checkpoint (learning rates now x lrScale). */
  rolledBack?(phase: string, lrScale: number): void;
  /** Continuous phase: thresholds + pseudo-labels were refreshed, for this reason. */
  refreshed?(trigger: 'start' | 'steps' | 'arrivals', pending: number): void;
}

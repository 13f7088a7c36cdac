/**
 * What a method phase is to the run: a name, a kind, and `run`. Methods live in src/methods, one file
 * each; a pipeline composes them into a recipe (src/methods/registry.ts) and `runRecipe` runs them in
 * order, with resume, rollback, evaluation and checkpoints around them. A method keeps what it needs
 * beyond the model in its checkpoints through the `state` callback it gives `train` (extra tensors,
 * optimiser state) and finds it again in the ResumePoint it is run with.
 */
import type { SpclConfig } from './config.ts';
import type { Rule } from './config-merge.ts';
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
  /** Training steps the phase takes in all under `cfg` (the run's ETA; absent: none, e.g. a pass). */
  steps?(cfg: SpclConfig): number;
  /** Runs the phase from `resume` (iteration 0 when it starts fresh). */
  run(ctx: RunContext, resume: ResumePoint): Promise<PhaseResult>;
  /**
   * A method's own settings, under `cfg.methods[name]`: defaults per preset (the paper's or the synthetic
   * benchmark's) and value rules by key. The SPCL phases keep theirs in SpclConfig (config.ts).
   */
  readonly config?: {
    defaults(preset: string): Record<string, unknown>;
    rules?: Readonly<Record<string, Rule>>;
  };
}

/** `cfg` with each method's defaults under `cfg.methods[name]` (settings already there are kept). */
export function withMethods(cfg: SpclConfig, methods: readonly Method[]): SpclConfig {
  const own = Object.fromEntries(
    methods.filter((m) => m.config).map((m) => [m.name, { ...m.config!.defaults(cfg.preset), ...cfg.methods[m.name] }]),
  );
  return { ...cfg, methods: { ...cfg.methods, ...own } };
}

/** The methods' value rules, keyed by full config path (`methods.<name>.<key>`), for mergeConfig. */
export function methodRules(methods: readonly Method[]): Record<string, Rule> {
  return Object.fromEntries(
    methods.flatMap((m) => Object.entries(m.config?.rules ?? {}).map(([k, rule]) => [`methods.${m.name}.${k}`, rule] as const)),
  );
}

/**
 * What the phases of a run share: configuration, model, prototypes, thresholds, data, the reader pool,
 * checkpoints and event hooks (logs, metrics); and `batches`, the input chain every phase uses:
 * read-shards -> decode-augment -> collate, bounded by its own credits.
 */
import { join } from 'node:path';
import { tap, type Observable } from 'rxjs';
import { Credits } from '../graph/flow.ts';
import type { AugmentSpec } from '../data/augment.ts';
import { countFault, faultReason, type FaultCounts } from '../data/faults.ts';
import type { Dataset, SampleReader } from '../data/reader.ts';
import { ClassBalancedSampler, ShuffleSampler, type Sampler } from '../data/sampler.ts';
import type { BackendName } from '../ops/backend.ts';
import type { SegModel } from '../ops/model/deeplab.ts';
import type { Batch } from '../stages/collate.ts';
import { CheckpointStore } from '../stages/checkpoint.ts';
import { repairLine, skipLine } from '../stages/decode-augment.ts';
import { feedBatches } from '../stages/feed-batches.ts';
import type { EvalReport } from '../stages/evaluate.ts';
import { inOrder } from '../stages/read-shards.ts';
import { Prototypes } from '../stages/update-prototypes.ts';
import type { SpclConfig } from './config.ts';
import type { Domain, RunEvents } from '../observe/run-events.ts';

export interface RunContext {
  cfg: SpclConfig;
  backend: BackendName;
  model: SegModel;
  prototypes: Prototypes;
  thresholds: number[] | null;
  /** Current pseudo-label generation (LMDB path). */
  pseudo: string | null;
  reader: SampleReader;
  data: { source: Dataset; target: Dataset; targetVal: Dataset | null };
  checkpoints: CheckpointStore;
  dirs: { run: string; pseudo: string; scratch: string };
  events: RunEvents;
  /** Skipped samples by stage and reason (corrupt records, missing pseudo-labels, ...). */
  skipped: FaultCounts;
  /** Samples kept after a repair, by stage and reason. */
  repaired: FaultCounts;
  /** Seconds the trainer waited for data and seconds it computed, per phase. */
  starvation: Record<string, { wait: number; compute: number }>;
  /** Aborted by SIGINT/SIGTERM: training loops stop after the current step and checkpoint. */
  signal?: AbortSignal;
  /** Learning rates are multiplied by this: 1, lowered by each rollback after a non-finite streak (checkpointed). */
  lrScale: number;
  /** Rollbacks so far in the run (checkpointed; `nonFinite.maxRollbacks` bounds them). */
  rollbacks: number;
  /** Training steps of the phases still to run after the current one (the run's ETA on progress lines). */
  stepsAfter: number;
  /** Where the continuous phase is (null outside it); checkpointed with everything else. */
  continuous: ContinuousState | null;
  /** Phases completed, and their results (checkpointed, so a resume skips them). */
  done: string[];
  results: PhaseResultLike[];
}

/**
 * The continuous phase's position (REFERENCE 1 step 8 kept going): which refresh of the pseudo-labels it is
 * on, since which iteration, and how many target images that generation covers.
 */
export interface ContinuousState {
  /** Thresholds + pseudo-label refreshes done in the phase (1 = its first generation). */
  refresh: number;
  /** Iteration at which training on the current generation began. */
  since: number;
  /** Target images the current generation covers (its keys, in key order). */
  images: number;
}

/** A finished phase as the report and checkpoints keep it. */
export interface PhaseResultLike {
  phase: string;
  /** Stopped early by a signal (not done; --resume continues it). */
  aborted?: boolean;
  seconds: number;
  iterations: number;
  eval: EvalReport | null;
  losses: Record<string, number>;
  /** What an endless phase reports beyond this (the continuous phase's summary). */
  summary?: object;
}

export function createContext(
  parts: Omit<
    RunContext,
    | 'prototypes'
    | 'thresholds'
    | 'pseudo'
    | 'checkpoints'
    | 'dirs'
    | 'skipped'
    | 'repaired'
    | 'starvation'
    | 'done'
    | 'results'
    | 'continuous'
    | 'lrScale'
    | 'rollbacks'
    | 'stepsAfter'
  >,
): RunContext {
  const run = parts.cfg.out;
  return {
    ...parts,
    prototypes: new Prototypes(),
    thresholds: null,
    pseudo: null,
    checkpoints: new CheckpointStore(join(run, 'checkpoints'), parts.cfg.checkpoint.keep),
    dirs: { run, pseudo: join(run, 'pseudo-labels'), scratch: join(run, 'scratch-predictions.lmdb') },
    skipped: {},
    repaired: {},
    starvation: {},
    continuous: null,
    lrScale: 1,
    rollbacks: 0,
    stepsAfter: 0,
    done: [],
    results: [],
  };
}

export interface BatchStreamOptions {
  domain: Domain;
  spec: AugmentSpec;
  batchSize: number;
  /** 'train': endless sampler (class-balanced for the source when configured); 'pass': every record once, in order. */
  mode: 'train' | 'pass';
  /** Stream id for per-sample seeds (differs per phase and domain). */
  stream: number;
  /** Draws already consumed (resume: iteration x batch size). */
  start?: number;
  /** Take labels from this pseudo-label generation. */
  pseudo?: string | null;
  /** 'train' mode: sample these keys of the dataset (default: all of them). */
  keys?: readonly string[];
}

/** The run's batches of one dataset (`feedBatches`), with its own bounded credits, counted and logged in the run. */
export function batches(ctx: RunContext, opts: BatchStreamOptions): Observable<Batch> {
  const dataset = ctx.data[opts.domain];
  if (!dataset) throw new Error(`no ${opts.domain} dataset configured`);
  const credits = new Credits(Math.max(ctx.cfg.data.prefetch, opts.batchSize));
  ctx.events.flow?.(opts.domain, credits);
  let sampler: Sampler;
  if (opts.mode === 'pass') {
    sampler = inOrder(dataset.keys);
  } else if (opts.domain === 'source' && ctx.cfg.data.classBalanced) {
    sampler = ClassBalancedSampler.fromManifest(dataset.manifest, { seed: ctx.cfg.seed });
  } else {
    sampler = new ShuffleSampler(opts.keys ?? dataset.keys, { seed: ctx.cfg.seed + opts.stream });
  }
  const start = opts.start ?? 0;
  for (let i = 0; i < start; i++) sampler.next(); // resume: replay the draws already consumed
  return feedBatches({
    dataset,
    sampler,
    credits,
    reader: ctx.reader,
    spec: opts.spec,
    batchSize: opts.batchSize,
    seed: ctx.cfg.seed,
    stream: opts.stream,
    start,
    count: opts.mode === 'pass' ? dataset.keys.length : undefined,
    pseudo: opts.pseudo ?? null,
    onSkip: (e) => {
      countFault(ctx.skipped, e.stage, faultReason(e.reason));
      ctx.events.log(skipLine(e));
      ctx.events.skip?.(e.stage, e);
    },
    onRepair: (stage, f) => {
      countFault(ctx.repaired, stage, f.reason);
      ctx.events.log(repairLine(stage, f));
      ctx.events.repaired?.(stage, f);
    },
    onDecoded: (s) => ctx.events.decoded?.(s),
  }).pipe(tap((b) => ctx.events.batched?.(opts.domain, b.n)));
}

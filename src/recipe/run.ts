/**
 * Runs a recipe: backend, data (the embedded synthetic benchmark is generated and ingested when
 * absent), model, phases in order with resume, evaluation after each training phase, and the report.
 */
import { access, mkdir, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import type { FaultCounts } from '../data/faults.ts';
import { ingestDataset } from '../data/ingest.ts';
import { recoverGenerations } from '../data/pseudo-labels.ts';
import { writeJsonAtomic } from '../io/atomic.ts';
import { openDataset, SampleReader, type Dataset } from '../data/reader.ts';
import { writeSyntheticBenchmark } from '../data/synthetic.ts';
import { applyModelState, disposeCheckpoint, loadCheckpoint, loadSafetensors } from '../io/weights.ts';
import { selectBackend } from '../ops/backend.ts';
import { deeplabV2 } from '../ops/model/deeplab.ts';
import type { PhaseName, SpclConfig } from './config.ts';
import { PHASES, RECIPE_PHASES } from './config.ts';
import { continuousPhase, type ContinuousSummary } from './continuous.ts';
import type { SpclMetrics } from '../observe/metrics.ts';
import { metricsEvents } from '../observe/events.ts';
import { createContext, type ContinuousState, type PhaseResultLike, type RunContext } from './context.ts';
import type { RunEvents } from '../observe/run-events.ts';
import { evaluatePhase, prototypesPhase, pseudoLabelPhase, spclPhase, sslPhase, warmupPhase, checkpointState, type ResumePoint } from './phases.ts';
import { NonFiniteStreak } from '../stages/train-step.ts';

export interface PhaseReport {
  phase: PhaseName;
  miou: number | null;
  classIoU: number[] | null;
  tailMiou: number | null;
  seconds: number;
  iterations: number;
  losses: Record<string, number>;
  /** tf.memory().numTensors after the phase (flat across phases: nothing leaks). */
  tensors: number;
}

export interface RunReport {
  preset: string;
  backend: string;
  seed: number;
  phases: PhaseReport[];
  seconds: number;
  /** Share of training-step time spent waiting for data, per training phase. */
  starvation: Record<string, number>;
  /** Skipped samples by stage and reason; `repaired`: kept after a repair (src/data/faults.ts). */
  skipped: FaultCounts;
  repaired: FaultCounts;
  /** Stopped by SIGINT/SIGTERM before the end (resume with --resume). */
  stopped: boolean;
  classNames: string[];
  tensorsAtEnd: number;
  /** The continuous phase, when it ran. */
  continuous?: ContinuousSummary;
  /** Rollbacks after non-finite streaks, and the learning-rate factor they left (1 = none). */
  rollbacks: number;
  lrScale: number;
  config: SpclConfig;
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(() => true, () => false);
}

/**
 * Generates and ingests the synthetic benchmark under `root` (data/synthetic) unless it is there. The
 * work happens in a folder of this process's own that is renamed into place when complete: concurrent
 * runs on a fresh checkout (CI) never read a half-written dataset; the slower one discards its copy.
 */
export interface SyntheticDataOptions {
  /** Scene seed (the benchmark renders 0). */
  sceneSeed?: number;
  /** Look of the target scenes ('night': the second target domain). */
  targetDomain?: 'target' | 'night';
  /** Only the source shards (pretraining data). */
  sourceOnly?: boolean;
}

export async function prepareSynthetic(root: string, counts: { source: number; targetTrain: number; targetVal: number }, log: (l: string) => void,
  opts: SyntheticDataOptions = {}): Promise<{ source: string; target: string; targetVal: string }> {
  const shardsOf = (dir: string) => ({ source: join(dir, 'shards/source'), target: join(dir, 'shards/target'), targetVal: join(dir, 'shards/target-val') });
  const shards = shardsOf(root);
  const wanted = opts.sourceOnly ? [shards.source] : Object.values(shards);
  const complete = async () => (await Promise.all(wanted.map((d) => exists(join(d, 'manifest.json'))))).every(Boolean);
  if (await complete()) return shards;
  log(`data: generating the synthetic benchmark in ${root} (${counts.source} source, ${counts.targetTrain} + ${counts.targetVal} target images)`);
  const work = `${root}.tmp-${process.pid}`;
  await rm(work, { recursive: true, force: true });
  const raw = await writeSyntheticBenchmark(join(work, 'raw'), {
    seed: opts.sceneSeed ?? 0, sourceCount: counts.source, targetTrainCount: counts.targetTrain, targetValCount: counts.targetVal, targetDomain: opts.targetDomain,
  });
  const quiet = { log: () => {}, progressStream: null };
  const out = shardsOf(work);
  await ingestDataset({ ...quiet, dataset: 'gta5', root: raw.source, out: out.source });
  if (!opts.sourceOnly) {
    await ingestDataset({ ...quiet, dataset: 'cityscapes', root: raw.target, out: out.target, split: 'train', labels: 'optional' });
    await ingestDataset({ ...quiet, dataset: 'cityscapes', root: raw.target, out: out.targetVal, split: 'val' });
  }
  await mkdir(dirname(root), { recursive: true });
  try {
    await rename(work, root);
    log(`data: ingested into ${join(root, 'shards')}`);
  } catch {
    // another run finished first (the rename fails on a non-empty folder): use its copy
    await rm(work, { recursive: true, force: true });
    if (!(await complete())) throw new Error(`data: ${root} exists but is incomplete; delete it to generate the benchmark again`);
  }
  return shards;
}

/**
 * Points the dataset folders of `cfg` that still name the embedded benchmark (`data/synthetic/...`) at
 * `where` (generated and ingested there on first use); folders set to other data are left alone.
 */
export async function useSyntheticData(cfg: SpclConfig, where: { root: string; counts: { source: number; targetTrain: number; targetVal: number } }, log: (l: string) => void): Promise<void> {
  const keys = (['source', 'target', 'targetVal'] as const).filter((k) => cfg.data[k].startsWith('data/synthetic/'));
  if (cfg.preset !== 'synthetic' || keys.length === 0) return;
  const shards = await prepareSynthetic(where.root, where.counts, log);
  for (const k of keys) cfg.data[k] = shards[k];
}

async function open(dir: string, what: string, numClasses: number): Promise<Dataset> {
  const ds = await openDataset(dir).catch((err: Error) => {
    throw new Error(`config: data.${what}: ${err.message}`);
  });
  if (ds.manifest.numClasses !== numClasses) {
    throw new Error(`config: data.numClasses is ${numClasses} but ${join(dir, 'manifest.json')} (data.${what}) has ${ds.manifest.numClasses} classes`);
  }
  return ds;
}

export interface RunOptions {
  cfg: SpclConfig;
  /** Continue from the last checkpoint of cfg.out. */
  resume?: boolean;
  /** Run only these phases (with --resume or a checkpoint that has what they need), even if done before. */
  only?: PhaseName[];
  /** Start from this checkpoint file instead of the run's latest (with `only`). */
  checkpoint?: string;
  /** After the recipe (or the `only` phases), adapt continuously (the `continuous` phase, until stopped). */
  continuous?: boolean;
  events: RunEvents;
  /** Stops between steps when aborted: the phase checkpoints and the run ends (SIGINT/SIGTERM). */
  signal?: AbortSignal;
  /** Record the run in these Prometheus metrics. */
  metrics?: SpclMetrics;
}

export async function runRecipe(opts: RunOptions): Promise<RunReport> {
  const { cfg } = opts;
  let events = opts.events;
  const t0 = performance.now();
  const backend = await selectBackend(cfg.backend, { log: events.log });
  const numClasses = cfg.data.numClasses;
  const data = {
    source: await open(cfg.data.source, 'source', numClasses),
    target: await open(cfg.data.target, 'target', numClasses),
    targetVal: cfg.data.targetVal ? await open(cfg.data.targetVal, 'targetVal', numClasses) : null,
  };
  if (opts.metrics) events = metricsEvents(opts.metrics, { preset: cfg.preset, classifierLrMult: cfg.optimizer.classifierLrMult }, data.source.manifest.classNames, backend, events, data.target.keys.length);
  const model = deeplabV2({ backbone: cfg.model.backbone, numClasses, seed: cfg.seed });
  if (cfg.model.weights) {
    const r = await loadSafetensors(model, cfg.model.weights);
    events.log(`model: loaded ${r.loaded.length} tensors from ${cfg.model.weights}` + (r.missing.length ? ` (${r.missing.length} missing, kept at init: ${r.missing.slice(0, 4).join(', ')}...)` : ''));
  }
  await mkdir(cfg.out, { recursive: true });
  const reader = new SampleReader({
    threads: cfg.data.workers || undefined, unknownLabels: cfg.data.unknownLabelIds, retries: cfg.data.retries, retryDelay: cfg.data.retryDelay, log: events.log,
  });
  const ctx = createContext({ cfg, backend, model, reader, data, events });
  ctx.signal = opts.signal;
  ctx.checkpoints.onSaved = (seconds, bytes) => events.checkpoint?.(seconds, bytes);
  try {
    const tensorsAfter = new Map<PhaseName, number>();
    let resumePoint: { phase: PhaseName; point: ResumePoint } | null = null;
    if (opts.resume || opts.checkpoint) resumePoint = await restore(ctx, opts.checkpoint);
    const wanted: PhaseName[] = [...(opts.only ?? RECIPE_PHASES)];
    if (opts.continuous && !wanted.includes('continuous')) wanted.push('continuous');
    if (opts.only) ctx.done = ctx.done.filter((p) => !opts.only!.includes(p));
    let continuous: ContinuousSummary | undefined;
    for (const phase of PHASES) {
      if (!wanted.includes(phase) || ctx.done.includes(phase)) continue;
      if (opts.signal?.aborted) break;
      events.phase?.(phase, 'start');
      let point = resumePoint?.phase === phase ? resumePoint.point : { iteration: 0 };
      let result: PhaseResultLike;
      for (;;) {
        try {
          result = await runPhase(ctx, phase, point);
          break;
        } catch (err) {
          if (!(err instanceof NonFiniteStreak)) throw err;
          point = await rollBack(ctx, phase, err);
        }
      }
      if (phase === 'continuous') continuous = (result as PhaseResultLike & { summary: ContinuousSummary }).summary;
      if (result.aborted) break;
      if (phase === 'continuous') {
        // never "done": a resume (or a larger continuous.steps) goes on from its iteration
        result.eval = await evaluatePhase(ctx, phase);
        ctx.results.push(result);
        tensorsAfter.set(phase, tf.memory().numTensors);
        events.phase?.(phase, 'end');
        continue;
      }
      if (phase === 'warmup' || phase === 'spcl' || phase === 'ssl') {
        result.eval = await evaluatePhase(ctx, phase);
        if (cfg.checkpoint.select === 'best-val') await selectBest(ctx, phase, result);
        if (opts.signal?.aborted) break; // the evaluation was cut short: the phase is not done, --resume evaluates again
      }
      ctx.done.push(phase);
      ctx.results.push(result);
      tensorsAfter.set(phase, tf.memory().numTensors);
      await ctx.checkpoints.save(checkpointState(ctx, phase, result.iterations), phase, result.iterations, result.eval?.miou ?? null);
      events.phase?.(phase, 'end');
    }
    const report: RunReport = {
      preset: cfg.preset, backend, seed: cfg.seed,
      phases: ctx.results.map((r) => ({
        phase: r.phase, miou: r.eval?.miou ?? null, classIoU: r.eval?.classIoU ?? null, tailMiou: r.eval?.tailMiou ?? null,
        seconds: r.seconds, iterations: r.iterations, losses: r.losses, tensors: tensorsAfter.get(r.phase) ?? -1,
      })),
      seconds: (performance.now() - t0) / 1000,
      starvation: Object.fromEntries(Object.entries(ctx.starvation).map(([k, v]) => [k, v.wait / Math.max(1e-9, v.wait + v.compute)])),
      skipped: ctx.skipped,
      repaired: ctx.repaired,
      stopped: opts.signal?.aborted ?? false,
      classNames: data.source.manifest.classNames,
      tensorsAtEnd: tf.memory().numTensors,
      continuous,
      rollbacks: ctx.rollbacks,
      lrScale: ctx.lrScale,
      config: cfg,
    };
    await writeJsonAtomic(join(cfg.out, 'report.json'), report, { what: 'report' }); // never a torn report after a kill
    if (!report.stopped) events.finished?.();
    return report;
  } finally {
    await reader.close();
    ctx.prototypes.dispose();
    model.dispose();
  }
}

async function runPhase(ctx: RunContext, phase: PhaseName, point: ResumePoint): Promise<PhaseResultLike> {
  switch (phase) {
    case 'warmup': return warmupPhase(ctx, point);
    case 'prototypes': return prototypesPhase(ctx);
    case 'pseudo-labels': case 'pseudo-labels-2': return pseudoLabelPhase(ctx, phase);
    case 'spcl': return spclPhase(ctx, point);
    case 'ssl': return sslPhase(ctx, point);
    case 'continuous': return continuousPhase(ctx, point);
  }
}

/**
 * A streak of non-finite steps (`nonFinite`): with action 'rollback', back to the last complete checkpoint
 * with every learning rate x lrFactor, at most maxRollbacks times in a run; otherwise the run stops with a
 * message that says where its last good state is. Returns where the phase starts again.
 */
async function rollBack(ctx: RunContext, phase: PhaseName, streak: NonFiniteStreak): Promise<ResumePoint> {
  const nf = ctx.cfg.nonFinite;
  const latest = await ctx.checkpoints.latest();
  const where = latest ? `the last complete checkpoint is ${join(ctx.checkpoints.dir, latest.file)} (phase ${latest.phase}, iteration ${latest.iteration})` : 'no checkpoint was written yet';
  if (nf.action === 'stop') {
    throw new Error(`${streak.message}; stopping (nonFinite.action is 'stop'); ${where}: lower the learning rate and --resume`);
  }
  if (ctx.rollbacks >= nf.maxRollbacks) {
    throw new Error(`${streak.message}; stopping after ${ctx.rollbacks} rollback(s) (nonFinite.maxRollbacks ${nf.maxRollbacks}); ${where}: lower the learning rate and --resume`);
  }
  if (!latest) throw new Error(`${streak.message}; cannot roll back: ${where} (checkpoint.every sets how often one is)`);
  const scale = ctx.lrScale * nf.lrFactor;
  const rollbacks = ctx.rollbacks + 1;
  const back = await restore(ctx);
  ctx.lrScale = scale;
  ctx.rollbacks = rollbacks;
  ctx.events.log(`${streak.message}: rolling back to ${latest.file} (phase ${latest.phase}, iteration ${latest.iteration}), ` +
    `learning rates x${scale} from now on (rollback ${rollbacks} of at most ${nf.maxRollbacks})`);
  ctx.events.rolledBack?.(phase, scale);
  return back?.phase === phase ? back.point : { iteration: 0 };
}

/**
 * `checkpoint.select: best-val` (the authors' choice, REFERENCE 1 steps 2 and 6): the next phase starts
 * from the checkpoint of this phase with the best target-val mIoU, not from the last weights.
 */
async function selectBest(ctx: RunContext, phase: PhaseName, result: PhaseResultLike): Promise<void> {
  const best = await ctx.checkpoints.best(phase);
  if (!best || best.miou === null || result.eval === null || best.miou <= result.eval.miou) return;
  const state = await ctx.checkpoints.load(best);
  try {
    applyModelState(ctx.model, state.model, { source: best.file });
    const protos = state.extra?.get('prototypes');
    if (protos) ctx.prototypes.set(protos as tf.Tensor2D);
  } finally {
    disposeCheckpoint(state);
  }
  ctx.events.log(`${phase}: best-val selection: continuing from ${best.file} (mIoU ${(100 * best.miou).toFixed(2)} > last ${(100 * result.eval.miou).toFixed(2)})`);
  result.eval = await evaluatePhase(ctx, `${phase} (best-val checkpoint)`);
}

/** Restores the last checkpoint: weights, prototypes, thresholds, pseudo-labels, phases done. */
async function restore(ctx: RunContext, file?: string): Promise<{ phase: PhaseName; point: ResumePoint } | null> {
  // what interrupted writes left (temporary files, a generation never committed) is deleted, never read
  for (const f of [...await ctx.checkpoints.recover(), ...await recoverGenerations(ctx.dirs.pseudo)]) ctx.events.log(`resume: removed ${f} (left by an interrupted write)`);
  const pointer = file ? { file, phase: '', iteration: 0, miou: null, savedAt: '' } : await ctx.checkpoints.latest();
  if (!pointer) {
    ctx.events.log(`resume: no checkpoint in ${ctx.checkpoints.dir}, starting from scratch`);
    return null;
  }
  const state = file ? await loadCheckpoint(file) : await ctx.checkpoints.load(pointer);
  const meta = state.meta as {
    phase: PhaseName; iteration: number; losses?: Record<string, number>; done: PhaseName[]; results: PhaseResultLike[]; bn: 'frozen' | 'trainable';
    thresholds: number[] | null; pseudo: string | null; continuous?: ContinuousState | null; lrScale?: number; rollbacks?: number;
  };
  ctx.model.setBatchNorm(meta.bn);
  applyModelState(ctx.model, state.model, { source: pointer.file });
  const protos = state.extra?.get('prototypes');
  if (protos) ctx.prototypes.set(protos as tf.Tensor2D);
  ctx.thresholds = meta.thresholds;
  ctx.pseudo = meta.pseudo;
  ctx.continuous = meta.continuous ?? null;
  ctx.lrScale = meta.lrScale ?? 1;
  ctx.rollbacks = meta.rollbacks ?? 0;
  if (meta.pseudo && !(await exists(meta.pseudo))) throw new Error(`resume: ${pointer.file} names the pseudo-label generation ${meta.pseudo}, which does not exist`);
  ctx.done = [...meta.done];
  ctx.results = meta.results.filter((r) => meta.done.includes(r.phase));
  ctx.events.log(`resume: ${pointer.file} (phase ${meta.phase}, iteration ${meta.iteration}; done: ${meta.done.join(', ') || 'nothing'}; ` +
    `pseudo-labels: ${meta.pseudo ? basename(meta.pseudo) : 'none'})`);
  const point: ResumePoint = {
    iteration: meta.iteration,
    losses: meta.losses,
    optimizer: state.optimizer ? { ...state.optimizer, slots: new Map([...state.optimizer.slots].map(([k, v]) => [k, v.clone()])) } : undefined,
    discriminator: state.discriminator ? new Map([...state.discriminator].map(([k, v]) => [k, v.clone()])) : undefined,
    discriminatorOptimizer: state.discriminatorOptimizer ? { ...state.discriminatorOptimizer, slots: new Map([...state.discriminatorOptimizer.slots].map(([k, v]) => [k, v.clone()])) } : undefined,
  };
  disposeCheckpoint(state);
  return meta.done.includes(meta.phase) ? null : { phase: meta.phase, point };
}

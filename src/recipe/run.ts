/**
 * Runs a recipe, a list of method phases (src/methods/registry.ts): backend, data, model, then each phase
 * in order with resume (resume.ts), rollback after a non-finite streak, evaluation after each training
 * phase, a checkpoint after each phase, and the report.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import type { FaultCounts } from '../data/faults.ts';
import { writeJsonAtomic } from '../io/atomic.ts';
import { openDataset, SampleReader, type Dataset } from '../data/reader.ts';
import { loadSafetensors } from '../io/weights.ts';
import { selectBackend } from '../ops/backend.ts';
import { deeplabV2 } from '../ops/model/deeplab.ts';
import type { SpclConfig } from './config.ts';
import type { SpclMetrics } from '../observe/metrics.ts';
import { metricsEvents } from '../observe/events.ts';
import type { RunEvents } from '../observe/run-events.ts';
import { reportDataEvents } from '../observe/report-data.ts';
import { writeReportHtml } from '../observe/report-html.ts';
import { createContext, type PhaseResultLike } from './context.ts';
import type { Method } from './method.ts';
import { writePreviews } from './previews.ts';
import { restore, rollBack, selectBest } from './resume.ts';
import { checkpointState, evaluatePhase, kernelThreadsOf, type ResumePoint } from './trainer.ts';
import { NonFiniteStreak } from '../stages/train-step.ts';

export interface PhaseReport {
  phase: string;
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
  /** CPU seconds of the process over the run (user + system, every thread: the trainer and the decode workers). */
  cpuSeconds: number;
  /** Share of training-step time spent waiting for data, per training phase. */
  starvation: Record<string, number>;
  /** Skipped samples by stage and reason; `repaired`: kept after a repair (src/data/faults.ts). */
  skipped: FaultCounts;
  repaired: FaultCounts;
  /** Stopped by SIGINT/SIGTERM before the end (resume with --resume). */
  stopped: boolean;
  classNames: string[];
  tensorsAtEnd: number;
  /** The summary of the endless phase (continuous adaptation, src/methods/continuous.ts), when it ran. */
  continuous?: object;
  /** Rollbacks after non-finite streaks, and the learning-rate factor they left (1 = none). */
  rollbacks: number;
  lrScale: number;
  config: SpclConfig;
}
async function open(dir: string, what: string, numClasses: number): Promise<Dataset> {
  const ds = await openDataset(dir).catch((err: Error) => {
    throw new Error(`config: data.${what}: ${err.message}`);
  });
  if (ds.manifest.numClasses !== numClasses) {
    throw new Error(
      `config: data.numClasses is ${numClasses} but ${join(dir, 'manifest.json')} (data.${what}) has ${ds.manifest.numClasses} classes`,
    );
  }
  return ds;
}

export interface RunOptions {
  cfg: SpclConfig;
  /** The phases, in order (SPCL_RECIPE: REFERENCE 1). */
  recipe: readonly Method[];
  /** The endless phase that may follow (`continuous` below says whether it runs). */
  endless?: Method;
  /** Continue from the last checkpoint of cfg.out. */
  resume?: boolean;
  /** Run only these phases (with --resume or a checkpoint that has what they need), even if done before. */
  only?: string[];
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
  const cpu0 = process.cpuUsage();
  const backend = await selectBackend(cfg.backend, { log: events.log, wasmThreads: kernelThreadsOf(cfg) });
  const numClasses = cfg.data.numClasses;
  const data = {
    source: await open(cfg.data.source, 'source', numClasses),
    target: await open(cfg.data.target, 'target', numClasses),
    targetVal: cfg.data.targetVal ? await open(cfg.data.targetVal, 'targetVal', numClasses) : null,
  };
  if (opts.metrics)
    events = metricsEvents(
      opts.metrics,
      { preset: cfg.preset, classifierLrMult: cfg.optimizer.classifierLrMult },
      data.source.manifest.classNames,
      backend,
      events,
      data.target.keys.length,
    );
  const model = deeplabV2({ backbone: cfg.model.backbone, numClasses, seed: cfg.seed });
  if (cfg.model.weights) {
    const r = await loadSafetensors(model, cfg.model.weights);
    events.log(
      `model: loaded ${r.loaded.length} tensors from ${cfg.model.weights}` +
        (r.missing.length ? ` (${r.missing.length} missing, kept at init: ${r.missing.slice(0, 4).join(', ')}...)` : ''),
    );
  }
  await mkdir(cfg.out, { recursive: true });
  // what report.html draws beyond report.json: curves, evaluations, pseudo-label generations (appended, resume-safe)
  const recorder = reportDataEvents(cfg.out, events, { every: cfg.logEvery });
  events = recorder;
  const reader = new SampleReader({
    threads: cfg.data.workers || undefined,
    tasksPerWorker: cfg.data.tasksPerWorker,
    unknownLabels: cfg.data.unknownLabelIds,
    retries: cfg.data.retries,
    retryDelay: cfg.data.retryDelay,
    log: events.log,
  });
  const ctx = createContext({ cfg, backend, model, reader, data, events });
  ctx.signal = opts.signal;
  ctx.checkpoints.onSaved = (seconds, bytes) => events.checkpoint?.(seconds, bytes);
  try {
    const tensorsAfter = new Map<string, number>();
    let resumePoint: { phase: string; point: ResumePoint } | null = null;
    if (opts.resume || opts.checkpoint) resumePoint = await restore(ctx, opts.checkpoint);
    const phases = [...opts.recipe, ...(opts.endless ? [opts.endless] : [])];
    const wanted = new Set(opts.only ?? opts.recipe.map((m) => m.name));
    if (opts.continuous && opts.endless) wanted.add(opts.endless.name);
    const unknown = [...wanted].filter((n) => !phases.some((m) => m.name === n));
    if (unknown.length)
      throw new Error(`no phase named ${unknown.join(', ')} in this recipe (phases: ${phases.map((m) => m.name).join(', ')})`);
    if (opts.only) ctx.done = ctx.done.filter((p) => !opts.only!.includes(p));
    let continuous: object | undefined;
    for (const method of phases) {
      const phase = method.name;
      if (!wanted.has(phase) || ctx.done.includes(phase)) continue;
      if (opts.signal?.aborted) break;
      events.phase?.(phase, 'start');
      ctx.stepsAfter = phases
        .slice(phases.indexOf(method) + 1)
        .filter((m) => wanted.has(m.name) && !ctx.done.includes(m.name))
        .reduce((n, m) => n + (m.steps?.(cfg) ?? 0), 0);
      let point = resumePoint?.phase === phase ? resumePoint.point : { iteration: 0 };
      let result: PhaseResultLike;
      for (;;) {
        try {
          result = await method.run(ctx, point);
          break;
        } catch (err) {
          if (!(err instanceof NonFiniteStreak)) throw err;
          point = await rollBack(ctx, phase, err);
        }
      }
      if (method.kind === 'endless') continuous = result.summary;
      if (result.aborted) break;
      if (method.kind === 'endless') {
        // never "done": a resume (or a larger step budget) goes on from its iteration
        result.eval = await evaluatePhase(ctx, phase);
        if (!opts.signal?.aborted) await writePreviews(ctx, phase);
        ctx.results.push(result);
        tensorsAfter.set(phase, tf.memory().numTensors);
        events.phase?.(phase, 'end');
        continue;
      }
      if (method.kind === 'train') {
        result.eval = await evaluatePhase(ctx, phase);
        if (cfg.checkpoint.select === 'best-val') await selectBest(ctx, phase, result);
        if (opts.signal?.aborted) break; // the evaluation was cut short: the phase is not done, --resume evaluates again
        await writePreviews(ctx, phase); // report.html's images, from the model the checkpoint below keeps
      }
      ctx.done.push(phase);
      ctx.results.push(result);
      tensorsAfter.set(phase, tf.memory().numTensors);
      await ctx.checkpoints.save(checkpointState(ctx, phase, result.iterations), phase, result.iterations, result.eval?.miou ?? null);
      events.phase?.(phase, 'end');
    }
    const report: RunReport = {
      preset: cfg.preset,
      backend,
      seed: cfg.seed,
      phases: ctx.results.map((r) => ({
        phase: r.phase,
        miou: r.eval?.miou ?? null,
        classIoU: r.eval?.classIoU ?? null,
        tailMiou: r.eval?.tailMiou ?? null,
        seconds: r.seconds,
        iterations: r.iterations,
        losses: r.losses,
        tensors: tensorsAfter.get(r.phase) ?? -1,
      })),
      seconds: (performance.now() - t0) / 1000,
      cpuSeconds: ((u) => (u.user + u.system) / 1e6)(process.cpuUsage(cpu0)),
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
    // a by-product: a failure is logged, the run's result stands
    await writeReportHtml(cfg.out, { report }).catch((err: Error) =>
      events.log(`report.html not written: ${err.message}; node pipelines/report.ts --run ${cfg.out} writes it`),
    );
    if (!report.stopped) events.finished?.();
    return report;
  } finally {
    recorder.close();
    await reader.close();
    ctx.prototypes.dispose();
    model.dispose();
  }
}

const pct = (v: number | null) => (v === null ? '   -  ' : (100 * v).toFixed(2).padStart(6));

/** The report as the pipelines print it: one row per phase (target val mIoU, tail mIoU, seconds). */
export function reportTable(r: RunReport): string {
  const rows = r.phases.map((p) => `${p.phase.padEnd(16)} ${pct(p.miou)}  ${pct(p.tailMiou)}  ${p.seconds.toFixed(0).padStart(6)}`);
  return [
    `phase            mIoU %  tail %  time s   (target val, backend ${r.backend}, seed ${r.seed})`,
    ...rows,
    `total ${r.seconds.toFixed(0)} s; trainer waited for data: ${Object.entries(r.starvation)
      .map(([k, v]) => `${k} ${(100 * v).toFixed(1)}%`)
      .join(', ')}`,
  ].join('\n');
}

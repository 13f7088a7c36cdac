/**
 * The run's events recorded as Prometheus metrics (`metrics.ts`), on top of another RunEvents (logs).
 */
import * as tf from '@tensorflow/tfjs';
import type { Credits } from '../graph/flow.ts';
import type { RunEvents } from './run-events.ts';
import { faultReason } from '../data/faults.ts';
import type { SpclMetrics } from './metrics.ts';

const SMOOTHING = 0.98;

/** What the metrics need to know about the run: its preset (a build_info label) and the classifier's LR multiplier. */
export interface MetricsRun {
  preset: string;
  classifierLrMult: number;
}

export function metricsEvents(
  m: SpclMetrics,
  run: MetricsRun,
  classNames: readonly string[],
  backend: string,
  base: RunEvents,
  targetImages = 0,
): RunEvents {
  const smoothed = new Map<string, number>();
  const flows = new Map<string, Credits>();
  const version = process.env.npm_package_version ?? '0.1.0';
  let phase = 'init';
  const info = () => {
    m.buildInfo.reset();
    m.buildInfo.set({ version, backend, phase, preset: run.preset }, 1);
    m.phaseInfo.reset();
    m.phaseInfo.set({ phase }, 1);
  };
  info();
  m.targetImages.set(targetImages);
  // Queue depth follows the flows' credits (updated as samples move).
  const collectQueues = () => {
    for (const [name, c] of flows) {
      m.queueLength.set({ queue: name }, c.inFlight);
      m.queueCapacity.set({ queue: name }, c.capacity);
    }
  };
  return {
    ...base,
    phase(p, state) {
      if (state === 'start') {
        phase = p;
        // series of the previous phase (its queues, loss terms, LR groups) would otherwise stay frozen
        flows.clear();
        smoothed.clear();
        for (const g of [m.queueLength, m.queueCapacity, m.trainLoss, m.trainLossSmoothed, m.learningRate, m.trainStepStat]) g.reset();
      }
      info();
      base.phase?.(p, state);
    },
    finished() {
      phase = 'done';
      info();
      base.finished?.();
    },
    flow(name, credits) {
      flows.set(name, credits);
      collectQueues();
    },
    decoded(s) {
      m.decodeDuration.observe(s.seconds);
      m.decodeBytes.inc(s.encodedBytes);
      m.stageItems.inc({ stage: 'decode-augment' });
      m.stageDuration.observe({ stage: 'decode-augment' }, s.seconds);
      collectQueues();
    },
    batched() {
      m.stageItems.inc({ stage: 'collate' });
      collectQueues();
    },
    step(r) {
      m.trainSteps.inc({ phase: r.phase });
      m.stageItems.inc({ stage: 'train-step' });
      m.trainStepDuration.observe({ phase: r.phase }, r.seconds);
      m.stageDuration.observe({ stage: 'train-step' }, r.seconds);
      m.trainDataWait.inc(r.waitSeconds);
      m.trainIteration.set({ phase: r.phase }, r.iteration);
      if (r.skipped) m.trainSkippedSteps.inc({ reason: 'non_finite_loss' });
      for (const [term, v] of Object.entries(r.losses)) {
        if (!Number.isFinite(v)) continue;
        m.trainLoss.set({ term }, v);
        const prev = smoothed.get(term);
        const next = prev === undefined ? v : SMOOTHING * prev + (1 - SMOOTHING) * v;
        smoothed.set(term, next);
        m.trainLossSmoothed.set({ term }, next);
      }
      m.learningRate.set({ group: 'backbone' }, r.lr);
      m.learningRate.set({ group: 'classifier' }, r.lr * run.classifierLrMult);
      // a method's own optimisers (the warm-up's discriminator) report their rates with the step
      for (const [group, lr] of Object.entries(r.lrs ?? {})) m.learningRate.set({ group }, lr);
      for (const [domain, n] of Object.entries(r.samples ?? {})) if (n > 0) m.trainSamples.inc({ domain }, n);
      for (const [name, v] of Object.entries(r.stats ?? {})) if (Number.isFinite(v)) m.trainStepStat.set({ phase: r.phase, name }, v);
      base.step?.(r);
    },
    skip(stage, error) {
      // the reason comes with the error from where the fault arose; anything else is 'other' (bounded labels)
      m.samplesSkipped.inc({ stage, reason: faultReason(error.reason) });
      m.errors.inc({ stage, kind: 'skipped_sample' });
      base.skip?.(stage, error);
    },
    repaired(stage, fault) {
      m.samplesRepaired.inc({ stage, reason: fault.reason });
      base.repaired?.(stage, fault);
    },
    evaluated(p, report) {
      m.evalMiou.set({ split: 'target_val' }, report.miou);
      if (report.tailMiou !== null) m.evalTailMiou.set({ split: 'target_val' }, report.tailMiou);
      report.classIoU.forEach((v, k) => m.evalClassIou.set({ class: classNames[k] ?? String(k) }, v));
      m.evalLastSuccess.set(Date.now() / 1000);
      m.stageItems.inc({ stage: 'evaluate' }, report.images);
      base.evaluated?.(p, report);
    },
    rolledBack(p, lrScale) {
      m.trainRollbacks.inc({ phase: p });
      m.trainLrScale.set(lrScale);
      base.rolledBack?.(p, lrScale);
    },
    arrivals(a) {
      m.targetImages.set(a.total);
      m.targetArrivals.inc({ source: 'watch' }, a.ingested);
      m.targetArrivals.inc({ source: 'ingest' }, Math.max(0, a.added - a.ingested));
      m.pseudoPending.set(Math.max(0, a.pending));
      if (a.problems) m.errors.inc({ stage: 'watch-target', kind: 'ingest_problem' }, a.problems);
      base.arrivals?.(a);
    },
    refreshed(trigger, pending) {
      m.pseudoRefreshes.inc({ trigger });
      m.pseudoPending.set(Math.max(0, pending));
      base.refreshed?.(trigger, pending);
    },
    pseudoLabels(info, counts) {
      m.pseudoGeneration.set(info.generation);
      m.pseudoLastRefresh.set(Date.now() / 1000);
      m.pseudoWritten.inc(info.count);
      m.stageItems.inc({ stage: 'write-pseudo-labels' }, info.count);
      info.thresholds.forEach((t, k) => m.classThreshold.set({ class: classNames[k] ?? String(k) }, t));
      info.coverage.forEach((c, k) => m.pseudoCoverage.set({ class: classNames[k] ?? String(k) }, counts[k] ? c : 0));
      base.pseudoLabels?.(info, counts);
    },
    checkpoint(seconds, bytes) {
      m.checkpointDuration.observe(seconds);
      m.checkpointSize.set(bytes);
      m.checkpointLastSuccess.set(Date.now() / 1000);
      base.checkpoint?.(seconds, bytes);
    },
    prototypes(p) {
      m.prototypeUpdateNorm.set(p.lastUpdateNorm);
      const [seen, maxCos] = tf.tidy(() => {
        const P = p.tensor;
        const norms = tf.norm(P, 2, 1);
        const present = tf.greater(norms, 0);
        const unit = tf.div(P, tf.maximum(norms, 1e-12).expandDims(1));
        const cos = tf.matMul(unit, unit.transpose());
        const k = P.shape[0];
        const offDiag = tf.sub(cos, tf.mul(tf.eye(k), 2)); // diagonal pushed below any cosine
        return [present.sum().dataSync()[0]!, k > 1 ? offDiag.max().dataSync()[0]! : 0];
      });
      m.prototypeClassesSeen.set(seen);
      m.prototypeMaxCosine.set(maxCos);
      base.prototypes?.(p);
    },
  };
}

/**
 * Prometheus metrics of a run (docs: shared/docs/MONITORING.md): one prom-client registry per process
 * with Node's default metrics and the pipeline's own, all prefixed `spcl_`, base units in the names,
 * bounded label values only (stage, queue, term, domain, reason, class name). Worker threads send their
 * figures as data with each result (decode seconds, bytes); the main thread records them here.
 */
import * as tf from '@tensorflow/tfjs';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { FAULT_REASONS, REPAIR_REASONS } from '../data/faults.ts';

export const METRIC_PREFIX = 'spcl_';

export interface SpclMetrics {
  registry: Registry;
  stageItems: Counter<'stage'>;
  stageDuration: Histogram<'stage'>;
  queueLength: Gauge<'queue'>;
  queueCapacity: Gauge<'queue'>;
  trainDataWait: Counter;
  trainSteps: Counter<'phase'>;
  trainStepDuration: Histogram<'phase'>;
  trainSamples: Counter<'domain'>;
  trainSkippedSteps: Counter<'reason'>;
  trainRollbacks: Counter<'phase'>;
  trainLrScale: Gauge;
  trainLoss: Gauge<'term'>;
  trainLossSmoothed: Gauge<'term'>;
  trainStepStat: Gauge<'phase' | 'name'>;
  trainIteration: Gauge<'phase'>;
  learningRate: Gauge<'group'>;
  prototypeUpdateNorm: Gauge;
  prototypeClassesSeen: Gauge;
  prototypeMaxCosine: Gauge;
  classThreshold: Gauge<'class'>;
  pseudoCoverage: Gauge<'class'>;
  pseudoGeneration: Gauge;
  pseudoWritten: Counter;
  targetImages: Gauge;
  targetArrivals: Counter<'source'>;
  pseudoPending: Gauge;
  pseudoRefreshes: Counter<'trigger'>;
  pseudoLastRefresh: Gauge;
  evalMiou: Gauge<'split'>;
  evalTailMiou: Gauge<'split'>;
  evalClassIou: Gauge<'class'>;
  evalLastSuccess: Gauge;
  checkpointLastSuccess: Gauge;
  checkpointDuration: Histogram;
  checkpointSize: Gauge;
  samplesSkipped: Counter<'stage' | 'reason'>;
  samplesRepaired: Counter<'stage' | 'reason'>;
  errors: Counter<'stage' | 'kind'>;
  decodeDuration: Histogram;
  decodeBytes: Counter;
  tfTensors: Gauge;
  tfBytes: Gauge;
  buildInfo: Gauge<'version' | 'backend' | 'phase' | 'preset'>;
  phaseInfo: Gauge<'phase'>;
}

export function createMetrics(opts: { defaultMetrics?: boolean } = {}): SpclMetrics {
  const registry = new Registry();
  const registers = [registry];
  if (opts.defaultMetrics ?? true) {
    collectDefaultMetrics({ register: registry, prefix: METRIC_PREFIX });
    // prom-client also exports three gauges named *_total, which `promtool check metrics` rejects (that
    // suffix means a counter); the same figures stay available per type as nodejs_active_{handles,
    // requests,resources}.
    for (const name of ['active_handles', 'active_requests', 'active_resources'])
      registry.removeSingleMetric(`${METRIC_PREFIX}nodejs_${name}_total`);
  }
  const counter = <L extends string>(name: string, help: string, labelNames: L[] = []) =>
    new Counter<L>({ name: METRIC_PREFIX + name, help, labelNames, registers });
  const gauge = <L extends string>(name: string, help: string, labelNames: L[] = []) =>
    new Gauge<L>({ name: METRIC_PREFIX + name, help, labelNames, registers });
  const histogram = <L extends string>(name: string, help: string, labelNames: L[], buckets: number[]) =>
    new Histogram<L>({ name: METRIC_PREFIX + name, help, labelNames, buckets, registers });
  const seconds = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
  const m: SpclMetrics = {
    registry,
    stageItems: counter('stage_items_total', 'Items that left each stage.', ['stage']),
    stageDuration: histogram('stage_duration_seconds', 'Time one item spends in a stage.', ['stage'], seconds),
    queueLength: gauge('queue_length', 'Items taken from a source and not yet released (in flight) per bounded flow.', ['queue']),
    queueCapacity: gauge('queue_capacity', 'Credits (maximum items in flight) of each bounded flow.', ['queue']),
    trainDataWait: counter(
      'train_data_wait_seconds_total',
      'Seconds the trainer waited for the next batch; its rate is the starved fraction of time.',
    ),
    trainSteps: counter('train_steps_total', 'Training steps completed.', ['phase']),
    trainStepDuration: histogram(
      'train_step_duration_seconds',
      'Compute time of one training step (data wait excluded).',
      ['phase'],
      seconds,
    ),
    trainSamples: counter('train_samples_total', 'Samples consumed by training steps.', ['domain']),
    trainSkippedSteps: counter('train_skipped_steps_total', 'Steps whose update was skipped.', ['reason']),
    trainRollbacks: counter(
      'train_rollbacks_total',
      'Rollbacks to the last checkpoint after a streak of non-finite steps (nonFinite.limit).',
      ['phase'],
    ),
    trainLrScale: gauge(
      'train_learning_rate_scale_ratio',
      'Factor on every learning rate left by rollbacks (1 = none; x nonFinite.lrFactor per rollback).',
    ),
    trainLoss: gauge('train_loss', 'Loss of the last step, per term.', ['term']),
    trainLossSmoothed: gauge('train_loss_smoothed', 'Exponential moving average (0.98) of the loss per term.', ['term']),
    trainStepStat: gauge(
      'train_step_stat',
      "Per-step figures a method reports besides its losses (mean teacher: teacher_weight, the share of pixels above the teacher's confidence threshold; mixed_share, the share of pixels ClassMix pasted; self-training: labelled_share, the share of target pixels with a pseudo-label).",
      ['phase', 'name'],
    ),
    trainIteration: gauge('train_iteration', 'Completed iterations of the current training phase.', ['phase']),
    learningRate: gauge('train_learning_rate', 'Learning rate per parameter group.', ['group']),
    prototypeUpdateNorm: gauge('prototype_update_norm', 'Frobenius norm of the last EMA change of the prototypes.'),
    prototypeClassesSeen: gauge('prototype_classes_seen', 'Classes with a non-zero prototype.'),
    prototypeMaxCosine: gauge(
      'prototype_max_cosine_similarity',
      'Largest cosine similarity between two different class prototypes (collapse shows as 1).',
    ),
    classThreshold: gauge('class_threshold', 'Confidence threshold of each class in the current pseudo-label generation.', ['class']),
    pseudoCoverage: gauge('pseudo_label_coverage_ratio', 'Share of the pixels predicted as a class that keep a pseudo-label.', ['class']),
    pseudoGeneration: gauge('pseudo_label_generation', 'Number of the current pseudo-label generation.'),
    pseudoWritten: counter('pseudo_labels_written_total', 'Images written to pseudo-label generations.'),
    targetImages: gauge('target_images', 'Target images known: the target dataset manifest, as last read.'),
    targetArrivals: counter(
      'target_arrivals_total',
      'Target images that arrived while the run went on: written by another ingest, or ingested from the watched folder.',
      ['source'],
    ),
    pseudoPending: gauge(
      'pseudo_label_pending_images',
      'Target images that the current pseudo-label generation does not cover yet (they train after the next refresh).',
    ),
    pseudoRefreshes: counter(
      'pseudo_label_refreshes_total',
      'Threshold + pseudo-label refreshes of the continuous phase, by what triggered them.',
      ['trigger'],
    ),
    pseudoLastRefresh: gauge('pseudo_label_last_refresh_timestamp_seconds', 'Unix time of the last pseudo-label generation written.'),
    evalMiou: gauge('eval_miou_ratio', 'Mean IoU of the last evaluation.', ['split']),
    evalTailMiou: gauge('eval_tail_miou_ratio', 'Mean IoU over the tail classes of the last evaluation.', ['split']),
    evalClassIou: gauge('eval_class_iou_ratio', 'IoU per class of the last evaluation.', ['class']),
    evalLastSuccess: gauge('eval_last_success_timestamp_seconds', 'Unix time of the last completed evaluation.'),
    checkpointLastSuccess: gauge('checkpoint_last_success_timestamp_seconds', 'Unix time of the last checkpoint written.'),
    checkpointDuration: histogram(
      'checkpoint_save_duration_seconds',
      'Time to write a checkpoint.',
      [],
      [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    ),
    checkpointSize: gauge('checkpoint_size_bytes', 'Size of the last checkpoint file.'),
    samplesSkipped: counter('samples_skipped_total', `Samples skipped by stage and reason (${FAULT_REASONS.join(', ')}).`, [
      'stage',
      'reason',
    ]),
    samplesRepaired: counter(
      'samples_repaired_total',
      'Samples kept after a repair, by stage and reason (unknown_label_ids: label values that are neither a train ID nor 255 set to 255).',
      ['stage', 'reason'],
    ),
    errors: counter('errors_total', 'Errors by stage and kind.', ['stage', 'kind']),
    decodeDuration: histogram('decode_duration_seconds', 'Decode + augment time of one sample in a worker thread.', [], seconds),
    decodeBytes: counter('decode_bytes_total', 'Encoded bytes read and decoded by the workers.'),
    // tfjs memory is read when Prometheus scrapes, not on every step.
    tfTensors: new Gauge({
      name: `${METRIC_PREFIX}tf_tensors`,
      help: 'Live tfjs tensors (a leak shows as a climbing line).',
      registers,
      collect() {
        this.set(tf.memory().numTensors);
      },
    }),
    tfBytes: new Gauge({
      name: `${METRIC_PREFIX}tf_bytes`,
      help: 'Bytes held by live tfjs tensors.',
      registers,
      collect() {
        this.set(tf.memory().numBytes);
      },
    }),
    buildInfo: gauge('build_info', 'Version, backend, phase and preset of the run (value 1).', ['version', 'backend', 'phase', 'preset']),
    phaseInfo: gauge('phase_info', 'The phase running now (value 1).', ['phase']),
  };
  // Counters with labels have no series until first incremented; start the known ones at 0 so that
  // dashboards and alerts see 0, not "no data".
  for (const reason of FAULT_REASONS) m.samplesSkipped.inc({ stage: 'decode-augment', reason }, 0);
  for (const reason of REPAIR_REASONS) m.samplesRepaired.inc({ stage: 'decode-augment', reason }, 0);
  m.errors.inc({ stage: 'decode-augment', kind: 'skipped_sample' }, 0);
  m.trainSkippedSteps.inc({ reason: 'non_finite_loss' }, 0);
  m.trainLrScale.set(1);
  for (const phase of ['warmup', 'spcl', 'ssl', 'continuous']) m.trainRollbacks.inc({ phase }, 0);
  m.trainDataWait.inc(0);
  m.pseudoWritten.inc(0);
  for (const source of ['ingest', 'watch']) m.targetArrivals.inc({ source }, 0);
  for (const trigger of ['start', 'steps', 'arrivals']) m.pseudoRefreshes.inc({ trigger }, 0);
  m.pseudoPending.set(0);
  m.decodeBytes.inc(0);
  return m;
}

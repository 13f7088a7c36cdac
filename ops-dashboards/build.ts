/**
 * The Grafana dashboard of an SPCL training run, generated from plain objects so that tests can check
 * every query against the metrics registry (`src/observe/metrics.ts`) and against a real Prometheus.
 *
 *   node ops-dashboards/build.ts           writes ops-dashboards/grafana/spcl-training.json
 *   node ops-dashboards/build.ts --check   exits 1 when the committed JSON is not what this file generates
 *
 * Conventions (shared/docs/MONITORING.md): a `datasource` variable and `job` / `instance` variables,
 * every selector filtered by `{job=~"$job", instance=~"$instance"}`, rates on `$__rate_interval`,
 * every panel titled, described and with a unit, unique panel ids, a fixed uid.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const DASHBOARD_UID = 'spcl-training';
/** uid of the Prometheus datasource in grafana/provisioning/datasources.yml (the variable's default). */
export const DATASOURCE_UID = 'spcl-prometheus';
export const DATASOURCE_NAME = 'SPCL Prometheus';
export const DASHBOARD_PATH = join(dirname(fileURLToPath(import.meta.url)), 'grafana', 'spcl-training.json');

type Json = Record<string, unknown>;

const DS = { type: 'prometheus', uid: '${datasource}' } as const;
const FILTER = 'job=~"$job", instance=~"$instance"';
const RATE_INTERVAL = '$__rate_interval';

/** `name{job=~"$job", instance=~"$instance", extra}` */
const sel = (name: string, extra = '') => `${name}{${FILTER}${extra ? `, ${extra}` : ''}}`;
const rate = (name: string, extra = '') => `rate(${sel(name, extra)}[${RATE_INTERVAL}])`;
const increase = (name: string, extra = '') => `increase(${sel(name, extra)}[${RATE_INTERVAL}])`;
const quantile = (q: number, histogram: string, by: string[] = []) =>
  `histogram_quantile(${q}, sum by (${['le', ...by].join(', ')}) (${rate(`${histogram}_bucket`)}))`;

interface TargetSpec {
  expr: string;
  legend?: string;
}

interface PanelSpec {
  type: 'timeseries' | 'stat' | 'bargauge';
  title: string;
  description: string;
  unit: string;
  w: number;
  h: number;
  targets: TargetSpec[];
  /** instant queries (bar gauges of the last value) */
  instant?: boolean;
  min?: number;
  max?: number;
  decimals?: number;
  /** threshold steps after the base step (green) */
  thresholds?: { color: string; value: number }[];
  /** merged over the type's default options */
  options?: Json;
  /** merged over the type's default fieldConfig.defaults.custom (time series) */
  custom?: Json;
  color?: Json;
  overrides?: Json[];
}

interface RowSpec {
  title: string;
  /** left to right, wrapping at 24 columns; an array is a column of panels stacked top to bottom */
  panels: (PanelSpec | PanelSpec[])[];
}

// ---------------------------------------------------------------------------------------------------
// Panels, row by row

const overview: RowSpec = {
  title: 'Overview',
  panels: [
    {
      type: 'stat',
      title: 'Phase',
      unit: 'none',
      w: 3,
      h: 4,
      description:
        'The recipe phase running now (spcl_phase_info): init, warmup, prototypes, pseudo-labels, spcl, pseudo-labels-2, ssl. The phase changes are also drawn as annotations.',
      targets: [{ expr: `${sel('spcl_phase_info')} == 1`, legend: '{{phase}}' }],
      options: { textMode: 'name', colorMode: 'none', graphMode: 'none' },
    },
    {
      type: 'stat',
      title: 'Backend / preset',
      unit: 'none',
      w: 3,
      h: 4,
      description: 'tfjs backend (tensorflow, wasm, cpu), configuration preset and version of the run (spcl_build_info).',
      targets: [{ expr: sel('spcl_build_info'), legend: '{{backend}} · {{preset}} · v{{version}}' }],
      options: { textMode: 'name', colorMode: 'none', graphMode: 'none' },
    },
    {
      type: 'stat',
      title: 'Training steps / s',
      unit: 'ops',
      w: 3,
      h: 4,
      decimals: 2,
      description:
        'Training steps completed per second over all training phases (rate of spcl_train_steps_total). 0 while prototypes or pseudo-labels are computed; 0 during a training phase means the trainer is stalled.',
      targets: [{ expr: `sum(${rate('spcl_train_steps_total')})`, legend: 'steps/s' }],
    },
    {
      type: 'stat',
      title: 'Current iteration',
      unit: 'none',
      w: 3,
      h: 4,
      description:
        'Iterations completed in the training phase running now (spcl_train_iteration of the phase in spcl_phase_info). Empty between training phases.',
      targets: [
        {
          expr: `max by (phase) (${sel('spcl_train_iteration')} and on (job, instance, phase) ${sel('spcl_phase_info')} == 1)`,
          legend: '{{phase}}',
        },
      ],
      options: { textMode: 'value_and_name', graphMode: 'none' },
    },
    {
      type: 'stat',
      title: 'Trainer waiting for data',
      unit: 'percentunit',
      w: 3,
      h: 4,
      decimals: 1,
      min: 0,
      max: 1,
      description:
        'Fraction of wall time the trainer waited for the next batch (rate of spcl_train_data_wait_seconds_total). Above 50% the data pipeline, not the model, sets the pace: see the Data pipeline row.',
      targets: [{ expr: `sum(${rate('spcl_train_data_wait_seconds_total')})`, legend: 'waiting' }],
      thresholds: [
        { color: 'yellow', value: 0.2 },
        { color: 'red', value: 0.5 },
      ],
    },
    {
      type: 'stat',
      title: 'Last target mIoU',
      unit: 'percentunit',
      w: 3,
      h: 4,
      decimals: 2,
      description:
        'Mean IoU on the labelled target validation split at the last evaluation (spcl_eval_miou_ratio). Evaluations run at the end of each training phase and every eval.every iterations.',
      targets: [{ expr: sel('spcl_eval_miou_ratio'), legend: '{{split}}' }],
      options: { colorMode: 'none' },
    },
    {
      type: 'stat',
      title: 'Since last evaluation',
      unit: 's',
      w: 3,
      h: 4,
      description:
        'Seconds since the last completed evaluation (time() - spcl_eval_last_success_timestamp_seconds). Empty until the first evaluation of this process.',
      targets: [{ expr: `time() - (${sel('spcl_eval_last_success_timestamp_seconds')} > 0)`, legend: 'age' }],
      options: { colorMode: 'none', graphMode: 'none' },
    },
    {
      type: 'stat',
      title: 'Checkpoint age',
      unit: 's',
      w: 3,
      h: 4,
      description:
        'Seconds since the last checkpoint was written (time() - spcl_checkpoint_last_success_timestamp_seconds); a crash loses at most this much training. Empty until the first checkpoint of this process. Alert SpclCheckpointTooOld fires above 1 h during training.',
      targets: [{ expr: `time() - (${sel('spcl_checkpoint_last_success_timestamp_seconds')} > 0)`, legend: 'age' }],
      thresholds: [
        { color: 'yellow', value: 1800 },
        { color: 'red', value: 3600 },
      ],
      options: { graphMode: 'none' },
    },
  ],
};

const dataPipeline: RowSpec = {
  title: 'Data pipeline',
  panels: [
    {
      type: 'timeseries',
      title: 'Throughput per stage',
      unit: 'ops',
      w: 12,
      h: 8,
      description:
        'Items leaving each stage per second (rate of spcl_stage_items_total): decoded + augmented samples, collated batches, training steps, evaluated images, pseudo-label images written.',
      targets: [{ expr: `sum by (stage) (${rate('spcl_stage_items_total')})`, legend: '{{stage}}' }],
    },
    {
      type: 'timeseries',
      title: 'Stage latency p50 / p95',
      unit: 's',
      w: 12,
      h: 8,
      description: 'Time one item spends in a stage, median and 95th percentile (spcl_stage_duration_seconds histogram).',
      targets: [
        { expr: quantile(0.5, 'spcl_stage_duration_seconds', ['stage']), legend: 'p50 {{stage}}' },
        { expr: quantile(0.95, 'spcl_stage_duration_seconds', ['stage']), legend: 'p95 {{stage}}' },
      ],
    },
    {
      type: 'timeseries',
      title: 'Queue length vs capacity',
      unit: 'short',
      w: 9,
      h: 8,
      description:
        'Samples in flight in each bounded flow (spcl_queue_length, solid) against its credits (spcl_queue_capacity, dashed). At capacity while the trainer does not wait: the model sets the pace (healthy). At capacity while the trainer waits: samples are stuck in decode/augment (add data.workers). Well below capacity while the trainer waits: reading the shards is slow.',
      targets: [
        { expr: `sum by (queue) (${sel('spcl_queue_length')})`, legend: '{{queue}} in flight' },
        { expr: `sum by (queue) (${sel('spcl_queue_capacity')})`, legend: '{{queue}} capacity' },
      ],
      overrides: [
        {
          matcher: { id: 'byRegexp', options: '/capacity$/' },
          properties: [
            { id: 'custom.lineStyle', value: { dash: [10, 10], fill: 'dash' } },
            { id: 'custom.fillOpacity', value: 0 },
          ],
        },
      ],
    },
    {
      type: 'bargauge',
      title: 'Queue fill',
      unit: 'percentunit',
      w: 5,
      h: 8,
      min: 0,
      max: 1,
      instant: true,
      description: 'spcl_queue_length / spcl_queue_capacity per flow, now.',
      targets: [
        { expr: `sum by (queue) (${sel('spcl_queue_length')}) / sum by (queue) (${sel('spcl_queue_capacity')})`, legend: '{{queue}}' },
      ],
      thresholds: [
        { color: 'yellow', value: 0.8 },
        { color: 'red', value: 0.95 },
      ],
    },
    {
      type: 'timeseries',
      title: 'Trainer starvation',
      unit: 'percentunit',
      w: 10,
      h: 8,
      min: 0,
      max: 1,
      description:
        'Fraction of time the trainer waited for data (rate of spcl_train_data_wait_seconds_total; 1 = waited all the time). The dashed line is the SpclTrainerStarved threshold (0.5 for 15 min).',
      targets: [{ expr: `sum(${rate('spcl_train_data_wait_seconds_total')})`, legend: 'waiting for data' }],
      thresholds: [{ color: 'red', value: 0.5 }],
      custom: { thresholdsStyle: { mode: 'dashed' } },
    },
    {
      type: 'timeseries',
      title: 'Decode time per sample',
      unit: 's',
      w: 8,
      h: 8,
      description:
        'Decode + augment time of one sample in a worker thread, median and 95th percentile (spcl_decode_duration_seconds histogram).',
      targets: [
        { expr: quantile(0.5, 'spcl_decode_duration_seconds'), legend: 'p50' },
        { expr: quantile(0.95, 'spcl_decode_duration_seconds'), legend: 'p95' },
      ],
    },
    {
      type: 'timeseries',
      title: 'Decoded bytes / s',
      unit: 'Bps',
      w: 8,
      h: 8,
      description: 'Encoded bytes read and decoded by the worker threads per second (rate of spcl_decode_bytes_total).',
      targets: [{ expr: `sum(${rate('spcl_decode_bytes_total')})`, legend: 'read' }],
    },
    {
      type: 'timeseries',
      title: 'Skipped samples by reason',
      unit: 'ops',
      w: 8,
      h: 8,
      description:
        'Samples skipped per second by stage and reason (rate of spcl_samples_skipped_total: missing_record, corrupt_record, corrupt_image, wrong_size, corrupt_label, unknown_label_ids, missing_pseudo_label, shard_unavailable (a shard file missing or unopenable after data.retries retries), other), samples kept after a repair (spcl_samples_repaired_total: unknown_label_ids set to 255) and errors by stage and kind (spcl_errors_total). The run goes on; the log names each sample and its shard file.',
      targets: [
        { expr: `sum by (stage, reason) (${rate('spcl_samples_skipped_total')})`, legend: 'skipped {{stage}} {{reason}}' },
        { expr: `sum by (stage, reason) (${rate('spcl_samples_repaired_total')})`, legend: 'repaired {{stage}} {{reason}}' },
        { expr: `sum by (stage, kind) (${rate('spcl_errors_total')})`, legend: 'errors {{stage}} {{kind}}' },
      ],
    },
  ],
};

const training: RowSpec = {
  title: 'Training',
  panels: [
    {
      type: 'timeseries',
      title: 'Loss per term',
      unit: 'none',
      w: 12,
      h: 8,
      description:
        'Loss of the last step per term (spcl_train_loss): seg (source cross-entropy), adv / disc (warm-up adversarial, when warmup.lambdaAdv > 0), cl_source / cl_target (prototype contrastive), ssl (self-training) and source (its source anchor, ssl.sourceWeight > 0), total. The series of a phase are cleared when the next phase starts.',
      targets: [{ expr: sel('spcl_train_loss'), legend: '{{term}}' }],
    },
    {
      type: 'timeseries',
      title: 'Smoothed loss per term',
      unit: 'none',
      w: 12,
      h: 8,
      description:
        'Exponential moving average (0.98) of each loss term (spcl_train_loss_smoothed). Alert SpclLossExploding compares the total with its value 1 h earlier.',
      targets: [{ expr: sel('spcl_train_loss_smoothed'), legend: '{{term}}' }],
    },
    {
      type: 'timeseries',
      title: 'Learning rate per group',
      unit: 'sci',
      w: 6,
      h: 8,
      description:
        'Learning rate per parameter group (spcl_train_learning_rate): backbone, classifier (x classifierLrMult), discriminator (warm-up only). Poly decay; log scale.',
      targets: [{ expr: sel('spcl_train_learning_rate'), legend: '{{group}}' }],
      custom: { scaleDistribution: { type: 'log', log: 10 } },
    },
    {
      type: 'timeseries',
      title: 'Step duration p50 / p95',
      unit: 's',
      w: 6,
      h: 8,
      description: 'Compute time of one training step without the data wait, per phase (spcl_train_step_duration_seconds histogram).',
      targets: [
        { expr: quantile(0.5, 'spcl_train_step_duration_seconds', ['phase']), legend: 'p50 {{phase}}' },
        { expr: quantile(0.95, 'spcl_train_step_duration_seconds', ['phase']), legend: 'p95 {{phase}}' },
      ],
    },
    {
      type: 'timeseries',
      title: 'Steps / s by phase',
      unit: 'ops',
      w: 6,
      h: 8,
      description: 'Training steps per second per phase (rate of spcl_train_steps_total).',
      targets: [{ expr: `sum by (phase) (${rate('spcl_train_steps_total')})`, legend: '{{phase}}' }],
    },
    {
      type: 'timeseries',
      title: 'Samples / s by domain',
      unit: 'ops',
      w: 6,
      h: 8,
      description: 'Samples consumed by training steps per second, source vs target domain (rate of spcl_train_samples_total).',
      targets: [{ expr: `sum by (domain) (${rate('spcl_train_samples_total')})`, legend: '{{domain}}' }],
    },
    {
      type: 'timeseries',
      title: 'Method statistics',
      unit: 'percentunit',
      w: 8,
      h: 6,
      min: 0,
      description:
        'Per-step figures a method reports besides its losses (spcl_train_step_stat). Mean teacher: teacher_weight, the share of target pixels whose teacher confidence exceeds methods.mean-teacher.threshold (the weight of the mixed loss; near 0 the teacher trusts nothing), and mixed_share, the share of pixels ClassMix pasted from the source. Self-training (ssl, continuous): labelled_share, the share of target pixels with a pseudo-label (the rest are below their class threshold).',
      targets: [{ expr: sel('spcl_train_step_stat'), legend: '{{phase}} {{name}}' }],
    },
    {
      type: 'timeseries',
      title: 'Skipped steps',
      unit: 'short',
      w: 8,
      h: 6,
      description:
        'Training steps whose update was skipped, per rate interval and reason (increase of spcl_train_skipped_steps_total). non_finite_loss: the loss or a gradient was NaN/Inf and the weights were left unchanged. Any value > 0 fires SpclLossNotFinite.',
      targets: [{ expr: `sum by (reason) (${increase('spcl_train_skipped_steps_total')})`, legend: '{{reason}}' }],
      thresholds: [{ color: 'red', value: 1 }],
      custom: { drawStyle: 'bars', fillOpacity: 80 },
    },
    {
      type: 'timeseries',
      title: 'Rollbacks and learning-rate scale',
      unit: 'short',
      w: 8,
      h: 6,
      min: 0,
      description:
        'Rollbacks to the last checkpoint after nonFinite.limit non-finite steps in a row, per rate interval (increase of spcl_train_rollbacks_total), and the factor they left on every learning rate (spcl_train_learning_rate_scale_ratio, 1 = none). With nonFinite.action stop, the run ends instead.',
      targets: [
        { expr: `sum by (phase) (${increase('spcl_train_rollbacks_total')})`, legend: 'rollbacks {{phase}}' },
        { expr: sel('spcl_train_learning_rate_scale_ratio'), legend: 'LR scale' },
      ],
    },
  ],
};

const adaptation: RowSpec = {
  title: 'Adaptation state',
  panels: [
    {
      type: 'timeseries',
      title: 'Prototype update norm',
      unit: 'none',
      w: 9,
      h: 8,
      description:
        'Frobenius norm of the last EMA change of the class prototypes (spcl_prototype_update_norm). It shrinks as the prototypes settle; a jump means the features moved.',
      targets: [{ expr: sel('spcl_prototype_update_norm'), legend: 'update norm' }],
    },
    {
      type: 'timeseries',
      title: 'Max cosine similarity between prototypes',
      unit: 'none',
      w: 9,
      h: 8,
      max: 1,
      description:
        'Largest cosine similarity between two different class prototypes (spcl_prototype_max_cosine_similarity). Close to 1 means two classes collapsed onto one prototype and the contrastive loss cannot separate them.',
      targets: [{ expr: sel('spcl_prototype_max_cosine_similarity'), legend: 'max cosine' }],
      thresholds: [{ color: 'red', value: 0.99 }],
      custom: { thresholdsStyle: { mode: 'dashed' } },
    },
    {
      type: 'stat',
      title: 'Prototype classes seen',
      unit: 'none',
      w: 6,
      h: 8,
      description:
        'Classes with a non-zero prototype (spcl_prototype_classes_seen). Classes never seen in the source features get no prototype and no pseudo-labels.',
      targets: [{ expr: sel('spcl_prototype_classes_seen'), legend: 'classes' }],
    },
    {
      type: 'bargauge',
      title: 'Class thresholds',
      unit: 'percentunit',
      w: 10,
      h: 10,
      min: 0,
      max: 1,
      instant: true,
      description:
        'Confidence threshold of each class in the current pseudo-label generation (spcl_class_threshold). A pixel predicted as a class keeps its pseudo-label when its confidence reaches the threshold; 0 = class never predicted.',
      targets: [{ expr: sel('spcl_class_threshold'), legend: '{{class}}' }],
    },
    {
      type: 'bargauge',
      title: 'Pseudo-label coverage per class',
      unit: 'percentunit',
      w: 10,
      h: 10,
      min: 0,
      max: 1,
      instant: true,
      description:
        'Share of the pixels predicted as each class that keep a pseudo-label in the current generation (spcl_pseudo_label_coverage_ratio). 0 for classes the model never predicts on the target domain.',
      targets: [{ expr: sel('spcl_pseudo_label_coverage_ratio'), legend: '{{class}}' }],
    },
    [
      {
        type: 'stat',
        title: 'Pseudo-label generation',
        unit: 'none',
        w: 4,
        h: 5,
        description:
          'Number of the current pseudo-label generation (spcl_pseudo_label_generation): 1 after the first pseudo-labels phase, 2 after pseudo-labels-2.',
        targets: [{ expr: sel('spcl_pseudo_label_generation'), legend: 'generation' }],
        options: { graphMode: 'none', colorMode: 'none' },
      },
      {
        type: 'stat',
        title: 'Pseudo-labels written',
        unit: 'short',
        w: 4,
        h: 5,
        description: 'Target images written to pseudo-label generations by this process (spcl_pseudo_labels_written_total).',
        targets: [{ expr: `sum(${sel('spcl_pseudo_labels_written_total')})`, legend: 'images' }],
        options: { colorMode: 'none' },
      },
    ],
    {
      type: 'timeseries',
      title: 'Target images and those awaiting pseudo-labels',
      unit: 'short',
      w: 9,
      h: 8,
      min: 0,
      description:
        'Target images known to the run (spcl_target_images: the target manifest as last read) and, in the continuous phase, those the current pseudo-label generation does not cover yet (spcl_pseudo_label_pending_images): they join training at the next refresh (continuous.refreshNewImages triggers one).',
      targets: [
        { expr: sel('spcl_target_images'), legend: 'target images' },
        { expr: sel('spcl_pseudo_label_pending_images'), legend: 'awaiting pseudo-labels' },
      ],
    },
    {
      type: 'timeseries',
      title: 'Target arrivals',
      unit: 'short',
      w: 9,
      h: 8,
      min: 0,
      description:
        'New target images per rate interval (increase of spcl_target_arrivals_total), by source: ingest = written into the target shards by another pipelines/ingest.ts run, watch = ingested by this run from continuous.watch.',
      targets: [{ expr: `sum by (source) (${increase('spcl_target_arrivals_total')})`, legend: '{{source}}' }],
      custom: { drawStyle: 'bars', fillOpacity: 80 },
    },
    [
      {
        type: 'stat',
        title: 'Pseudo-label refreshes',
        unit: 'short',
        w: 6,
        h: 4,
        description:
          'Threshold + pseudo-label refreshes of the continuous phase by this process, by trigger (spcl_pseudo_label_refreshes_total): start, steps (continuous.refreshEvery), arrivals (continuous.refreshNewImages).',
        targets: [{ expr: `sum by (trigger) (${sel('spcl_pseudo_label_refreshes_total')})`, legend: '{{trigger}}' }],
        options: { colorMode: 'none', graphMode: 'none' },
      },
      {
        type: 'stat',
        title: 'Age of the pseudo-labels',
        unit: 's',
        w: 6,
        h: 4,
        description:
          'Time since the current pseudo-label generation was written (time() - spcl_pseudo_label_last_refresh_timestamp_seconds). In the continuous phase it should stay below the refresh period.',
        targets: [{ expr: `time() - ${sel('spcl_pseudo_label_last_refresh_timestamp_seconds')}`, legend: 'age' }],
        options: { colorMode: 'none', graphMode: 'none' },
      },
    ],
  ],
};

const evaluation: RowSpec = {
  title: 'Evaluation',
  panels: [
    {
      type: 'timeseries',
      title: 'Target mIoU and tail mIoU',
      unit: 'percentunit',
      w: 12,
      h: 10,
      min: 0,
      max: 1,
      description:
        'Mean IoU over all classes (spcl_eval_miou_ratio) and over the tail classes (spcl_eval_tail_miou_ratio) on the labelled target validation split, as of the last evaluation. Alert SpclEvaluationRegression fires when mIoU drops > 0.05 below its best of the last 6 h.',
      targets: [
        { expr: sel('spcl_eval_miou_ratio'), legend: 'mIoU {{split}}' },
        { expr: sel('spcl_eval_tail_miou_ratio'), legend: 'tail mIoU {{split}}' },
      ],
      custom: { lineInterpolation: 'stepAfter', showPoints: 'auto', fillOpacity: 0 },
    },
    {
      type: 'bargauge',
      title: 'IoU per class (last evaluation)',
      unit: 'percentunit',
      w: 12,
      h: 10,
      min: 0,
      max: 1,
      instant: true,
      description: 'IoU of each class at the last evaluation (spcl_eval_class_iou_ratio).',
      targets: [{ expr: sel('spcl_eval_class_iou_ratio'), legend: '{{class}}' }],
      color: { mode: 'continuous-RdYlGr' },
    },
  ],
};

const runtime: RowSpec = {
  title: 'Runtime',
  panels: [
    {
      type: 'timeseries',
      title: 'tfjs tensors',
      unit: 'short',
      w: 6,
      h: 8,
      description: 'Live tfjs tensors, read at each scrape (spcl_tf_tensors). Flat within a phase; a climbing line is a tensor leak.',
      targets: [{ expr: sel('spcl_tf_tensors'), legend: 'tensors' }],
    },
    {
      type: 'timeseries',
      title: 'tfjs memory',
      unit: 'bytes',
      w: 6,
      h: 8,
      description: 'Bytes held by live tfjs tensors (spcl_tf_bytes; on the tensorflow backend GPU tensors count too).',
      targets: [{ expr: sel('spcl_tf_bytes'), legend: 'tensor bytes' }],
    },
    {
      type: 'timeseries',
      title: 'Process memory',
      unit: 'bytes',
      w: 6,
      h: 8,
      description:
        'Resident set size of the process (spcl_process_resident_memory_bytes), V8 heap used / total (spcl_nodejs_heap_size_*_bytes) and memory outside the V8 heap (spcl_nodejs_external_memory_bytes: wasm memory, buffers).',
      targets: [
        { expr: sel('spcl_process_resident_memory_bytes'), legend: 'RSS' },
        { expr: sel('spcl_nodejs_heap_size_used_bytes'), legend: 'heap used' },
        { expr: sel('spcl_nodejs_heap_size_total_bytes'), legend: 'heap total' },
        { expr: sel('spcl_nodejs_external_memory_bytes'), legend: 'external' },
      ],
    },
    {
      type: 'timeseries',
      title: 'Event-loop lag',
      unit: 's',
      w: 6,
      h: 8,
      description:
        "Lag of the main thread's event loop (spcl_nodejs_eventloop_lag_seconds, and its p99 over the last interval). Long synchronous work (a wasm step runs on the main thread) shows here and delays scrapes.",
      targets: [
        { expr: sel('spcl_nodejs_eventloop_lag_seconds'), legend: 'lag' },
        { expr: sel('spcl_nodejs_eventloop_lag_p99_seconds'), legend: 'p99' },
      ],
    },
    {
      type: 'timeseries',
      title: 'CPU',
      unit: 'percentunit',
      w: 8,
      h: 8,
      description:
        'CPU time of the process per second of wall time, worker threads included (rate of spcl_process_cpu_seconds_total; 1 = one core busy), split into user and system.',
      targets: [
        { expr: `sum(${rate('spcl_process_cpu_seconds_total')})`, legend: 'total' },
        { expr: `sum(${rate('spcl_process_cpu_user_seconds_total')})`, legend: 'user' },
        { expr: `sum(${rate('spcl_process_cpu_system_seconds_total')})`, legend: 'system' },
      ],
    },
    {
      type: 'timeseries',
      title: 'Garbage collection time',
      unit: 'percentunit',
      w: 8,
      h: 8,
      description: 'Fraction of wall time spent in V8 garbage collection, by kind (rate of spcl_nodejs_gc_duration_seconds_sum).',
      targets: [{ expr: `sum by (kind) (${rate('spcl_nodejs_gc_duration_seconds_sum')})`, legend: '{{kind}}' }],
    },
    {
      type: 'stat',
      title: 'Checkpoint size',
      unit: 'bytes',
      w: 4,
      h: 8,
      description: 'Size of the last checkpoint file (spcl_checkpoint_size_bytes).',
      targets: [{ expr: sel('spcl_checkpoint_size_bytes'), legend: 'size' }],
      options: { colorMode: 'none' },
    },
    {
      type: 'stat',
      title: 'Mean checkpoint save time',
      unit: 's',
      w: 4,
      h: 8,
      decimals: 2,
      description:
        'Mean time to write a checkpoint since the process started (spcl_checkpoint_save_duration_seconds sum / count). Checkpoints are rare, so a rate over the dashboard interval would mostly be empty.',
      targets: [
        {
          expr: `${sel('spcl_checkpoint_save_duration_seconds_sum')} / ${sel('spcl_checkpoint_save_duration_seconds_count')}`,
          legend: 'mean',
        },
      ],
      options: { colorMode: 'none' },
    },
  ],
};

export const ROWS: readonly RowSpec[] = [overview, dataPipeline, training, adaptation, evaluation, runtime];

// ---------------------------------------------------------------------------------------------------
// Grafana JSON

const REDUCE = { calcs: ['lastNotNull'], fields: '', values: false };

const TIMESERIES_CUSTOM: Json = {
  axisBorderShow: false,
  axisCenteredZero: false,
  axisColorMode: 'text',
  axisLabel: '',
  axisPlacement: 'auto',
  barAlignment: 0,
  drawStyle: 'line',
  fillOpacity: 10,
  gradientMode: 'none',
  hideFrom: { legend: false, tooltip: false, viz: false },
  insertNulls: false,
  lineInterpolation: 'linear',
  lineWidth: 1,
  pointSize: 4,
  scaleDistribution: { type: 'linear' },
  showPoints: 'never',
  spanNulls: false,
  stacking: { group: 'A', mode: 'none' },
  thresholdsStyle: { mode: 'off' },
};

const DEFAULT_OPTIONS: Record<PanelSpec['type'], Json> = {
  timeseries: {
    legend: { calcs: [], displayMode: 'list', placement: 'bottom', showLegend: true },
    tooltip: { mode: 'multi', sort: 'desc' },
  },
  stat: {
    colorMode: 'value',
    graphMode: 'area',
    justifyMode: 'auto',
    orientation: 'auto',
    reduceOptions: REDUCE,
    showPercentChange: false,
    textMode: 'auto',
    wideLayout: true,
  },
  bargauge: {
    displayMode: 'gradient',
    maxVizHeight: 300,
    minVizHeight: 16,
    minVizWidth: 8,
    namePlacement: 'auto',
    orientation: 'horizontal',
    reduceOptions: REDUCE,
    showUnfilled: true,
    sizing: 'auto',
    valueMode: 'color',
  },
};

const REF_IDS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ';

function panelJson(p: PanelSpec, id: number, gridPos: Json): Json {
  const defaults: Json = {
    unit: p.unit,
    color: p.color ?? (p.type === 'timeseries' ? { mode: 'palette-classic' } : { mode: 'thresholds' }),
    thresholds: { mode: 'absolute', steps: [{ color: 'green', value: null }, ...(p.thresholds ?? [])] },
  };
  if (p.min !== undefined) defaults.min = p.min;
  if (p.max !== undefined) defaults.max = p.max;
  if (p.decimals !== undefined) defaults.decimals = p.decimals;
  if (p.type === 'timeseries') defaults.custom = { ...TIMESERIES_CUSTOM, ...p.custom };
  return {
    id,
    type: p.type,
    title: p.title,
    description: p.description,
    datasource: DS,
    gridPos,
    fieldConfig: { defaults, overrides: p.overrides ?? [] },
    options: { ...DEFAULT_OPTIONS[p.type], ...p.options },
    targets: p.targets.map((t, i) => ({
      datasource: DS,
      editorMode: 'code',
      expr: t.expr,
      format: 'time_series',
      instant: p.instant ?? false,
      legendFormat: t.legend ?? '__auto',
      range: !(p.instant ?? false),
      refId: REF_IDS[i],
    })),
  };
}

/** Rows and panels with ids in order and grid positions laid out left to right, 24 columns wide. */
function layout(rows: readonly RowSpec[]): Json[] {
  const panels: Json[] = [];
  let id = 0;
  let y = 0;
  for (const row of rows) {
    panels.push({ id: ++id, type: 'row', title: row.title, collapsed: false, gridPos: { h: 1, w: 24, x: 0, y }, panels: [] });
    y += 1;
    let x = 0;
    let lineHeight = 0;
    for (const item of row.panels) {
      const column = Array.isArray(item) ? item : [item];
      const w = Math.max(...column.map((p) => p.w));
      const h = column.reduce((sum, p) => sum + p.h, 0);
      if (x + w > 24) {
        x = 0;
        y += lineHeight;
        lineHeight = 0;
      }
      let top = y;
      for (const p of column) {
        panels.push(panelJson(p, ++id, { h: p.h, w, x, y: top }));
        top += p.h;
      }
      x += w;
      lineHeight = Math.max(lineHeight, h);
    }
    y += lineHeight;
  }
  return panels;
}

const JOB_QUERY = 'label_values(spcl_build_info, job)';
const INSTANCE_QUERY = 'label_values(spcl_build_info{job=~"$job"}, instance)';

const queryVariable = (name: string, label: string, query: string, description: string): Json => ({
  name,
  label,
  description,
  type: 'query',
  datasource: DS,
  definition: query,
  query: { qryType: 1, query, refId: 'PrometheusVariableQueryEditor-VariableQuery' },
  refresh: 2,
  regex: '',
  sort: 1,
  includeAll: true,
  allValue: '.*',
  multi: true,
  current: { selected: true, text: ['All'], value: ['$__all'] },
  options: [],
  hide: 0,
  skipUrlSync: false,
});

const PHASE_ANNOTATION = {
  name: 'Phase changes',
  datasource: DS,
  enable: true,
  hide: false,
  iconColor: 'purple',
  expr: `${sel('spcl_phase_info')} == 1`,
  step: '15s',
  titleFormat: 'phase {{phase}}',
  textFormat: '{{instance}}',
  tagKeys: 'phase',
  useValueForTime: false,
};

export const dashboard = {
  id: null,
  uid: DASHBOARD_UID,
  title: 'SPCL training',
  description:
    'One SPCL domain-adaptation run (node pipelines/spcl.ts): phase, data pipeline, training, adaptation state (prototypes, thresholds, pseudo-labels), evaluation and runtime. Generated by ops-dashboards/build.ts; edit that file, not this JSON.',
  tags: ['spcl', 'training', 'tfjs'],
  editable: true,
  fiscalYearStartMonth: 0,
  graphTooltip: 1,
  liveNow: false,
  refresh: '15s',
  schemaVersion: 39,
  version: 1,
  weekStart: '',
  timezone: 'browser',
  time: { from: 'now-3h', to: 'now' },
  timepicker: {},
  links: [],
  annotations: {
    list: [
      {
        builtIn: 1,
        datasource: { type: 'grafana', uid: '-- Grafana --' },
        enable: true,
        hide: true,
        iconColor: 'rgba(0, 211, 255, 1)',
        name: 'Annotations & Alerts',
        type: 'dashboard',
      },
      PHASE_ANNOTATION,
    ],
  },
  templating: {
    list: [
      {
        name: 'datasource',
        label: 'Data source',
        description: 'The Prometheus that scrapes the run (provisioned as uid spcl-prometheus).',
        type: 'datasource',
        query: 'prometheus',
        current: { selected: false, text: DATASOURCE_NAME, value: DATASOURCE_UID },
        regex: '',
        refresh: 1,
        includeAll: false,
        multi: false,
        options: [],
        hide: 0,
        skipUrlSync: false,
      },
      queryVariable('job', 'Job', JOB_QUERY, 'Prometheus job of the run (scrape config job_name, spcl by default).'),
      queryVariable('instance', 'Instance', INSTANCE_QUERY, "host:port of the run's /metrics endpoint (--metrics-host/--metrics-port)."),
    ],
  },
  panels: layout(ROWS),
};

export interface PanelQuery {
  panelId: number;
  panelTitle: string;
  refId: string;
  expr: string;
}

/** Every panel query of the dashboard, in panel order. */
export const panelQueries: PanelQuery[] = dashboard.panels.flatMap((p) =>
  ((p.targets ?? []) as { refId: string; expr: string }[]).map((t) => ({
    panelId: p.id as number,
    panelTitle: p.title as string,
    refId: t.refId,
    expr: t.expr,
  })),
);

/** The PromQL of the annotations (queried like the panels). */
export const annotationQueries: { name: string; expr: string }[] = [{ name: PHASE_ANNOTATION.name, expr: PHASE_ANNOTATION.expr }];

/** The `label_values(...)` queries of the job / instance variables. */
export const variableQueries: { name: string; query: string }[] = [
  { name: 'job', query: JOB_QUERY },
  { name: 'instance', query: INSTANCE_QUERY },
];

/** The committed JSON: pretty-printed, a trailing newline, deterministic. */
export function render(): string {
  return `${JSON.stringify(dashboard, null, 2)}\n`;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const text = render();
  if (process.argv.includes('--check')) {
    let current = '';
    try {
      current = readFileSync(DASHBOARD_PATH, 'utf8');
    } catch {
      // missing counts as stale
    }
    if (current !== text) {
      process.stderr.write(`${DASHBOARD_PATH} is stale: run node ops-dashboards/build.ts\n`);
      process.exit(1);
    }
    process.stdout.write(`${DASHBOARD_PATH} is up to date (${dashboard.panels.length} panels, ${panelQueries.length} queries)\n`);
  } else {
    writeFileSync(DASHBOARD_PATH, text);
    process.stdout.write(`wrote ${DASHBOARD_PATH} (${dashboard.panels.length} panels, ${panelQueries.length} queries)\n`);
  }
}

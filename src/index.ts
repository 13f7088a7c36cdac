/**
 * Public API of spcl-stream: the SPCL math, the model and the training primitives that users build their
 * own pipelines from (DESIGN.md "Contracts"). Layout is NHWC; masks are int32 with 255 = ignore;
 * prototypes are [K, C] (row = class). `tf` is the tfjs namespace these functions use: create inputs
 * with it so that they live on the same engine and backend.
 */
export * as tf from '@tensorflow/tfjs';

export { selectBackend, BACKEND_REQUESTS, type BackendName, type BackendRequest, type SelectBackendOptions } from './ops/backend.ts';
export {
  conv2d,
  convInputGrad,
  convFilterGrad,
  convGeometry,
  convOutSize,
  type ConvOptions,
  type ConvGeometry,
  type Pad4,
} from './ops/conv.ts';
export { registerWasmTrainingKernels } from './ops/wasm-kernels.ts';

export { deeplabV2, BACKBONES, type BackboneName, type DeeplabConfig, type SegModel, type ForwardResult } from './ops/model/deeplab.ts';
export { discriminator, type Discriminator, type DiscriminatorConfig } from './ops/model/discriminator.ts';
export { RESNET101, RESNET50, RESNET_SMALL, type ResNetConfig } from './ops/model/resnet.ts';
export { ParamStore, type Param, type ParamGroup, type ParamRole } from './ops/model/params.ts';
export type { BnMode } from './ops/model/layers.ts';

export { polyLR, SGD, Adam, gradients, type ParamGroupSpec, type OptimizerState } from './ops/optim.ts';

export {
  segCrossEntropy,
  contrastiveLoss,
  bceWithLogits,
  stopGradient,
  normalizeFeatures,
  type SegCrossEntropyOptions,
  type ContrastiveLossOptions,
} from './ops/losses.ts';
export {
  updatePrototypes,
  PrototypeAccumulator,
  type AbsentClassPolicy,
  type UpdatePrototypesOptions,
  type AccumulatedPrototypes,
} from './ops/prototypes.ts';
export { refineSourceMask, downsampleLabels, validateMask, maskOneHot, IGNORE_LABEL } from './ops/masks.ts';
export { ConfidenceHistogram, pseudoLabels, upperMedianIndex } from './ops/thresholds.ts';
export {
  ConfusionMatrix,
  classCenterDistance,
  CITYSCAPES_CLASSES,
  SYNTHIA_CLASSES,
  TAIL_CLASSES_19,
  SYNTHIA_13_OF_16,
} from './ops/metrics.ts';

export { decodeSafetensors, encodeSafetensors } from './ops/safetensors.ts';
export {
  loadSafetensors,
  saveModelSafetensors,
  saveCheckpoint,
  loadCheckpoint,
  disposeCheckpoint,
  modelState,
  applyModelState,
  type LoadOptions,
  type LoadReport,
  type CheckpointState,
} from './io/weights.ts';

// The dataflow runtime, data layer, stages and recipe: build other adaptation pipelines from these.
export {
  Credits,
  END,
  pullSource,
  stage,
  orderedMergeMap,
  reduceItems,
  onTeardown,
  StageError,
  type ErrorPolicy,
  type StageOptions,
  type Pulled,
} from './graph/flow.ts';
export { openDataset, SampleReader, type Dataset, type Sample } from './data/reader.ts';
export {
  FAULT_REASONS,
  SampleFault,
  type FaultCounts,
  type FaultReason,
  type FaultReport,
  type UnknownLabelPolicy,
} from './data/faults.ts';
export { ShuffleSampler, ClassBalancedSampler, type Sampler, type SamplerState } from './data/sampler.ts';
export { ingestDataset, type IngestOptions, type IngestSummary } from './data/ingest.ts';
export { listDataset, DATASETS, type DatasetName } from './data/adapters.ts';
export { AUGMENT_PRESETS, augmentSample, scaleAugmentSpec, type AugmentSpec } from './data/augment.ts';
export { PseudoLabelWriter, currentGeneration, currentGenerationPath, type GenerationInfo } from './data/pseudo-labels.ts';
export { writeSyntheticBenchmark, renderScene } from './synthetic/render.ts';
export { readShards, inOrder, type SampleRef } from './stages/read-shards.ts';
export { decodeAugment, type DecodedSample } from './stages/decode-augment.ts';
export { batchTensors, collate, type Batch } from './stages/collate.ts';
export { trainStep, applyIfFinite, type StepReport } from './stages/train-step.ts';
export { Prototypes } from './stages/update-prototypes.ts';
export { accumulatePrototypes } from './stages/init-prototypes.ts';
export { estimateThresholds, type ThresholdResult } from './stages/estimate-thresholds.ts';
export { writePseudoLabels, writeGeneration } from './stages/write-pseudo-labels.ts';
export { evaluate, type EvalReport } from './stages/evaluate.ts';
export { CheckpointStore, type CheckpointPointer } from './stages/checkpoint.ts';
export { PRESETS, mergeConfig, checkConfig, type SpclConfig } from './recipe/config.ts';
export { METHODS, SOURCE_ONLY } from './methods/registry.ts';
export type { Method } from './recipe/method.ts';
export { runRecipe, type RunReport, type RunOptions } from './recipe/run.ts';
export { batches, type RunContext } from './recipe/context.ts';
export type { RunEvents } from './observe/run-events.ts';
export { createMetrics, type SpclMetrics } from './observe/metrics.ts';
export { serveMetrics } from './observe/server.ts';

/**
 * Exports a trained DeepLab-v2 for use outside this project (`pipelines/export.ts`):
 *
 * - `exportPytorch`: `NAME.safetensors`, the state dict PyTorch loads with `load_state_dict(strict=True)`
 *   into a DeepLab-v2 with `backbone` (torchvision ResNet names, no `fc`; or VGG `features.*`, `fc6`,
 *   `fc7`) and `classifier` (ASPP `conv2d_list.{i}`): float32, OIHW, no `model/` prefix, no optimiser or
 *   `extra/` tensors (`saveModelSafetensors`). Beside it `NAME.json`, the `ExportDescription`: backbone,
 *   per-layer strides and dilations, classes, BN mode and eps, input normalisation. Wrong dilations do not
 *   fail a strict load, they only give wrong logits; hence the description.
 * - `exportTfjs`: a folder with `model.json` (tfjs weights manifest + the description) and 4 MiB weight
 *   shards, our names, HWIO; `loadExportedModel` (`exported-model.ts`) rebuilds the model from it.
 *
 * Both writers write every file atomically (`atomic.ts`), shards before the file that names them.
 */
import { mkdir, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { IMAGENET_MEAN, IMAGENET_STD } from '../data/augment.ts';
import { CITYSCAPES_CLASSES, SYNTHIA_CLASSES } from '../ops/classes.ts';
import { ASPP_DILATIONS } from '../ops/model/aspp.ts';
import type { SegModel } from '../ops/model/deeplab.ts';
import { BN_EPS } from '../ops/model/layers.ts';
import { writeFileAtomic, writeJsonAtomic } from './atomic.ts';
import { EXPORT_FORMAT, EXPORT_VERSION, type ExportDescription, type ResNetDescription, type VggDescription } from './exported-model.ts';
import { saveModelSafetensors } from './weights.ts';

export type ExportFormat = 'pytorch' | 'tfjs';
export const EXPORT_FORMATS: readonly ExportFormat[] = ['pytorch', 'tfjs'];

/** Where the model came from, from its checkpoint's meta (`modelFromCheckpoint`). */
export interface ExportSource {
  checkpoint: string;
  phase?: string;
  iteration?: number;
  /** The checkpoint's sizes; `eval` is the input size it was evaluated at. */
  size?: { eval?: [number, number] };
  /** Class names in train-ID order; default: Cityscapes' 19 or SYNTHIA's 16 by the class count, else none. */
  classNames?: readonly string[];
}

export interface ExportWritten {
  /** Every file written, the weights first, with its size. */
  files: { path: string; bytes: number }[];
  tensors: number;
  description: ExportDescription;
}

/** tfjs's converter splits weights into 4 MiB shards (browser caches and HTTP handle them well). */
const SHARD_BYTES = 4 * 1024 * 1024;

/** `model.safetensors` -> `model.json`. */
export function sidecarPath(out: string): string {
  if (!out.endsWith('.safetensors')) {
    throw new Error(`${out}: the PyTorch export must be named NAME.safetensors (its description goes beside it as NAME.json)`);
  }
  return `${out.slice(0, -'.safetensors'.length)}.json`;
}

export async function exportPytorch(model: SegModel, out: string, source: ExportSource): Promise<ExportWritten> {
  const json = sidecarPath(out);
  await mkdir(dirname(out), { recursive: true });
  await saveModelSafetensors(model, out, { layout: 'pytorch' });
  const description = describeExport(model, source, 'pytorch', [basename(out)]);
  await writeJsonAtomic(json, description, { what: 'export description' });
  return { files: await sizes([out, json]), tensors: model.store.params.size, description };
}

export async function exportTfjs(model: SegModel, dir: string, source: ExportSource): Promise<ExportWritten> {
  const existing = await stat(dir).catch(() => null);
  if (existing && !existing.isDirectory()) {
    throw new Error(`${dir} exists and is not a folder (the tfjs export writes a folder: model.json and weight shards)`);
  }
  await mkdir(dir, { recursive: true });
  const params = [...model.store.params.values()];
  const { data, specs } = await tf.io.encodeWeights(params.map((p) => ({ name: p.name, tensor: p.variable })));
  const bytes = new Uint8Array(data as ArrayBuffer);
  const count = Math.max(1, Math.ceil(bytes.length / SHARD_BYTES));
  const shards = Array.from({ length: count }, (_, i) => `group1-shard${i + 1}of${count}.bin`);
  for (const [i, name] of shards.entries()) {
    await writeFileAtomic(join(dir, name), [bytes.subarray(i * SHARD_BYTES, (i + 1) * SHARD_BYTES)], { what: 'weight shard' });
  }
  const description = describeExport(model, source, 'tfjs', shards);
  // No `modelTopology`: tfjs has none for our network; loadExportedModel rebuilds it from the description.
  const modelJson: Omit<tf.io.ModelJSON, 'modelTopology'> = {
    format: EXPORT_FORMAT,
    generatedBy: 'SPCL-stream pipelines/export.ts',
    convertedBy: null,
    weightsManifest: [{ paths: shards, weights: specs }],
    userDefinedMetadata: { spcl: description },
  };
  const jsonPath = join(dir, 'model.json');
  await writeJsonAtomic(jsonPath, modelJson, { what: 'tfjs model.json' });
  return { files: await sizes([...shards.map((s) => join(dir, s)), jsonPath]), tensors: params.length, description };
}

async function sizes(paths: string[]): Promise<{ path: string; bytes: number }[]> {
  return Promise.all(paths.map(async (path) => ({ path, bytes: (await stat(path)).size })));
}

/**
 * The description of `model` as exported in `format` (weights in `files`). The encoder's layer list is
 * read from the model's parameters (blocks, widths); strides and dilations are the fixed geometry of
 * `src/ops/model/resnet.ts` / `vgg.ts` (REFERENCE 3.1, 3.3), stated again here and checked against
 * PyTorch running the description in test/io/export.test.ts.
 */
export function describeExport(model: SegModel, source: ExportSource, format: ExportFormat, files: string[]): ExportDescription {
  const { backbone, numClasses } = model.config;
  const names = source.classNames ?? (numClasses === 19 ? CITYSCAPES_CLASSES : numClasses === 16 ? SYNTHIA_CLASSES : null);
  if (names && names.length !== numClasses) {
    throw new Error(`export: ${names.length} class names given for a model with ${numClasses} classes`);
  }
  const pytorch = format === 'pytorch';
  const vgg = backbone === 'vgg16';
  const round = vgg ? 'floor' : 'ceil';
  const bnMode = model.batchNorm;
  return {
    format: EXPORT_FORMAT,
    version: EXPORT_VERSION,
    model: 'deeplabv2',
    backbone,
    numClasses,
    classNames: names ? [...names] : null,
    encoder: vgg ? describeVgg(model) : describeResNet(model),
    classifier: { kind: 'aspp', kernel: 3, dilations: [...ASPP_DILATIONS], padding: [...ASPP_DILATIONS], bias: true, combine: 'sum' },
    outputStride: 8,
    batchNorm: { mode: bnMode, eps: bnMode === 'frozen' ? 0 : BN_EPS },
    input: {
      channels: 'RGB',
      layout: pytorch ? 'NCHW' : 'NHWC',
      range: [0, 255],
      mean: [...IMAGENET_MEAN],
      std: [...IMAGENET_STD],
      formula: 'x[c] = (pixel[c] / 255 - mean[c]) / std[c], float32 (torchvision ToTensor + Normalize)',
      size: source.size?.eval ?? null,
    },
    output: {
      logits: pytorch
        ? `[B, ${numClasses}, ${round}(H/8), ${round}(W/8)] class scores (no softmax)`
        : `[B, ${round}(H/8), ${round}(W/8), ${numClasses}] class scores (no softmax), from forward(x).logits`,
      upsample: 'bilinear with align_corners=True to the image size, then argmax over classes = train ID (as pipelines/evaluate.ts)',
    },
    weights: {
      files,
      layout: pytorch ? 'OIHW' : 'HWIO',
      dtype: 'float32',
      names: pytorch
        ? "torchvision's under 'backbone.', ASPP under 'classifier.'; no num_batches_tracked (PyTorch's BatchNorm2d fills it in)"
        : "our parameter names ('backbone.conv1.weight'), as in the PyTorch export",
      tensors: model.store.params.size,
    },
    source: { checkpoint: basename(source.checkpoint), phase: source.phase ?? null, iteration: source.iteration ?? null },
  };
}

// layer l: [stride, dilation of the first block, dilation of the others] (torchvision
// replace_stride_with_dilation = [False, True, True]); the same table as resnetEncoder's.
const RESNET_GEOMETRY: readonly [number, number, number][] = [
  [1, 1, 1],
  [2, 1, 1],
  [1, 1, 2],
  [1, 2, 4],
];

function describeResNet(model: SegModel): ResNetDescription {
  const params = model.store.params;
  const layers = RESNET_GEOMETRY.map(([stride, first, rest], l) => {
    const name = `layer${l + 1}`;
    let blocks = 0;
    while (params.has(`backbone.${name}.${blocks}.conv1.weight`)) blocks++;
    return {
      name,
      blocks,
      planes: params.get(`backbone.${name}.0.conv1.weight`)!.variable.shape[3]!,
      stride,
      dilations: Array.from({ length: blocks }, (_, i) => (i === 0 ? first : rest)),
      downsample: params.has(`backbone.${name}.0.downsample.0.weight`),
    };
  });
  return {
    kind: 'resnet',
    block: 'bottleneck',
    expansion: 4,
    stem: {
      channels: params.get('backbone.conv1.weight')!.variable.shape[3]!,
      conv: { kernel: 7, stride: 2, padding: 3, dilation: 1 },
      maxPool: { kernel: 3, stride: 2, padding: 1 },
    },
    layers,
    outChannels: model.featureChannels,
  };
}

// vgg.ts: pool1..3 follow torchvision features 2, 7 and 14 (pool4/pool5 dropped); conv5_x (24, 26, 28)
// at dilation 2; fc6/fc7 3x3 at dilation 4.
const VGG_POOL_AFTER = new Set([2, 7, 14]);

function describeVgg(model: SegModel): VggDescription {
  const convs = [...model.store.params.keys()]
    .map((n) => /^backbone\.features\.(\d+)\.weight$/.exec(n))
    .filter((m) => m !== null)
    .map((m) => Number(m[1]))
    .sort((a, b) => a - b);
  const width = (name: string) => model.store.params.get(`backbone.${name}.weight`)!.variable.shape[3]!;
  const layers: VggDescription['layers'] = [];
  for (const i of convs) {
    const dilation = i >= 24 ? 2 : 1;
    layers.push({ conv: `features.${i}`, channels: width(`features.${i}`), kernel: 3, padding: dilation, dilation });
    if (VGG_POOL_AFTER.has(i)) layers.push({ maxPool: { kernel: 2, stride: 2 } });
  }
  for (const fc of ['fc6', 'fc7']) layers.push({ conv: fc, channels: width(fc), kernel: 3, padding: 4, dilation: 4 });
  return { kind: 'vgg16', layers, outChannels: model.featureChannels };
}

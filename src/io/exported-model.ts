/**
 * A DeepLab-v2 exported by `pipelines/export.ts`, read back for inference: the description both export
 * formats carry (the PyTorch sidecar JSON; `model.json`'s `userDefinedMetadata.spcl` for tfjs) and
 * `loadExportedModel`, which rebuilds the model from a tfjs export.
 *
 * The tfjs export is tfjs's own weights format (a `model.json` whose `weightsManifest` lists shards of
 * float32 weights, `tf.io.encodeWeights` layout) with our names (`backbone.conv1.weight`) and our HWIO
 * layout. It is not a `LayersModel` or `GraphModel`: the network is rebuilt by `deeplabV2` (our atrous
 * convolutions, frozen eps-free BN) and the weights assigned by name, so the exported model computes
 * exactly what the trained one did.
 *
 * This module imports tfjs and `src/ops/model` only (no Node module at load time), so it also runs in a
 * browser: pass `tf.io.http('https://host/dir/model.json')` instead of a folder.
 */
import * as tf from '@tensorflow/tfjs';
import { BACKBONES, deeplabV2, type BackboneName, type SegModel } from '../ops/model/deeplab.ts';
import type { BnMode } from '../ops/model/layers.ts';

/** `format` of a tfjs export's model.json, and of the description. */
export const EXPORT_FORMAT = 'spcl-deeplabv2';
export const EXPORT_VERSION = 1;

/** A convolution's geometry as PyTorch's `nn.Conv2d` takes it. */
export interface ConvGeometry {
  kernel: number;
  stride: number;
  padding: number;
  dilation: number;
}

/** torchvision ResNet with `replace_stride_with_dilation = [False, True, True]`, without `fc`. */
export interface ResNetDescription {
  kind: 'resnet';
  /** torchvision `Bottleneck` (v1.5: the stride on the 3x3 conv), 3x3 padding = dilation, no conv bias. */
  block: 'bottleneck';
  expansion: number;
  stem: { channels: number; conv: ConvGeometry; maxPool: { kernel: number; stride: number; padding: number } };
  /** `layer1`..`layer4`: the first block carries the stride (and a `downsample` conv 1x1 + BN when shapes change). */
  layers: { name: string; blocks: number; planes: number; stride: number; dilations: number[]; downsample: boolean }[];
  outChannels: number;
}

/** DeepLab-v2 VGG-16: torchvision `features` without pool4/pool5, conv5 dilated, then fc6/fc7; ReLU after every conv. */
export interface VggDescription {
  kind: 'vgg16';
  layers: (
    | { conv: string; channels: number; kernel: number; padding: number; dilation: number }
    | { maxPool: { kernel: number; stride: number } }
  )[];
  outChannels: number;
}

/** Everything needed to rebuild the network and feed it, in PyTorch or here. */
export interface ExportDescription {
  format: typeof EXPORT_FORMAT;
  version: number;
  model: 'deeplabv2';
  backbone: BackboneName;
  numClasses: number;
  /** Class name of each output channel (train ID order), or null when the checkpoint does not say. */
  classNames: string[] | null;
  encoder: ResNetDescription | VggDescription;
  /** ASPP (REFERENCE 3.2): parallel 3x3 convs with bias, outputs summed; `conv2d_list.{i}`. */
  classifier: { kind: 'aspp'; kernel: number; dilations: number[]; padding: number[]; bias: boolean; combine: 'sum' };
  outputStride: number;
  /** 'frozen': eps 0 (FrozenBatchNorm of the authors' code); 'trainable': eps 1e-5, running statistics (eval mode). */
  batchNorm: { mode: BnMode; eps: number };
  input: {
    channels: 'RGB';
    layout: 'NCHW' | 'NHWC';
    /** 8-bit pixel values in. */
    range: [number, number];
    mean: number[];
    std: number[];
    formula: string;
    /** [H, W] the checkpoint was evaluated at (null: unknown); the net is fully convolutional. */
    size: [number, number] | null;
  };
  output: { logits: string; upsample: string };
  weights: { files: string[]; layout: 'OIHW' | 'HWIO'; dtype: 'float32'; names: string; tensors: number };
  source: { checkpoint: string; phase: string | null; iteration: number | null };
}

export interface ExportedModel {
  model: SegModel;
  description: ExportDescription;
}

/**
 * Rebuilds the DeepLab-v2 of a tfjs export: `source` is the export's folder (or its model.json) on disk
 * (Node), or any tfjs `IOHandler` (e.g. `tf.io.http(url)` in a browser). The model has the exported BN
 * mode; the decoded tensors are disposed, the model is the caller's (`model.dispose()`). Errors name the
 * file and what was expected; nothing is assigned unless every name and shape matches.
 */
export async function loadExportedModel(source: string | tf.io.IOHandler): Promise<ExportedModel> {
  const where = typeof source === 'string' ? modelJsonPath(source) : 'tfjs IOHandler';
  const handler = typeof source === 'string' ? folderHandler(where) : source;
  if (!handler.load) throw new Error(`${where}: the IOHandler has no load()`);
  const artifacts = await handler.load();
  checkFormat(artifacts.format, where);
  const description = checkDescription((artifacts.userDefinedMetadata as { spcl?: unknown } | undefined)?.spcl, where);
  const specs = artifacts.weightSpecs;
  if (!specs || !artifacts.weightData) throw new Error(`${where}: no weightsManifest (weights-less model.json)`);
  const odd = specs.find((s) => s.dtype !== 'float32' || s.quantization);
  if (odd) throw new Error(`${where}: weight '${odd.name}' is ${odd.dtype}${odd.quantization ? ' (quantised)' : ''}, expected float32`);
  const bytes = [artifacts.weightData].flat().reduce((a, b) => a + b.byteLength, 0);
  const expected = specs.reduce((a, s) => a + 4 * s.shape.reduce((x, y) => x * y, 1), 0);
  if (bytes !== expected) {
    throw new Error(`${where}: the weight shards hold ${bytes} bytes, the manifest describes ${expected} (a shard truncated or missing?)`);
  }
  const tensors = tf.io.decodeWeights(artifacts.weightData, specs);
  try {
    const model = deeplabV2({ backbone: description.backbone, numClasses: description.numClasses });
    try {
      assignWeights(model, tensors, where, description);
      model.setBatchNorm(description.batchNorm.mode);
    } catch (err) {
      model.dispose();
      throw err;
    }
    return { model, description };
  } finally {
    tf.dispose(Object.values(tensors));
  }
}

function checkFormat(format: unknown, where: string): void {
  if (format !== EXPORT_FORMAT) {
    throw new Error(
      `${where}: format ${JSON.stringify(format)}, expected '${EXPORT_FORMAT}' (a model.json written by pipelines/export.ts --format tfjs)`,
    );
  }
}

function modelJsonPath(path: string): string {
  return path.endsWith('.json') ? path : `${path.replace(/\/+$/, '')}/model.json`;
}

function checkDescription(raw: unknown, where: string): ExportDescription {
  const d = raw as Partial<ExportDescription> | undefined;
  const fail = (what: string): never => {
    throw new Error(`${where}: userDefinedMetadata.spcl ${what}`);
  };
  if (d === null || typeof d !== 'object') return fail('is missing (expected the export description)');
  if (d.version !== EXPORT_VERSION) fail(`version ${JSON.stringify(d.version)}, expected ${EXPORT_VERSION}`);
  if (!BACKBONES.includes(d.backbone as BackboneName))
    fail(`backbone ${JSON.stringify(d.backbone)}, expected one of ${BACKBONES.join(', ')}`);
  if (!Number.isInteger(d.numClasses)) fail(`numClasses ${JSON.stringify(d.numClasses)}, expected an integer`);
  const mode = d.batchNorm?.mode;
  if (mode !== 'frozen' && mode !== 'trainable') fail(`batchNorm.mode ${JSON.stringify(mode)}, expected 'frozen' or 'trainable'`);
  return d as ExportDescription;
}

function assignWeights(model: SegModel, tensors: tf.NamedTensorMap, where: string, d: ExportDescription): void {
  const params = model.store.params;
  const missing = [...params.keys()].filter((n) => !(n in tensors));
  const unexpected = Object.keys(tensors).filter((n) => !params.has(n));
  if (missing.length || unexpected.length) {
    const parts: string[] = [];
    if (missing.length) parts.push(`missing ${missing.length}: ${missing.slice(0, 5).join(', ')}`);
    if (unexpected.length) parts.push(`${unexpected.length} unexpected: ${unexpected.slice(0, 5).join(', ')}`);
    throw new Error(`${where}: weights do not match a ${d.backbone} DeepLab-v2 with ${d.numClasses} classes: ${parts.join('; ')}`);
  }
  for (const p of params.values()) {
    const t = tensors[p.name]!;
    if (t.dtype !== 'float32' || t.shape.join() !== p.variable.shape.join()) {
      throw new Error(
        `${where}: weight '${p.name}' is ${t.dtype} [${t.shape}], expected float32 [${p.variable.shape}] (HWIO for convolutions)`,
      );
    }
  }
  for (const p of params.values()) p.variable.assign(tensors[p.name]!);
}

/** Node: reads `model.json` and the shards its manifest lists (paths relative to its folder). */
function folderHandler(jsonPath: string): tf.io.IOHandler {
  return {
    async load() {
      const { readFile } = await import('node:fs/promises');
      const { dirname, join } = await import('node:path');
      let text: string;
      try {
        text = await readFile(jsonPath, 'utf8');
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        throw new Error(
          code === 'ENOENT'
            ? `${jsonPath} does not exist (expected the model.json of pipelines/export.ts --format tfjs)`
            : `${jsonPath}: ${(err as Error).message}`,
        );
      }
      let json: tf.io.ModelJSON;
      try {
        json = JSON.parse(text) as tf.io.ModelJSON;
      } catch (err) {
        throw new Error(`${jsonPath}: not valid JSON: ${(err as Error).message}`);
      }
      checkFormat(json.format, jsonPath); // before reading shards a foreign model.json may name
      const groups = Array.isArray(json.weightsManifest) ? json.weightsManifest : [];
      const weightSpecs = groups.flatMap((g) => g.weights);
      const shards: Uint8Array[] = [];
      for (const path of groups.flatMap((g) => g.paths)) {
        const file = join(dirname(jsonPath), path);
        try {
          shards.push(await readFile(file));
        } catch (err) {
          throw new Error(`${jsonPath}: weight shard ${file} cannot be read: ${(err as Error).message}`);
        }
      }
      const data = new Uint8Array(shards.reduce((a, s) => a + s.length, 0));
      let at = 0;
      for (const s of shards) {
        data.set(s, at);
        at += s.length;
      }
      return {
        format: json.format,
        generatedBy: json.generatedBy,
        userDefinedMetadata: json.userDefinedMetadata,
        weightSpecs,
        weightData: data.buffer,
      };
    },
  };
}

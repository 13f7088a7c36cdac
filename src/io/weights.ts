/**
 * Weights on disk, all as safetensors (`src/ops/safetensors.ts`):
 *
 * - `loadSafetensors`: PyTorch weights into a DeepLab-v2 (DESIGN contract). Names are torchvision's
 *   (`conv1.weight`, `layer1.0.downsample.1.running_var`, VGG `features.0.weight`), optionally under
 *   `backbone.`; ASPP `conv2d_list.{0..3}.{weight,bias}`, optionally under `classifier.`; a leading
 *   `module.` (DDP, REFERENCE 8.13) is stripped. 4-D weights go OIHW -> HWIO. The ImageNet head
 *   (`fc.*`; VGG `classifier.{0,3,6}.*`) and `num_batches_tracked` are ignored.
 * - `saveModelSafetensors`: the reverse (PyTorch layout and names), so exported weights load back, here
 *   or in PyTorch.
 * - `saveCheckpoint` / `loadCheckpoint`: our own resumable checkpoints, in our HWIO layout: model, optimizer
 *   slots, discriminator and its optimizer, extra tensors (prototypes) and JSON meta in ONE file.
 *
 * Files are read whole (one Buffer; Node caps a single read at 2 GiB). Writes are atomic
 * (`atomic.ts`: temporary file, fsync, rename, fsync of the directory), so a crash leaves either the old
 * file or the new one, never a torn one; a full disk is a `DiskFullError` naming the file and the space.
 */
import { open, readFile } from 'node:fs/promises';
import * as tf from '@tensorflow/tfjs';
import { writeFileAtomic, type AtomicWriteOptions } from './atomic.ts';
import type { SegModel } from '../ops/model/deeplab.ts';
import type { Param, ParamStore } from '../ops/model/params.ts';
import type { OptimizerState } from '../ops/optim.ts';
import {
  checkTensorToEncode,
  decodeTensorData,
  encodeSafetensorsHeader,
  float32Bytes,
  readSafetensorsHeader,
  type SafetensorsEntry,
  type TensorToEncode,
} from '../ops/safetensors.ts';
import { shapeStr } from '../ops/shape.ts';

/** Anything with a parameter store: a SegModel or a Discriminator. */
export interface HasParams {
  readonly store: ParamStore;
}

function listFirst(names: readonly string[], n = 10): string {
  const head = names.slice(0, n).join(', ');
  return names.length > n ? `${head}, ... (${names.length - n} more)` : head;
}

/** HWIO [kh, kw, cin, cout] <-> PyTorch OIHW [cout, cin, kh, kw]. */
function torchShape(ours: readonly number[]): number[] {
  return ours.length === 4 ? [ours[3]!, ours[2]!, ours[0]!, ours[1]!] : [...ours];
}

// ------------------------------------------------------------------------------------------------
// PyTorch weights

export interface LoadOptions {
  /**
   * false (default): the file must cover every backbone parameter (else it throws, naming them); a
   * missing classifier is allowed (ImageNet backbone weights have no ASPP: the common case, the ASPP
   * keeps its initialisation), and unexpected tensors are only reported.
   * true: any missing or unexpected tensor throws, naming them.
   */
  strict?: boolean;
}

export interface LoadReport {
  /** Model parameter names that were assigned. */
  loaded: string[];
  /** Model parameter names absent from the file (kept as initialised). */
  missing: string[];
  /** File tensor names that match no model parameter. */
  unexpected: string[];
  /** File tensor names skipped on purpose: the ImageNet head and `num_batches_tracked`. */
  ignored: string[];
}

const VGG_IMAGENET_HEAD = /^classifier\.[036]\.(weight|bias)$/;

/** Our parameter name for a file tensor name, or null when the tensor is ignored on purpose. */
function ourName(fileName: string, model: SegModel): string | null {
  let name = fileName.startsWith('module.') ? fileName.slice('module.'.length) : fileName;
  if (name === 'num_batches_tracked' || name.endsWith('.num_batches_tracked')) return null;
  if (model.config.backbone === 'vgg16' && VGG_IMAGENET_HEAD.test(name)) return null;
  if (name.startsWith('conv2d_list.')) name = `classifier.${name}`;
  else if (!name.startsWith('backbone.') && !name.startsWith('classifier.')) name = `backbone.${name}`;
  if (name === 'backbone.fc.weight' || name === 'backbone.fc.bias') return null;
  return name;
}

/**
 * Loads PyTorch weights (safetensors, float dtypes converted to float32) into `model`. Every name and
 * shape is checked before any parameter changes, so a failed load leaves the model as it was. Errors name
 * the file, the tensor and the expected vs found shape (in PyTorch's OIHW layout).
 */
export async function loadSafetensors(model: SegModel, path: string, opts: LoadOptions = {}): Promise<LoadReport> {
  const strict = opts.strict ?? false;
  const bytes = await readFile(path);
  const header = readSafetensorsHeader(bytes, path);
  const plan: { entry: SafetensorsEntry; param: Param }[] = [];
  const sourceOf = new Map<string, string>();
  const report: LoadReport = { loaded: [], missing: [], unexpected: [], ignored: [] };
  for (const entry of header.entries.values()) {
    const name = ourName(entry.name, model);
    if (name === null) {
      report.ignored.push(entry.name);
      continue;
    }
    const param = model.store.params.get(name);
    if (!param) {
      report.unexpected.push(entry.name);
      continue;
    }
    const previous = sourceOf.get(name);
    if (previous !== undefined) {
      throw new Error(`${path}: tensors '${previous}' and '${entry.name}' both map to model parameter '${name}'`);
    }
    sourceOf.set(name, entry.name);
    const expected = torchShape(param.variable.shape);
    if (shapeStr(expected) !== shapeStr(entry.shape)) {
      const layout = expected.length === 4 ? ' (OIHW)' : '';
      throw new Error(
        `${path}: tensor '${entry.name}' has shape ${shapeStr(entry.shape)}, expected ${shapeStr(expected)}${layout} for model parameter '${name}'`,
      );
    }
    plan.push({ entry, param });
  }
  for (const name of model.store.params.keys()) if (!sourceOf.has(name)) report.missing.push(name);
  if (strict && (report.missing.length > 0 || report.unexpected.length > 0)) {
    const parts: string[] = [];
    if (report.missing.length) parts.push(`missing ${report.missing.length} model parameter(s): ${listFirst(report.missing)}`);
    if (report.unexpected.length) parts.push(`${report.unexpected.length} unexpected tensor(s): ${listFirst(report.unexpected)}`);
    throw new Error(`${path}: strict load failed: ${parts.join('; ')}`);
  }
  const missingBackbone = report.missing.filter((n) => model.store.params.get(n)!.group === 'backbone');
  if (missingBackbone.length > 0) {
    throw new Error(
      `${path}: missing ${missingBackbone.length} backbone tensor(s) for model parameter(s): ${listFirst(missingBackbone)} ` +
        `(only the classifier may be missing; is this a ${model.config.backbone} checkpoint?)`,
    );
  }
  for (const { entry, param } of plan) {
    const data = decodeTensorData(bytes, entry);
    tf.tidy(() => {
      const t = tf.tensor(data, entry.shape, 'float32');
      param.variable.assign(entry.shape.length === 4 ? tf.transpose(t, [2, 3, 1, 0]) : t);
    });
    report.loaded.push(param.name);
  }
  return report;
}

export interface SaveModelOptions {
  /** 'pytorch' (default): OIHW weights, loadable by `loadSafetensors` and PyTorch. 'hwio': our layout. */
  layout?: 'pytorch' | 'hwio';
}

/** Writes every parameter (BN statistics included) under its full name (`backbone.…`, `classifier.…`). */
export async function saveModelSafetensors(model: HasParams, path: string, opts: SaveModelOptions = {}): Promise<void> {
  const layout = opts.layout ?? 'pytorch';
  const tensors = new Map<string, TensorToEncode>();
  for (const p of model.store.params.values()) {
    const v = p.variable;
    // read outside tf.tidy: a typed array returned from tidy is walked element by element as a
    // possible tensor container (24 s for ResNet-101's 44 M weights)
    const oihw = layout === 'pytorch' && v.rank === 4 ? tf.transpose(v, [3, 2, 0, 1]) : null;
    const data = (oihw ?? v).dataSync() as Float32Array;
    oihw?.dispose();
    tensors.set(p.name, { shape: layout === 'pytorch' ? torchShape(v.shape) : v.shape, data });
  }
  // 'pt' is what PyTorch's safetensors writer puts there; HF tooling checks it.
  await writeSafetensorsAtomic(path, tensors, { format: layout === 'pytorch' ? 'pt' : 'spcl-hwio' });
}

// ------------------------------------------------------------------------------------------------
// Checkpoints

export interface CheckpointState {
  /** Every model parameter by name, BN statistics included (see `modelState`). HWIO layout. */
  model: Map<string, tf.Tensor>;
  optimizer?: OptimizerState;
  discriminator?: Map<string, tf.Tensor>;
  discriminatorOptimizer?: OptimizerState;
  /** Other float32 tensors, e.g. `prototypes`. */
  extra?: Map<string, tf.Tensor>;
  /** JSON-serialisable: iteration, phase, config, thresholds, sampler/RNG state, ... (no NaN/Infinity). */
  meta: Record<string, unknown>;
}

const CHECKPOINT_FORMAT = 'spcl-checkpoint';
const CHECKPOINT_VERSION = 1;
const METADATA_KEY = 'spcl';
type Section = 'model' | 'optimizer' | 'discriminator' | 'discriminatorOptimizer' | 'extra';
const SECTIONS: readonly Section[] = ['model', 'optimizer', 'discriminator', 'discriminatorOptimizer', 'extra'];

interface CheckpointHeader {
  format: string;
  version: number;
  meta: Record<string, unknown>;
  optimizer?: { kind: OptimizerState['kind']; step: number };
  discriminatorOptimizer?: { kind: OptimizerState['kind']; step: number };
}

/**
 * The model's (or discriminator's) variables by name: the live variables, not copies, so do not dispose
 * them. `saveCheckpoint` reads them before its first await, so training may go on while it writes.
 */
export function modelState(model: HasParams): Map<string, tf.Tensor> {
  return new Map([...model.store.params.values()].map((p) => [p.name, p.variable as tf.Tensor]));
}

/**
 * Assigns `state` into the model's variables. Strict: every parameter must be present with its exact
 * shape and no other names may appear; everything is checked before anything is assigned. The state's
 * tensors stay owned by the caller (dispose them after, e.g. with `disposeCheckpoint`).
 */
export function applyModelState(model: HasParams, state: ReadonlyMap<string, tf.Tensor>, opts: { source?: string } = {}): void {
  const source = opts.source ?? 'applyModelState';
  const missing = [...model.store.params.keys()].filter((n) => !state.has(n));
  const unexpected = [...state.keys()].filter((n) => !model.store.params.has(n));
  if (missing.length || unexpected.length) {
    const parts: string[] = [];
    if (missing.length) parts.push(`missing ${missing.length} parameter(s): ${listFirst(missing)}`);
    if (unexpected.length) parts.push(`${unexpected.length} unexpected tensor(s): ${listFirst(unexpected)}`);
    throw new Error(`${source}: state does not match the model: ${parts.join('; ')}`);
  }
  for (const p of model.store.params.values()) {
    const t = state.get(p.name)!;
    if (shapeStr(t.shape) !== shapeStr(p.variable.shape) || t.dtype !== p.variable.dtype) {
      throw new Error(
        `${source}: parameter '${p.name}' is ${t.dtype} ${shapeStr(t.shape)} in the state, expected ${p.variable.dtype} ${shapeStr(p.variable.shape)}`,
      );
    }
  }
  for (const p of model.store.params.values()) p.variable.assign(state.get(p.name)!);
}

function jsonReplacer(key: string, value: unknown): unknown {
  if (typeof value === 'number' && !Number.isFinite(value)) {
    throw new Error(`meta value at key '${key}' is ${value}, which JSON cannot store`);
  }
  if (typeof value === 'bigint' || typeof value === 'function' || typeof value === 'symbol') {
    throw new Error(`meta value at key '${key}' is a ${typeof value}, which JSON cannot store`);
  }
  return value;
}

/**
 * Writes a checkpoint atomically as one safetensors file: tensors named `model/…`, `optimizer/…`
 * (slot keys as `OptimizerState`), `discriminator/…`, `discriminatorOptimizer/…`, `extra/…`, in our layout;
 * meta and optimizer kind/step as JSON in `__metadata__.spcl`. Every tensor is read synchronously before
 * the first await, so the file is one consistent snapshot even if training continues meanwhile.
 */
export async function saveCheckpoint(path: string, state: CheckpointState, opts: AtomicWriteOptions = {}): Promise<void> {
  let metaJson: string;
  try {
    const header: CheckpointHeader = { format: CHECKPOINT_FORMAT, version: CHECKPOINT_VERSION, meta: state.meta };
    if (state.optimizer) header.optimizer = { kind: state.optimizer.kind, step: state.optimizer.step };
    if (state.discriminatorOptimizer)
      header.discriminatorOptimizer = { kind: state.discriminatorOptimizer.kind, step: state.discriminatorOptimizer.step };
    metaJson = JSON.stringify(header, jsonReplacer);
  } catch (err) {
    throw new Error(`saveCheckpoint ${path}: ${(err as Error).message}`);
  }
  const tensors = new Map<string, TensorToEncode>();
  const add = (section: Section, map: ReadonlyMap<string, tf.Tensor> | undefined) => {
    for (const [name, t] of map ?? []) {
      const key = `${section}/${name}`;
      if (t.isDisposed) throw new Error(`saveCheckpoint ${path}: tensor '${key}' is disposed`);
      if (t.dtype !== 'float32') {
        throw new Error(
          `saveCheckpoint ${path}: tensor '${key}' is ${t.dtype}; checkpoints hold float32 tensors (cast it, or put it in meta)`,
        );
      }
      tensors.set(key, { shape: t.shape, data: t.dataSync() as Float32Array });
    }
  };
  add('model', state.model);
  add('optimizer', state.optimizer?.slots);
  add('discriminator', state.discriminator);
  add('discriminatorOptimizer', state.discriminatorOptimizer?.slots);
  add('extra', state.extra);
  await writeSafetensorsAtomic(path, tensors, { [METADATA_KEY]: metaJson }, { what: 'checkpoint', ...opts });
}

/**
 * Reads a checkpoint written by `saveCheckpoint`. Every tensor is new: the caller owns them and disposes
 * them (`disposeCheckpoint`) after applying them (`applyModelState`, `optimizer.setState`, which copy).
 * `extra` is always present (possibly empty). `meta` is returned as stored; validating it is the caller's.
 */
export async function loadCheckpoint(path: string): Promise<CheckpointState> {
  const bytes = await readFile(path);
  const file = readSafetensorsHeader(bytes, path);
  const raw = file.metadata[METADATA_KEY];
  if (raw === undefined) {
    throw new Error(
      `${path}: not an SPCL checkpoint (no '${METADATA_KEY}' key in the safetensors __metadata__); PyTorch weights load with loadSafetensors`,
    );
  }
  let header: CheckpointHeader;
  try {
    header = JSON.parse(raw) as CheckpointHeader;
  } catch (err) {
    throw new Error(`${path}: checkpoint metadata is not valid JSON: ${(err as Error).message}`);
  }
  if (header === null || typeof header !== 'object' || header.format !== CHECKPOINT_FORMAT || header.version !== CHECKPOINT_VERSION) {
    throw new Error(
      `${path}: checkpoint format ${JSON.stringify(header?.format)} version ${header?.version}, expected '${CHECKPOINT_FORMAT}' version ${CHECKPOINT_VERSION}`,
    );
  }
  if (header.meta === null || typeof header.meta !== 'object' || Array.isArray(header.meta)) {
    throw new Error(`${path}: checkpoint meta must be a JSON object, found ${JSON.stringify(header.meta)}`);
  }
  for (const section of ['optimizer', 'discriminatorOptimizer'] as const) {
    const info = header[section];
    if (info !== undefined && ((info.kind !== 'sgd' && info.kind !== 'adam') || !Number.isInteger(info.step))) {
      throw new Error(`${path}: checkpoint ${section} metadata ${JSON.stringify(info)}, expected {kind: 'sgd' | 'adam', step: integer}`);
    }
  }
  // Names are checked before any tensor is made, so an error leaks nothing.
  const placed: [Section, string, SafetensorsEntry][] = [];
  for (const entry of file.entries.values()) {
    const slash = entry.name.indexOf('/');
    const section = entry.name.slice(0, slash) as Section;
    if (slash < 0 || !SECTIONS.includes(section)) {
      throw new Error(
        `${path}: checkpoint tensor '${entry.name}' is in no known section (expected a prefix ${SECTIONS.map((s) => `'${s}/'`).join(', ')})`,
      );
    }
    if ((section === 'optimizer' || section === 'discriminatorOptimizer') && !header[section]) {
      throw new Error(`${path}: checkpoint has tensor '${entry.name}' but no ${section} kind/step in its metadata`);
    }
    placed.push([section, entry.name.slice(slash + 1), entry]);
  }
  const maps = new Map<Section, Map<string, tf.Tensor>>(SECTIONS.map((s) => [s, new Map()]));
  for (const [section, name, entry] of placed) {
    maps.get(section)!.set(name, tf.tensor(decodeTensorData(bytes, entry), entry.shape, 'float32'));
  }
  const state: CheckpointState = { model: maps.get('model')!, extra: maps.get('extra')!, meta: header.meta };
  if (header.optimizer) state.optimizer = { ...header.optimizer, slots: maps.get('optimizer')! };
  if (header.discriminatorOptimizer)
    state.discriminatorOptimizer = { ...header.discriminatorOptimizer, slots: maps.get('discriminatorOptimizer')! };
  if (maps.get('discriminator')!.size > 0) state.discriminator = maps.get('discriminator')!;
  return state;
}

/**
 * A checkpoint's meta from its header alone, no tensor read (e.g. which pseudo-label generation a
 * retained checkpoint names, to pin it).
 */
export async function readCheckpointMeta(path: string): Promise<Record<string, unknown>> {
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    const prefix = Buffer.alloc(8);
    if (size < 8 || (await fh.read(prefix, 0, 8, 0)).bytesRead < 8)
      throw new Error(`${path}: not a safetensors file: ${size} bytes, expected at least 8 (the header length)`);
    const n = prefix.readBigUInt64LE(0);
    if (n > BigInt(size - 8))
      throw new Error(`${path}: safetensors header length ${n} exceeds the ${size - 8} bytes after the length prefix (truncated file?)`);
    const text = Buffer.alloc(Number(n));
    await fh.read(text, 0, text.length, 8);
    let header: CheckpointHeader;
    try {
      const raw = (JSON.parse(text.toString('utf8')) as { __metadata__?: Record<string, string> }).__metadata__?.[METADATA_KEY];
      if (raw === undefined) throw new Error(`no '${METADATA_KEY}' key in the safetensors __metadata__`);
      header = JSON.parse(raw) as CheckpointHeader;
    } catch (err) {
      throw new Error(`${path}: not a readable SPCL checkpoint header: ${(err as Error).message}`);
    }
    return header.meta;
  } finally {
    await fh.close();
  }
}

/** Disposes every tensor of a loaded checkpoint (never call it on a state built from live variables). */
export function disposeCheckpoint(state: CheckpointState): void {
  const maps = [state.model, state.optimizer?.slots, state.discriminator, state.discriminatorOptimizer?.slots, state.extra];
  for (const m of maps) if (m) tf.dispose([...m.values()]);
}

// ------------------------------------------------------------------------------------------------
// Atomic writing (src/io/atomic.ts)

async function writeSafetensorsAtomic(
  path: string,
  tensors: ReadonlyMap<string, TensorToEncode>,
  metadata: Record<string, string>,
  opts: AtomicWriteOptions = {},
): Promise<void> {
  for (const [name, t] of tensors) checkTensorToEncode(name, t);
  const chunks = [encodeSafetensorsHeader(tensors, metadata), ...[...tensors.values()].map((t) => float32Bytes(t.data))];
  await writeFileAtomic(path, chunks, opts);
}

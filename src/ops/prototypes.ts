/**
 * Semantic prototypes [K, C] (row = class): their initialisation (paper Eq. 2) and their per-iteration
 * EMA (Eq. 3).
 *
 * - `updatePrototypes`: REFERENCE 4.4 / paper Eq. 3. For each class k present in the mask, the mean of
 *   the L2-normalised features over all its pixels in the batch (pixel-weighted), then
 *   P_k ← α·P_k + (1−α)·mean_k. Absent classes: `'keep'` (paper, default) leaves P_k, `'decay'` applies
 *   P_k ← α·P_k as the authors' code does (it zero-fills the batch means of absent classes).
 * - `PrototypeAccumulator`: REFERENCE 4.3 / paper Eq. 2 (`semantic_prototype.py`): per image the class means of the
 *   normalised features; the prototype is the mean of those over the images that contain the class.
 *   Unlike the authors' script, a class that never appears is reported in `missing` (zero row) instead
 *   of crashing, and memory is O(K·C), not O(images·K·C).
 *
 * Per-class sums are one-hot matmuls (O(pixels·K·C) on the device). Masks are not range-checked here
 * (see `validateMask`): values outside 0..K-1, 255 included, are ignored.
 */
import * as tf from '@tensorflow/tfjs';
import type { CrossReplicaSum } from './model/layers.ts';
import { maskOneHot } from './masks.ts';
import { normalizeFeatures, stopGradient } from './losses.ts';
import { shapeStr } from './shape.ts';

function checkFeaturesAndMask(fn: string, features: tf.Tensor, mask: tf.Tensor, channels: number): void {
  if (features.rank !== 4) throw new Error(`${fn}: features must be rank 4 [B,h,w,C], got shape ${shapeStr(features.shape)}`);
  if (features.shape[3] !== channels) {
    throw new Error(`${fn}: features ${shapeStr(features.shape)} have ${features.shape[3]} channels, expected ${channels}`);
  }
  if (mask.rank !== 3) throw new Error(`${fn}: mask must be rank 3 [B,h,w], got shape ${shapeStr(mask.shape)}`);
  if (mask.dtype !== 'int32') throw new Error(`${fn}: mask must be int32, got ${mask.dtype}`);
  if (mask.shape.some((d, i) => d !== features.shape[i])) {
    throw new Error(`${fn}: mask ${shapeStr(mask.shape)} does not match features ${shapeStr(features.shape)}`);
  }
}

export type AbsentClassPolicy = 'keep' | 'decay';

export interface UpdatePrototypesOptions {
  /** EMA momentum: weight of the old prototype. Default 0.1 (REFERENCE 4.4). */
  alpha?: number;
  /** Classes absent from the mask: `'keep'` (paper Eq. 3, default) or `'decay'` (×α, authors' code). */
  absent?: AbsentClassPolicy;
  /**
   * Data-parallel replicas (src/parallel): the per-class sums and counts are summed over every
   * replica's shard, so each replica's update is the whole batch's. Unset: this batch alone.
   */
  sum?: CrossReplicaSum | null;
}

/**
 * One EMA step of the prototypes [K,C] from features [B,h,w,C] and mask [B,h,w] (REFERENCE 4.4).
 * Returns a new tensor; the features are treated as detached (no gradient flows through the update).
 */
export function updatePrototypes(
  prototypes: tf.Tensor2D,
  features: tf.Tensor4D,
  mask: tf.Tensor3D,
  opts: UpdatePrototypesOptions = {},
): tf.Tensor2D {
  const fn = 'updatePrototypes';
  if (prototypes.rank !== 2) throw new Error(`${fn}: prototypes must be rank 2 [K,C], got shape ${shapeStr(prototypes.shape)}`);
  const [k, c] = prototypes.shape;
  checkFeaturesAndMask(fn, features, mask, c);
  const alpha = opts.alpha ?? 0.1;
  if (!(alpha >= 0 && alpha <= 1)) throw new Error(`${fn}: alpha must be in [0, 1], got ${alpha}`);
  const absent = opts.absent ?? 'keep';
  if (absent !== 'keep' && absent !== 'decay') throw new Error(`${fn}: absent must be 'keep' or 'decay', got '${String(absent)}'`);
  return tf.tidy(() => {
    const f = normalizeFeatures(stopGradient(features).reshape([-1, c]));
    const onehot = maskOneHot(mask.flatten(), k) as tf.Tensor2D; // [N, K]
    let sums = tf.matMul(onehot, f as tf.Tensor2D, true, false); // [K, C]
    let counts = onehot.sum(0).reshape([k, 1]);
    if (opts.sum) {
      const local = new Float32Array(k * c + k);
      local.set(sums.dataSync() as Float32Array, 0);
      local.set(counts.dataSync() as Float32Array, k * c);
      const total = opts.sum(local);
      sums = tf.tensor2d(total.subarray(0, k * c), [k, c]);
      counts = tf.tensor2d(total.subarray(k * c), [k, 1]);
    }
    const mean = sums.div(tf.maximum(counts, 1)); // zero rows for absent classes
    const ema = prototypes.mul(alpha).add(mean.mul(1 - alpha));
    if (absent === 'decay') return ema as tf.Tensor2D;
    return tf.where(tf.greater(counts, 0).tile([1, c]), ema, prototypes) as tf.Tensor2D;
  });
}

export interface AccumulatedPrototypes {
  /** [K, C]: per class, the mean over images containing it of the per-image class means; 0 rows for missing. */
  prototypes: tf.Tensor2D;
  /** Per class, the number of images in which it appeared. */
  counts: number[];
  /** Classes that never appeared (their rows are zero). */
  missing: number[];
}

/**
 * Initial prototypes (REFERENCE 4.3), accumulated over a stream of batches. Holds K·C float64 sums and
 * K image counts whatever the number of images; each `add` downloads K·C + K numbers.
 */
export class PrototypeAccumulator {
  readonly numClasses: number;
  readonly channels: number;
  private readonly sums: Float64Array;
  private readonly images: Float64Array;

  constructor(numClasses: number, channels: number) {
    if (!Number.isInteger(numClasses) || numClasses < 1) {
      throw new Error(`PrototypeAccumulator: numClasses must be a positive integer, got ${numClasses}`);
    }
    if (!Number.isInteger(channels) || channels < 1) {
      throw new Error(`PrototypeAccumulator: channels must be a positive integer, got ${channels}`);
    }
    this.numClasses = numClasses;
    this.channels = channels;
    this.sums = new Float64Array(numClasses * channels);
    this.images = new Float64Array(numClasses);
  }

  /** Adds the per-image class means of the normalised features [B,h,w,C] under mask [B,h,w]. */
  add(features: tf.Tensor4D, mask: tf.Tensor3D): void {
    checkFeaturesAndMask('PrototypeAccumulator.add', features, mask, this.channels);
    const k = this.numClasses;
    const c = this.channels;
    const b = features.shape[0];
    const [meanSum, present] = tf.tidy(() => {
      const f = normalizeFeatures(stopGradient(features).reshape([b, -1, c])) as tf.Tensor3D; // [B, N, C]
      const onehot = maskOneHot(mask.reshape([b, -1]), k) as tf.Tensor3D; // [B, N, K]
      const sums = tf.matMul(onehot, f, true, false); // [B, K, C]
      const counts = onehot.sum(1).expandDims(2); // [B, K, 1]
      const means = sums.div(tf.maximum(counts, 1)); // zero for classes absent from an image
      return [means.sum(0), tf.greater(counts, 0).cast('float32').sum([0, 2])];
    });
    const ms = meanSum.dataSync();
    const pr = present.dataSync();
    tf.dispose([meanSum, present]);
    for (let i = 0; i < ms.length; i++) this.sums[i] += ms[i]!;
    for (let i = 0; i < k; i++) this.images[i] += pr[i]!;
  }

  /** The prototypes so far; the caller owns (and disposes) the returned tensor. */
  result(): AccumulatedPrototypes {
    const k = this.numClasses;
    const c = this.channels;
    const out = new Float32Array(k * c);
    const counts: number[] = [];
    const missing: number[] = [];
    for (let i = 0; i < k; i++) {
      const n = this.images[i]!;
      counts.push(n);
      if (n === 0) {
        missing.push(i);
        continue;
      }
      for (let j = 0; j < c; j++) out[i * c + j] = this.sums[i * c + j]! / n;
    }
    return { prototypes: tf.tensor2d(out, [k, c]), counts, missing };
  }

  /** Forgets everything added (no tensors are held, so this is all `dispose` needs to do). */
  dispose(): void {
    this.sums.fill(0);
    this.images.fill(0);
  }
}

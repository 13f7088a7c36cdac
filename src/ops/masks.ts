/**
 * Label masks: int32 tensors of train IDs 0..K-1 with 255 = ignore (DESIGN "Contracts").
 *
 * - `validateMask`: the one place that checks mask values (one small read-back), so the hot-path ops
 *   below and in `losses.ts` / `prototypes.ts` can trust their input without a device sync.
 * - `downsampleLabels`: PyTorch legacy nearest (REFERENCE 4.2, 10): out[i, j] = in[⌊i·H/h⌋, ⌊j·W/w⌋];
 *   with factor 8 it takes pixel (8i, 8j), the top-left of each block.
 * - `refineSourceMask`: the source mask keeps a label only where the prediction agrees (REFERENCE 4.2,
 *   4.3; paper uses the GT alone).
 * - `maskOneHot`: float32 one-hot of a mask with ignored / out-of-range values as all-zero rows; the
 *   building block of every per-class sum (losses, prototypes, CCD).
 */
import * as tf from '@tensorflow/tfjs';
import { shapeStr } from './shape.ts';

export const IGNORE_LABEL = 255;

/**
 * Throws if `mask` is not int32 or holds a value outside 0..numClasses-1 and 255. `what` names the mask
 * in the message (e.g. a file name or 'pseudo-label'). Reads back three scalars.
 */
export function validateMask(mask: tf.Tensor, numClasses: number, what: string): void {
  if (!Number.isInteger(numClasses) || numClasses < 1) {
    throw new Error(`${what}: numClasses must be a positive integer, got ${numClasses}`);
  }
  if (mask.dtype !== 'int32') {
    throw new Error(`${what}: mask must be int32 (train IDs, 255 = ignore), got ${mask.dtype} of shape ${shapeStr(mask.shape)}`);
  }
  if (mask.size === 0) return;
  const [bad, hi, lo] = tf
    .tidy(() => {
      const m = mask.flatten();
      const outside = tf.logicalAnd(tf.logicalOr(tf.less(m, 0), tf.greaterEqual(m, numClasses)), tf.notEqual(m, IGNORE_LABEL));
      const nBad = outside.cast('int32').sum();
      const maxBad = tf.where(outside, m, tf.fill(m.shape, -2147483648, 'int32')).max();
      const minBad = tf.where(outside, m, tf.fill(m.shape, 2147483647, 'int32')).min();
      return [nBad, maxBad, minBad];
    })
    .map((t) => {
      const v = t.dataSync()[0]!;
      t.dispose();
      return v;
    }) as [number, number, number];
  if (bad > 0) {
    const value = hi >= numClasses ? hi : lo;
    throw new Error(
      `${what}: mask contains value ${value} outside 0..${numClasses - 1} and ${IGNORE_LABEL} (${bad} pixel${bad === 1 ? '' : 's'})`,
    );
  }
}

function checkMask3(labels: tf.Tensor, fn: string, name: string): asserts labels is tf.Tensor3D {
  if (labels.rank !== 3) throw new Error(`${fn}: ${name} must be rank 3 [B,h,w], got shape ${shapeStr(labels.shape)}`);
  if (labels.dtype !== 'int32') throw new Error(`${fn}: ${name} must be int32, got ${labels.dtype}`);
}

/** Source row (or column) of every output row for PyTorch legacy nearest: ⌊i·in/out⌋, exact integers. */
function nearestIndices(inSize: number, outSize: number): Int32Array {
  const idx = new Int32Array(outSize);
  for (let i = 0; i < outSize; i++) idx[i] = Math.floor((i * inSize) / outSize);
  return idx;
}

/**
 * Resizes int32 labels [B,H,W] to [B,h,w] with PyTorch's legacy 'nearest' (REFERENCE 4.2):
 * out[b, i, j] = in[b, ⌊i·H/h⌋, ⌊j·W/w⌋]. Works for up- and downsampling.
 */
export function downsampleLabels(labels: tf.Tensor3D, size: readonly [number, number]): tf.Tensor3D {
  checkMask3(labels, 'downsampleLabels', 'labels');
  const [h, w] = size;
  if (!Number.isInteger(h) || !Number.isInteger(w) || h < 1 || w < 1) {
    throw new Error(`downsampleLabels: size must be two positive integers [h, w], got ${shapeStr(size)}`);
  }
  const [, H, W] = labels.shape;
  if (h === H && w === W) return labels.clone();
  return tf.tidy(() => {
    const rows = tf.tensor1d(nearestIndices(H, h), 'int32');
    const cols = tf.tensor1d(nearestIndices(W, w), 'int32');
    return tf.gather(tf.gather(labels, rows, 1), cols, 2) as tf.Tensor3D;
  });
}

/**
 * Source-mask refinement (REFERENCE 4.2): labels [B,h,w] where argmax over K of logits [B,h,w,K]
 * differs from the label become 255; 255 stays 255.
 */
export function refineSourceMask(labels: tf.Tensor3D, logits: tf.Tensor4D): tf.Tensor3D {
  checkMask3(labels, 'refineSourceMask', 'labels');
  if (logits.rank !== 4) throw new Error(`refineSourceMask: logits must be rank 4 [B,h,w,K], got shape ${shapeStr(logits.shape)}`);
  if (labels.shape.some((d, i) => d !== logits.shape[i])) {
    throw new Error(`refineSourceMask: labels ${shapeStr(labels.shape)} do not match logits ${shapeStr(logits.shape)}`);
  }
  return tf.tidy(() => {
    const pred = tf.argMax(logits, 3);
    return tf.where(tf.equal(pred, labels), labels, tf.fill(labels.shape, IGNORE_LABEL, 'int32') as tf.Tensor3D);
  });
}

/**
 * Float32 one-hot [...mask.shape, K] of an int32 mask; 255 (and any value outside 0..K-1) gives an
 * all-zero row, so it drops out of every per-class sum.
 */
export function maskOneHot(mask: tf.Tensor, numClasses: number): tf.Tensor {
  // int32 oneHot then cast: wasm's float32 oneHot writes integer bit patterns (tfjs 4.22), and a
  // broadcast `equal` against 0..K-1 is ~15x slower on wasm. Out-of-range indices give all-zero rows.
  return tf.tidy(() =>
    tf
      .oneHot(mask.flatten(), numClasses, 1, 0, 'int32')
      .reshape([...mask.shape, numClasses])
      .cast('float32'),
  );
}

/**
 * Pixels of a label map or mask that count in a mean over labelled pixels (not IGNORE_LABEL). The data-parallel
 * step counts its label inputs the same way on the host (src/parallel/shared-step.ts `labelledCounts`).
 */
export function labelledPixels(labels: tf.Tensor): number {
  return tf.tidy(() => tf.sum(tf.cast(tf.notEqual(labels, IGNORE_LABEL), 'int32')).dataSync()[0]!);
}

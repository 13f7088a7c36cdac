/**
 * Evaluation metrics (REFERENCE 7) and the class-centre distance (REFERENCE 9).
 *
 * `ConfusionMatrix` accumulates K×K counts (row = label, column = prediction) over a whole set, as the
 * authors' `test.py` sums intersections and areas: I_k = M[k][k], U_k = Σ_j M[k][j] + Σ_i M[i][k] − I_k,
 * IoU_k = I_k / (U_k + 1e-10), mIoU = plain mean over the chosen classes (a class with zero union counts
 * as 0). Pixels labelled 255 are ignored together with their prediction. Counting is one device-side
 * bincount of label·K + pred per `add`; only the K² counts come back (float64 on the host).
 */
import * as tf from '@tensorflow/tfjs';
import { IGNORE_LABEL, maskOneHot } from './masks.ts';

import { SYNTHIA_13_OF_16, TAIL_CLASSES_19 } from './classes.ts';
import { shapeStr } from './shape.ts';

export { CITYSCAPES_CLASSES, SYNTHIA_CLASSES, TAIL_CLASSES_19, SYNTHIA_13_OF_16 } from './classes.ts';

export interface ConfusionMatrixJSON {
  numClasses: number;
  /** K×K, row = label, column = prediction. */
  counts: number[][];
}

/** Confusion matrix accumulated over a whole evaluation set (REFERENCE 7). */
export class ConfusionMatrix {
  readonly numClasses: number;
  private readonly m: Float64Array;

  constructor(numClasses: number) {
    if (!Number.isInteger(numClasses) || numClasses < 1) {
      throw new Error(`ConfusionMatrix: numClasses must be a positive integer, got ${numClasses}`);
    }
    this.numClasses = numClasses;
    this.m = new Float64Array(numClasses * numClasses);
  }

  /**
   * Adds int32 predictions and labels of the same shape. Labels 255 are ignored (with their
   * prediction). Throws, without counting anything, if a label is outside 0..K-1 and 255 or a
   * prediction at a labelled pixel is outside 0..K-1.
   */
  add(pred: tf.Tensor, label: tf.Tensor): void {
    const k = this.numClasses;
    if (pred.dtype !== 'int32' || label.dtype !== 'int32') {
      throw new Error(`ConfusionMatrix.add: pred and label must be int32, got ${pred.dtype} and ${label.dtype}`);
    }
    if (pred.rank !== label.rank || pred.shape.some((d, i) => d !== label.shape[i])) {
      throw new Error(`ConfusionMatrix.add: pred ${shapeStr(pred.shape)} does not match label ${shapeStr(label.shape)}`);
    }
    if (label.size === 0) return;
    // Cells 0..K²-1 are the matrix; K² counts ignored labels, K²+1 bad labels, K²+2 bad predictions.
    const ignoredCell = k * k;
    const badLabelCell = ignoredCell + 1;
    const badPredCell = ignoredCell + 2;
    const counts = tf.tidy(() => {
      const l = label.flatten();
      const p = pred.flatten();
      const lOk = tf.logicalAnd(tf.greaterEqual(l, 0), tf.less(l, k));
      const pOk = tf.logicalAnd(tf.greaterEqual(p, 0), tf.less(p, k));
      const cell = l.mul(tf.scalar(k, 'int32')).add(p);
      const fill = (v: number) => tf.fill(l.shape, v, 'int32');
      const idx = tf.where(
        lOk,
        tf.where(pOk, cell, fill(badPredCell)),
        tf.where(tf.equal(l, IGNORE_LABEL), fill(ignoredCell), fill(badLabelCell)),
      ) as tf.Tensor1D;
      return tf.bincount(idx, tf.tensor1d([], 'int32'), k * k + 3);
    });
    const data = counts.dataSync();
    counts.dispose();
    const pixels = (n: number) => `${n} pixel${n === 1 ? '' : 's'}`;
    if (data[badLabelCell]! > 0) {
      throw new Error(`ConfusionMatrix.add: label has ${pixels(data[badLabelCell]!)} with values outside 0..${k - 1} and ${IGNORE_LABEL}`);
    }
    if (data[badPredCell]! > 0) {
      throw new Error(
        `ConfusionMatrix.add: pred has ${pixels(data[badPredCell]!)} (where the label is not ${IGNORE_LABEL}) with values outside 0..${k - 1}`,
      );
    }
    for (let i = 0; i < k * k; i++) this.m[i] += data[i]!;
  }

  /** IoU per class: I / (U + 1e-10). */
  iou(): number[] {
    const k = this.numClasses;
    const out: number[] = [];
    for (let c = 0; c < k; c++) {
      const inter = this.m[c * k + c]!;
      out.push(inter / (this.labelArea(c) + this.predArea(c) - inter + 1e-10));
    }
    return out;
  }

  /** Plain mean IoU over `classes` (default all K); a class with zero union counts as 0. */
  miou(classes?: readonly number[]): number {
    const iou = this.iou();
    const which = classes ?? iou.map((_, i) => i);
    if (which.length === 0) throw new Error('ConfusionMatrix.miou: classes is empty');
    let s = 0;
    for (const c of which) {
      if (!Number.isInteger(c) || c < 0 || c >= this.numClasses) {
        throw new Error(`ConfusionMatrix.miou: class ${c} outside 0..${this.numClasses - 1}`);
      }
      s += iou[c]!;
    }
    return s / which.length;
  }

  /** mIoU over the 11 tail classes of Cityscapes (paper App. B); needs K = 19. */
  tailMiou(): number {
    if (this.numClasses !== 19) throw new Error(`ConfusionMatrix.tailMiou: needs the 19 Cityscapes classes, have ${this.numClasses}`);
    return this.miou(TAIL_CLASSES_19);
  }

  /** mIoU* of the SYNTHIA protocol: the 16 classes minus wall, fence, pole; needs K = 16. */
  miou13(): number {
    if (this.numClasses !== 16) throw new Error(`ConfusionMatrix.miou13: needs the 16 SYNTHIA classes, have ${this.numClasses}`);
    return this.miou(SYNTHIA_13_OF_16);
  }

  /** Overall pixel accuracy: Σ_k I_k / (labelled pixels + 1e-10). */
  pixelAccuracy(): number {
    let inter = 0;
    let total = 0;
    for (let c = 0; c < this.numClasses; c++) {
      inter += this.m[c * this.numClasses + c]!;
      total += this.labelArea(c);
    }
    return inter / (total + 1e-10);
  }

  /** Mean over all K classes of I_k / (label area_k + 1e-10) (a class never labelled counts as 0). */
  meanAccuracy(): number {
    let s = 0;
    for (let c = 0; c < this.numClasses; c++) s += this.m[c * this.numClasses + c]! / (this.labelArea(c) + 1e-10);
    return s / this.numClasses;
  }

  /** K×K counts, row = label, column = prediction. */
  counts(): number[][] {
    const k = this.numClasses;
    return Array.from({ length: k }, (_, r) => Array.from(this.m.subarray(r * k, (r + 1) * k)));
  }

  reset(): void {
    this.m.fill(0);
  }

  toJSON(): ConfusionMatrixJSON {
    return { numClasses: this.numClasses, counts: this.counts() };
  }

  static fromJSON(json: ConfusionMatrixJSON): ConfusionMatrix {
    const cm = new ConfusionMatrix(json.numClasses);
    const k = json.numClasses;
    if (!Array.isArray(json.counts) || json.counts.length !== k || json.counts.some((row) => !Array.isArray(row) || row.length !== k)) {
      throw new Error(`ConfusionMatrix.fromJSON: counts must be a ${k}x${k} array`);
    }
    json.counts.forEach((row, r) =>
      row.forEach((v, c) => {
        if (!(v >= 0)) throw new Error(`ConfusionMatrix.fromJSON: counts[${r}][${c}] = ${v} is not a non-negative number`);
        cm.m[r * k + c] = v;
      }),
    );
    return cm;
  }

  private labelArea(c: number): number {
    let s = 0;
    for (let j = 0; j < this.numClasses; j++) s += this.m[c * this.numClasses + j]!;
    return s;
  }

  private predArea(c: number): number {
    let s = 0;
    for (let i = 0; i < this.numClasses; i++) s += this.m[i * this.numClasses + c]!;
    return s;
  }
}

/**
 * Class-centre distance per class (REFERENCE 9, paper App. D Eq. 10):
 *
 *   CCD(c) = 1/(K'−1) · Σ_{k present, k≠c} [ (1/|Φ_c|) Σ_{x∈Φ_c} ‖x − μ_c‖² ] / ‖μ_c − μ_k‖²
 *
 * Choices the paper leaves open: μ are the class means of the given features, which are used as they
 * are (no normalisation: pass normalised features to measure the contrastive space); the sum and K' run
 * over the classes present in `labels` (values outside 0..K-1, 255 included, are ignored), so absent
 * classes neither get a value (NaN) nor enter others' sums. With a single present class the value is
 * NaN (no other centre); coinciding centres give Infinity.
 *
 * features [N,C] with labels [N], or [B,h,w,C] with labels [B,h,w] (int32).
 */
export function classCenterDistance(features: tf.Tensor, labels: tf.Tensor, numClasses: number): number[] {
  const fn = 'classCenterDistance';
  if (features.rank !== 2 && features.rank !== 4) {
    throw new Error(`${fn}: features must be rank 2 [N,C] or rank 4 [B,h,w,C], got shape ${shapeStr(features.shape)}`);
  }
  if (labels.dtype !== 'int32') throw new Error(`${fn}: labels must be int32, got ${labels.dtype}`);
  if (labels.rank !== features.rank - 1 || labels.shape.some((d, i) => d !== features.shape[i])) {
    throw new Error(`${fn}: labels ${shapeStr(labels.shape)} do not match features ${shapeStr(features.shape)}`);
  }
  if (!Number.isInteger(numClasses) || numClasses < 1) throw new Error(`${fn}: numClasses must be a positive integer, got ${numClasses}`);
  const k = numClasses;
  const c = features.shape[features.rank - 1]!;
  const [muT, spreadT, countT] = tf.tidy(() => {
    const x = tf.cast(features, 'float32').reshape([-1, c]) as tf.Tensor2D;
    const onehot = maskOneHot(labels.flatten(), k) as tf.Tensor2D; // [N, K]
    const counts = onehot.sum(0); // [K]
    const mu = tf.matMul(onehot, x, true, false).div(tf.maximum(counts, 1).reshape([k, 1])) as tf.Tensor2D;
    // Σ_{x∈Φ_c} ‖x − μ_c‖² directly (not E‖x‖² − ‖μ‖², which cancels badly in float32).
    const sq = x.sub(tf.matMul(onehot, mu)).square().sum(1, true); // [N, 1]; unlabelled rows unused
    const spread = tf.matMul(onehot, sq, true, false).reshape([k]); // [K]
    return [mu, spread, counts];
  });
  const mu = muT.dataSync();
  const spread = spreadT.dataSync();
  const counts = countT.dataSync();
  tf.dispose([muT, spreadT, countT]);
  const present: number[] = [];
  for (let i = 0; i < k; i++) if (counts[i]! > 0) present.push(i);
  const out: number[] = new Array<number>(k).fill(Number.NaN);
  for (const a of present) {
    const intra = spread[a]! / counts[a]!;
    let s = 0;
    for (const b of present) {
      if (b === a) continue;
      let d2 = 0;
      for (let j = 0; j < c; j++) {
        const d = mu[a * c + j]! - mu[b * c + j]!;
        d2 += d * d;
      }
      s += intra / d2;
    }
    out[a] = present.length > 1 ? s / (present.length - 1) : Number.NaN;
  }
  return out;
}

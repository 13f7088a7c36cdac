/**
 * Per-class confidence thresholds and pseudo-labels (REFERENCE 5).
 *
 * The authors keep every target pixel's max-softmax confidence and argmax in RAM (~17 GiB) and take, per
 * class k, the sorted confidences' element at index round_half_even(n_k / 2) (the upper median for
 * even n_k), 0 if n_k = 0, then min(σ_k, 0.9). `ConfidenceHistogram` streams instead: per class a
 * histogram of confidences over [0, 1] in `bins` equal bins (K·bins float64 counts, independent of the
 * pixel count). The ranked element is located in its bin exactly; inside the bin the values are assumed
 * evenly spread, the r-th of c values at lo + (r + ½)/c · width, so the error is below one bin width
 * (1/4096 ≈ 2.4e-4 by default).
 *
 * `pseudoLabels`: argmax; pixels with max prob p < σ_argmax become 255 (p ≥ σ kept, as the code does;
 * the paper writes ">").
 */
import * as tf from '@tensorflow/tfjs';
import { IGNORE_LABEL } from './masks.ts';
import { shapeStr } from './shape.ts';

function checkProbs(fn: string, probs: tf.Tensor, numClasses?: number): void {
  if (probs.rank !== 4) throw new Error(`${fn}: probs must be rank 4 [B,H,W,K], got shape ${shapeStr(probs.shape)}`);
  if (numClasses !== undefined && probs.shape[3] !== numClasses) {
    throw new Error(`${fn}: probs ${shapeStr(probs.shape)} have ${probs.shape[3]} classes, expected ${numClasses}`);
  }
}

/** NumPy's `round` of n/2 (ties to even): the index of the authors' "median" in the sorted confidences. */
export function upperMedianIndex(n: number): number {
  const half = Math.floor(n / 2);
  if (n % 2 === 0) return half;
  return half % 2 === 0 ? half : half + 1;
}

export interface ConfidenceHistogramJSON {
  numClasses: number;
  bins: number;
  /** Sparse counts: [flat index k·bins + bin, count] for the non-zero cells. */
  counts: [number, number][];
}

export interface ConfidenceHistogramOptions {
  /** Bins over [0, 1] per class. Default 4096 (threshold error < 1/4096). */
  bins?: number;
}

export interface ThresholdOptions {
  /** Upper bound on every threshold. Default 0.9 (REFERENCE 5 step 4). */
  cap?: number;
}

/** Per-class histograms of max-softmax confidence, accumulated over a stream of batches (REFERENCE 5). */
export class ConfidenceHistogram {
  readonly numClasses: number;
  readonly bins: number;
  private readonly hist: Float64Array;

  constructor(numClasses: number, opts: ConfidenceHistogramOptions = {}) {
    if (!Number.isInteger(numClasses) || numClasses < 1) {
      throw new Error(`ConfidenceHistogram: numClasses must be a positive integer, got ${numClasses}`);
    }
    const bins = opts.bins ?? 4096;
    if (!Number.isInteger(bins) || bins < 1) throw new Error(`ConfidenceHistogram: bins must be a positive integer, got ${bins}`);
    this.numClasses = numClasses;
    this.bins = bins;
    this.hist = new Float64Array(numClasses * bins);
  }

  /** Number of float64 cells held: K·bins, whatever was added. */
  get storageSize(): number {
    return this.hist.length;
  }

  /**
   * Adds softmax probabilities [B,H,W,K]: per pixel p = max, k = argmax, counted in cell
   * k·bins + min(⌊p·bins⌋, bins−1) with a device-side bincount; only the K·bins counts come back.
   */
  add(probs: tf.Tensor4D): void {
    checkProbs('ConfidenceHistogram.add', probs, this.numClasses);
    if (probs.size === 0) return;
    const [p, k] = tf.tidy(() => [probs.max(-1), probs.argMax(-1)]);
    this.addTop(p!, k!);
    tf.dispose([p!, k!]);
  }

  /**
   * `add` from each pixel's max probability and its class (argmax), when the caller has them anyway
   * (the threshold pass keeps both): the same counts, without reducing the probabilities again.
   */
  addTop(confidence: tf.Tensor, classes: tf.Tensor): void {
    if (confidence.size !== classes.size || classes.dtype !== 'int32') {
      throw new Error(
        `ConfidenceHistogram.addTop: confidence ${shapeStr(confidence.shape)} and int32 classes ${shapeStr(classes.shape)} (${classes.dtype}) must have one value per pixel each`,
      );
    }
    if (confidence.size === 0) return;
    const bins = this.bins;
    const size = this.hist.length;
    const counts = tf.tidy(() => {
      const bin = tf.clipByValue(tf.floor(confidence.reshape([-1]).mul(bins)), 0, bins - 1).cast('int32');
      const idx = classes.reshape([-1]).mul(tf.scalar(bins, 'int32')).add(bin) as tf.Tensor1D;
      return tf.bincount(idx, tf.tensor1d([], 'int32'), size);
    });
    const data = counts.dataSync();
    counts.dispose();
    for (let i = 0; i < size; i++) this.hist[i] += data[i]!;
  }

  /** Pixels counted per class (argmax = k). */
  counts(): number[] {
    const out: number[] = [];
    for (let k = 0; k < this.numClasses; k++) {
      let n = 0;
      for (let b = 0; b < this.bins; b++) n += this.hist[k * this.bins + b]!;
      out.push(n);
    }
    return out;
  }

  /** Per class: the upper median confidence (see the module comment), capped; 0 for classes with no pixel. */
  thresholds(opts: ThresholdOptions = {}): number[] {
    const cap = opts.cap ?? 0.9;
    const bins = this.bins;
    const out: number[] = [];
    const totals = this.counts();
    for (let k = 0; k < this.numClasses; k++) {
      const n = totals[k]!;
      if (n === 0) {
        out.push(0);
        continue;
      }
      const target = upperMedianIndex(n);
      let before = 0;
      let sigma = 1;
      for (let b = 0; b < bins; b++) {
        const c = this.hist[k * bins + b]!;
        if (before + c > target) {
          sigma = (b + (target - before + 0.5) / c) / bins;
          break;
        }
        before += c;
      }
      out.push(Math.min(sigma, cap));
    }
    return out;
  }

  /** Forgets every count. */
  reset(): void {
    this.hist.fill(0);
  }

  toJSON(): ConfidenceHistogramJSON {
    const counts: [number, number][] = [];
    for (let i = 0; i < this.hist.length; i++) if (this.hist[i] !== 0) counts.push([i, this.hist[i]!]);
    return { numClasses: this.numClasses, bins: this.bins, counts };
  }

  static fromJSON(json: ConfidenceHistogramJSON): ConfidenceHistogram {
    const h = new ConfidenceHistogram(json.numClasses, { bins: json.bins });
    if (!Array.isArray(json.counts)) throw new Error('ConfidenceHistogram.fromJSON: counts must be an array of [index, count]');
    for (const entry of json.counts) {
      const [i, c] = entry;
      if (!Number.isInteger(i) || i < 0 || i >= h.hist.length || !(c >= 0)) {
        throw new Error(`ConfidenceHistogram.fromJSON: bad entry [${String(entry)}] for ${json.numClasses} classes x ${json.bins} bins`);
      }
      h.hist[i] = c;
    }
    return h;
  }
}

/**
 * Pseudo-labels from softmax probabilities [B,H,W,K] (REFERENCE 5, labelling pass; paper section 3.3, the
 * Y^_t of Eq. 9, and Eq. 5's rule where the offline labels stand in for M_t): argmax, set to 255
 * where the max prob is below the threshold of the argmax class (p ≥ σ kept). Returns int32 [B,H,W].
 */
export function pseudoLabels(probs: tf.Tensor4D, thresholds: number[] | tf.Tensor1D): tf.Tensor3D {
  checkProbs('pseudoLabels', probs);
  const k = probs.shape[3];
  const n = Array.isArray(thresholds) ? thresholds.length : thresholds.rank === 1 ? thresholds.shape[0] : -1;
  if (n !== k) {
    const got = Array.isArray(thresholds) ? `${n} values` : `shape ${shapeStr(thresholds.shape)}`;
    throw new Error(`pseudoLabels: thresholds must have one value per class (${k}), got ${got}`);
  }
  return tf.tidy(() => {
    const sigma = Array.isArray(thresholds) ? tf.tensor1d(thresholds, 'float32') : tf.cast(thresholds, 'float32');
    const p = probs.max(3);
    const y = probs.argMax(3);
    const keep = tf.greaterEqual(p, tf.gather(sigma, y));
    return tf.where(keep, y, tf.fill(y.shape, IGNORE_LABEL, 'int32')) as tf.Tensor3D;
  });
}

/**
 * Trainable batch norm in training mode on the host backends (wasm, cpu), as loops over host memory:
 * the statistics in two passes (sum, then squared deviations from the mean, as tf.moments), the output
 * in one (y = x * a + b per channel), the backward in two (sum(dy) and sum(dy * x^), then dx). The
 * tensor formula (`layers.ts`) runs ~8 element-wise kernels each way, each a pass over the activations
 * and a new buffer; on the small DeepLab with trainable BN they were a fifth of a wasm training step.
 *
 * The math is the formula's (and PyTorch's): x^ = (x - mean) / sqrt(var + eps) with the biased batch
 * variance; dx = gamma / sigma * (dy - sum(dy) / N - x^ * sum(dy * x^) / N); d gamma = sum(dy * x^),
 * d beta = sum(dy). Sums accumulate in float64 (the tensor path: float32 in order) and are rounded to
 * float32 where they leave: in `sum` (data-parallel replicas: the whole batch's statistics and gradient
 * sums, synchronised BN) and in d gamma / d beta (this replica's part).
 */
import * as tf from '@tensorflow/tfjs';
import type { CrossReplicaSum } from './layers.ts';

export interface HostBatchStats {
  mean: Float64Array;
  /** Biased (divided by `count`). */
  variance: Float64Array;
  /** Pixels the statistics are over (every replica's with `sum`). */
  count: number;
}

/** Per-channel mean and biased variance of NHWC `values` (`channels` innermost), over every replica with `sum`. */
export function hostBatchStats(values: Float32Array, channels: number, sum: CrossReplicaSum | null): HostBatchStats {
  const c = channels;
  const local = new Float64Array(c);
  for (let i = 0; i < values.length; i += c) for (let k = 0; k < c; k++) local[k]! += values[i + k]!;
  let count = values.length / c;
  let totals: ArrayLike<number> = local;
  if (sum) {
    const out = new Float32Array(c + 1);
    out.set(local);
    out[c] = count;
    const all = sum(out);
    count = all[c]!;
    totals = all;
  }
  const mean = new Float64Array(c);
  for (let k = 0; k < c; k++) mean[k] = totals[k]! / count;
  const squares = new Float64Array(c);
  for (let i = 0; i < values.length; i += c)
    for (let k = 0; k < c; k++) {
      const d = values[i + k]! - mean[k]!;
      squares[k]! += d * d;
    }
  const variance = new Float64Array(c);
  const all = sum ? sum(Float32Array.from(squares)) : squares;
  for (let k = 0; k < c; k++) variance[k] = all[k]! / count;
  return { mean, variance, count };
}

/**
 * The batch-norm op (x, gamma, beta) -> y by the statistics `stats` of `values` (= x's data, read by the
 * caller), with the gradient above. The statistics are constants for the tape (their dependence on x is
 * in the gradient formula).
 */
export function hostBatchNorm(
  x: tf.Tensor4D,
  values: Float32Array,
  stats: HostBatchStats,
  gamma: tf.Tensor1D,
  beta: tf.Tensor1D,
  eps: number,
  sum: CrossReplicaSum | null,
): tf.Tensor4D {
  const c = x.shape[3];
  const { mean, count } = stats;
  const invStd = stats.variance.map((v) => 1 / Math.sqrt(v + eps));
  const f = tf.customGrad(((xs: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => {
    const gv = g.dataSync() as Float32Array;
    const bv = b.dataSync() as Float32Array;
    const scale = new Float64Array(c);
    const shift = new Float64Array(c);
    for (let k = 0; k < c; k++) {
      scale[k] = gv[k]! * invStd[k]!;
      shift[k] = bv[k]! - mean[k]! * scale[k]!;
    }
    const y = new Float32Array(values.length);
    for (let i = 0; i < values.length; i += c) for (let k = 0; k < c; k++) y[i + k] = values[i + k]! * scale[k]! + shift[k]!;
    return {
      value: tf.tensor4d(y, xs.shape as [number, number, number, number]),
      gradFunc: (dy: tf.Tensor) => {
        const d = dy.dataSync() as Float32Array;
        const sumDy = new Float64Array(c);
        const sumDyXc = new Float64Array(c); // sum(dy * (x - mean)); times invStd: sum(dy * x^)
        for (let i = 0; i < d.length; i += c)
          for (let k = 0; k < c; k++) {
            const v = d[i + k]!;
            sumDy[k]! += v;
            sumDyXc[k]! += v * (values[i + k]! - mean[k]!);
          }
        const local = new Float32Array(2 * c);
        for (let k = 0; k < c; k++) {
          local[k] = sumDy[k]!;
          local[c + k] = sumDyXc[k]! * invStd[k]!;
        }
        const all = sum ? sum(local) : local;
        // dx = A dy + B (x - mean) + C with A = gamma invStd, B = -A invStd mean(dy x^), C = -A mean(dy)
        const a = new Float64Array(c);
        const bx = new Float64Array(c);
        const c0 = new Float64Array(c);
        for (let k = 0; k < c; k++) {
          a[k] = gv[k]! * invStd[k]!;
          bx[k] = (-a[k]! * invStd[k]! * all[c + k]!) / count;
          c0[k] = (-a[k]! * all[k]!) / count;
        }
        const dx = new Float32Array(d.length);
        for (let i = 0; i < d.length; i += c)
          for (let k = 0; k < c; k++) dx[i + k] = a[k]! * d[i + k]! + bx[k]! * (values[i + k]! - mean[k]!) + c0[k]!;
        return [tf.tensor4d(dx, dy.shape as [number, number, number, number]), tf.tensor1d(local.slice(c)), tf.tensor1d(local.slice(0, c))];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return f(x, gamma, beta) as tf.Tensor4D;
}

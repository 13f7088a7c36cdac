/**
 * Trainable batch norm in training mode on the host backends (wasm, cpu), as loops over host memory:
 * the statistics in two passes (sum, then squared deviations from the mean, as tf.moments), the output
 * in one (y = x * a + b per channel), the backward in two (sum(dy) and sum(dy * x^), then dx). The
 * tensor formula (`layers.ts`) runs ~8 element-wise kernels each way, each a pass over the activations
 * and a new buffer; on the small DeepLab with trainable BN they were a fifth of a wasm training step.
 * The loops read and write tensor memory in place (`host-memory.ts`): copies through JS typed arrays
 * made V8 collect garbage so often that data-parallel replicas, which meet at every BN layer, lost
 * more to the pauses than the loops gained.
 *
 * The math is the formula's (and PyTorch's): x^ = (x - mean) / sqrt(var + eps) with the biased batch
 * variance; dx = gamma / sigma * (dy - sum(dy) / N - x^ * sum(dy * x^) / N); d gamma = sum(dy * x^),
 * d beta = sum(dy). Sums accumulate in float64 (the tensor path: float32 in order) and are rounded to
 * float32 where they leave: in `sum` (data-parallel replicas: the whole batch's statistics and gradient
 * sums, synchronised BN) and in d gamma / d beta (this replica's part).
 */
import * as tf from '@tensorflow/tfjs';
import { hostTensor, hostView } from '../host-memory.ts';
import type { CrossReplicaSum } from './layers.ts';

export interface HostBatchStats {
  mean: Float64Array;
  /** Biased (divided by `count`). */
  variance: Float64Array;
  /** Pixels the statistics are over (every replica's with `sum`). */
  count: number;
}

/** Per-channel mean and biased variance of NHWC `x`, over every replica with `sum`. */
export function hostBatchStats(x: tf.Tensor4D, sum: CrossReplicaSum | null): HostBatchStats {
  const c = x.shape[3];
  // no backend allocation below: the view stays valid (`sum` waits for the other replicas, nothing else)
  const values = hostView(x);
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
 * The batch-norm op (x, gamma, beta) -> y by the statistics `stats` of x, with the gradient above. The
 * statistics are constants for the tape (their dependence on x is in the gradient formula).
 */
export function hostBatchNorm(
  x: tf.Tensor4D,
  stats: HostBatchStats,
  gamma: tf.Tensor1D,
  beta: tf.Tensor1D,
  eps: number,
  sum: CrossReplicaSum | null,
): tf.Tensor4D {
  const c = x.shape[3];
  const { mean, count } = stats;
  const invStd = stats.variance.map((v) => 1 / Math.sqrt(v + eps));
  // tfjs passes the inputs and then `save` as one rest list
  const f = tf.customGrad(((xs: tf.Tensor, g: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
    const gv = Float64Array.from(g.dataSync() as Float32Array);
    const bv = b.dataSync() as Float32Array;
    const scale = new Float64Array(c);
    const shift = new Float64Array(c);
    for (let k = 0; k < c; k++) {
      scale[k] = gv[k]! * invStd[k]!;
      shift[k] = bv[k]! - mean[k]! * scale[k]!;
    }
    save([xs]);
    const y = hostTensor<tf.Rank.R4>(xs.shape, (out) => {
      const values = hostView(xs);
      for (let i = 0; i < values.length; i += c) for (let k = 0; k < c; k++) out[i + k] = values[i + k]! * scale[k]! + shift[k]!;
    });
    return {
      value: y,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const input = saved[0]!;
        const sumDy = new Float64Array(c);
        const sumDyXc = new Float64Array(c); // sum(dy * (x - mean)); times invStd: sum(dy * x^)
        {
          const d = hostView(dy);
          const values = hostView(input);
          for (let i = 0; i < d.length; i += c)
            for (let k = 0; k < c; k++) {
              const v = d[i + k]!;
              sumDy[k]! += v;
              sumDyXc[k]! += v * (values[i + k]! - mean[k]!);
            }
        }
        const local = new Float32Array(2 * c);
        for (let k = 0; k < c; k++) {
          local[k] = sumDy[k]!;
          local[c + k] = sumDyXc[k]! * invStd[k]!;
        }
        const all = sum ? sum(local) : local;
        // dx = A dy + B (x - mean) + C with A = gamma invStd (the forward's scale), B = -A invStd mean(dy x^), C = -A mean(dy)
        const a = scale;
        const bx = new Float64Array(c);
        const c0 = new Float64Array(c);
        for (let k = 0; k < c; k++) {
          bx[k] = (-a[k]! * invStd[k]! * all[c + k]!) / count;
          c0[k] = (-a[k]! * all[k]!) / count;
        }
        const dx = hostTensor<tf.Rank.R4>(dy.shape, (out) => {
          const d = hostView(dy);
          const values = hostView(input);
          for (let i = 0; i < d.length; i += c)
            for (let k = 0; k < c; k++) out[i + k] = a[k]! * d[i + k]! + bx[k]! * (values[i + k]! - mean[k]!) + c0[k]!;
        });
        return [dx, tf.tensor1d(local.slice(c)), tf.tensor1d(local.slice(0, c))];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return f(x, gamma, beta) as tf.Tensor4D;
}

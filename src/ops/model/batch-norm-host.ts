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
 *
 * Every loop walks the activations in tiles of rows (`rowTileLength`: ~16 KB of one tensor, so a tile
 * stays in the first-level cache) and, inside a tile, four channels at a time with their constants and
 * running sums in locals (`QUAD`), where a loop over every channel of a row kept them in memory: 1.5-2.5x
 * faster loops (the per-channel order of every sum is still row by row, so the same bits). On the wasm
 * backend, layers whose channels are a multiple of 4 run the same loops as wasm SIMD on the backend's
 * memory (batch-norm-wasm.ts: two f64 lanes, the same operations in the same order, the same bits).
 */
import * as tf from '@tensorflow/tfjs';
import { hostTensor, hostView, rowTileLength } from '../host-memory.ts';
import { wasmLoopsFor } from './batch-norm-wasm.ts';
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
  channelSums(values, c, local);
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
  squaredDeviations(values, c, mean, squares);
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
    const y = hostTensor<tf.Rank.R4>(xs.shape, (out) => scaleShift(hostView(xs), c, scale, shift, out));
    return {
      value: y,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const input = saved[0]!;
        const sumDy = new Float64Array(c);
        const sumDyXc = new Float64Array(c); // sum(dy * (x - mean)); times invStd: sum(dy * x^)
        gradientSums(hostView(dy), hostView(input), c, mean, sumDy, sumDyXc);
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
        const dx = hostTensor<tf.Rank.R4>(dy.shape, (out) => inputGradient(hostView(dy), hostView(input), c, { a, bx, c0, mean }, out));
        return [dx, tf.tensor1d(local.slice(c)), tf.tensor1d(local.slice(0, c))];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return f(x, gamma, beta) as tf.Tensor4D;
}

/** Channels a loop takes at a time, their constants and running sums in locals. */
const QUAD = 4;

/** sums[k] += x[row, k] over the rows in order. */
function channelSums(x: Float32Array, c: number, sums: Float64Array): void {
  const simd = wasmLoopsFor(x, c);
  if (simd) return simd.sums(x, sums);
  const tile = rowTileLength(c);
  for (let t0 = 0; t0 < x.length; t0 += tile) {
    const t1 = Math.min(x.length, t0 + tile);
    let k = 0;
    for (; k + QUAD <= c; k += QUAD) {
      let s0 = sums[k]!;
      let s1 = sums[k + 1]!;
      let s2 = sums[k + 2]!;
      let s3 = sums[k + 3]!;
      for (let i = t0 + k; i < t1; i += c) {
        s0 += x[i]!;
        s1 += x[i + 1]!;
        s2 += x[i + 2]!;
        s3 += x[i + 3]!;
      }
      sums[k] = s0;
      sums[k + 1] = s1;
      sums[k + 2] = s2;
      sums[k + 3] = s3;
    }
    for (; k < c; k++) {
      let s0 = sums[k]!;
      for (let i = t0 + k; i < t1; i += c) s0 += x[i]!;
      sums[k] = s0;
    }
  }
}

/** squares[k] += (x[row, k] - mean[k])^2 over the rows in order. */
function squaredDeviations(x: Float32Array, c: number, mean: Float64Array, squares: Float64Array): void {
  const simd = wasmLoopsFor(x, c);
  if (simd) return simd.squares(x, mean, squares);
  const tile = rowTileLength(c);
  for (let t0 = 0; t0 < x.length; t0 += tile) {
    const t1 = Math.min(x.length, t0 + tile);
    let k = 0;
    for (; k + QUAD <= c; k += QUAD) {
      const m0 = mean[k]!;
      const m1 = mean[k + 1]!;
      const m2 = mean[k + 2]!;
      const m3 = mean[k + 3]!;
      let s0 = squares[k]!;
      let s1 = squares[k + 1]!;
      let s2 = squares[k + 2]!;
      let s3 = squares[k + 3]!;
      for (let i = t0 + k; i < t1; i += c) {
        const d0 = x[i]! - m0;
        const d1 = x[i + 1]! - m1;
        const d2 = x[i + 2]! - m2;
        const d3 = x[i + 3]! - m3;
        s0 += d0 * d0;
        s1 += d1 * d1;
        s2 += d2 * d2;
        s3 += d3 * d3;
      }
      squares[k] = s0;
      squares[k + 1] = s1;
      squares[k + 2] = s2;
      squares[k + 3] = s3;
    }
    for (; k < c; k++) {
      const m0 = mean[k]!;
      let s0 = squares[k]!;
      for (let i = t0 + k; i < t1; i += c) {
        const d0 = x[i]! - m0;
        s0 += d0 * d0;
      }
      squares[k] = s0;
    }
  }
}

/** out[row, k] = x[row, k] * scale[k] + shift[k] (float64, rounded on the store). */
function scaleShift(x: Float32Array, c: number, scale: Float64Array, shift: Float64Array, out: Float32Array): void {
  const simd = wasmLoopsFor(x, c);
  if (simd) return simd.scaleShift(x, scale, shift, out);
  const tile = rowTileLength(c);
  for (let t0 = 0; t0 < x.length; t0 += tile) {
    const t1 = Math.min(x.length, t0 + tile);
    let k = 0;
    for (; k + QUAD <= c; k += QUAD) {
      const a0 = scale[k]!;
      const a1 = scale[k + 1]!;
      const a2 = scale[k + 2]!;
      const a3 = scale[k + 3]!;
      const b0 = shift[k]!;
      const b1 = shift[k + 1]!;
      const b2 = shift[k + 2]!;
      const b3 = shift[k + 3]!;
      for (let i = t0 + k; i < t1; i += c) {
        out[i] = x[i]! * a0 + b0;
        out[i + 1] = x[i + 1]! * a1 + b1;
        out[i + 2] = x[i + 2]! * a2 + b2;
        out[i + 3] = x[i + 3]! * a3 + b3;
      }
    }
    for (; k < c; k++) {
      const a0 = scale[k]!;
      const b0 = shift[k]!;
      for (let i = t0 + k; i < t1; i += c) out[i] = x[i]! * a0 + b0;
    }
  }
}

/** sumDy[k] += dy[row, k]; sumDyXc[k] += dy[row, k] * (x[row, k] - mean[k]), over the rows in order. */
function gradientSums(dy: Float32Array, x: Float32Array, c: number, mean: Float64Array, sumDy: Float64Array, sumDyXc: Float64Array): void {
  const simd = wasmLoopsFor(dy, c);
  if (simd) return simd.gradSums(dy, x, mean, sumDy, sumDyXc);
  const tile = rowTileLength(c);
  for (let t0 = 0; t0 < dy.length; t0 += tile) {
    const t1 = Math.min(dy.length, t0 + tile);
    let k = 0;
    for (; k + QUAD <= c; k += QUAD) {
      const m0 = mean[k]!;
      const m1 = mean[k + 1]!;
      const m2 = mean[k + 2]!;
      const m3 = mean[k + 3]!;
      let d0 = sumDy[k]!;
      let d1 = sumDy[k + 1]!;
      let d2 = sumDy[k + 2]!;
      let d3 = sumDy[k + 3]!;
      let p0 = sumDyXc[k]!;
      let p1 = sumDyXc[k + 1]!;
      let p2 = sumDyXc[k + 2]!;
      let p3 = sumDyXc[k + 3]!;
      for (let i = t0 + k; i < t1; i += c) {
        const v0 = dy[i]!;
        const v1 = dy[i + 1]!;
        const v2 = dy[i + 2]!;
        const v3 = dy[i + 3]!;
        d0 += v0;
        d1 += v1;
        d2 += v2;
        d3 += v3;
        p0 += v0 * (x[i]! - m0);
        p1 += v1 * (x[i + 1]! - m1);
        p2 += v2 * (x[i + 2]! - m2);
        p3 += v3 * (x[i + 3]! - m3);
      }
      sumDy[k] = d0;
      sumDy[k + 1] = d1;
      sumDy[k + 2] = d2;
      sumDy[k + 3] = d3;
      sumDyXc[k] = p0;
      sumDyXc[k + 1] = p1;
      sumDyXc[k + 2] = p2;
      sumDyXc[k + 3] = p3;
    }
    for (; k < c; k++) {
      const m0 = mean[k]!;
      let d0 = sumDy[k]!;
      let p0 = sumDyXc[k]!;
      for (let i = t0 + k; i < t1; i += c) {
        const v0 = dy[i]!;
        d0 += v0;
        p0 += v0 * (x[i]! - m0);
      }
      sumDy[k] = d0;
      sumDyXc[k] = p0;
    }
  }
}

/** Per-channel constants of dx = a dy + bx (x - mean) + c0. */
export interface InputGradientTerms {
  a: Float64Array;
  bx: Float64Array;
  c0: Float64Array;
  mean: Float64Array;
}

/** out[row, k] = a[k] dy[row, k] + bx[k] (x[row, k] - mean[k]) + c0[k] (float64, rounded on the store). */
function inputGradient(dy: Float32Array, x: Float32Array, c: number, t: InputGradientTerms, out: Float32Array): void {
  const simd = wasmLoopsFor(dy, c);
  if (simd) return simd.inputGrad(dy, x, t, out);
  const { a, bx, c0, mean } = t;
  const tile = rowTileLength(c);
  for (let t0 = 0; t0 < dy.length; t0 += tile) {
    const t1 = Math.min(dy.length, t0 + tile);
    let k = 0;
    for (; k + QUAD <= c; k += QUAD) {
      const a0 = a[k]!;
      const a1 = a[k + 1]!;
      const a2 = a[k + 2]!;
      const a3 = a[k + 3]!;
      const b0 = bx[k]!;
      const b1 = bx[k + 1]!;
      const b2 = bx[k + 2]!;
      const b3 = bx[k + 3]!;
      const e0 = c0[k]!;
      const e1 = c0[k + 1]!;
      const e2 = c0[k + 2]!;
      const e3 = c0[k + 3]!;
      const m0 = mean[k]!;
      const m1 = mean[k + 1]!;
      const m2 = mean[k + 2]!;
      const m3 = mean[k + 3]!;
      for (let i = t0 + k; i < t1; i += c) {
        out[i] = a0 * dy[i]! + b0 * (x[i]! - m0) + e0;
        out[i + 1] = a1 * dy[i + 1]! + b1 * (x[i + 1]! - m1) + e1;
        out[i + 2] = a2 * dy[i + 2]! + b2 * (x[i + 2]! - m2) + e2;
        out[i + 3] = a3 * dy[i + 3]! + b3 * (x[i + 3]! - m3) + e3;
      }
    }
    for (; k < c; k++) {
      const a0 = a[k]!;
      const b0 = bx[k]!;
      const e0 = c0[k]!;
      const m0 = mean[k]!;
      for (let i = t0 + k; i < t1; i += c) out[i] = a0 * dy[i]! + b0 * (x[i]! - m0) + e0;
    }
  }
}

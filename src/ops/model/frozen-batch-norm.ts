/**
 * Frozen batch norm (the authors' FrozenBatchNorm, REFERENCE 3.1: y = x * scale + shift with scale =
 * w / sqrt(var) and shift = b - mean * scale from four fixed buffers; the paper's setting for every phase but
 * self-training).
 *
 * The tensor formula runs, per layer and step, four kernels on channel vectors for scale and shift, then a
 * broadcasting Multiply and Add over the activations forward and a broadcasting Multiply backward;
 * tfjs-wasm's broadcasting kernels walk their operands by index (~1-3 ns an element: ~5 ms of a ~90 ms
 * step of the small DeepLab, batch 8, 64x128). On the wasm backend, for channels a multiple of 4, this
 * computes scale and shift by the same kernels once per set of buffers (kept as host arrays until one of
 * the four is replaced: every write to a variable in this project is an `assign`, which gives it new data)
 * and runs one wasm SIMD pass forward and one backward on the backend's memory (batch-norm-wasm.ts), each
 * product rounded to float32 before the sum as the Multiply and Add kernels round: the same bits
 * (test/ops/frozen-batch-norm.test.ts). Elsewhere the tensor formula runs.
 */
import * as tf from '@tensorflow/tfjs';
import { hostTensor, hostView } from '../host-memory.ts';
import { wasmLoopsFor } from './batch-norm-wasm.ts';

/** The four buffers of a frozen batch-norm layer. */
export interface FrozenBuffers {
  gamma: tf.Variable;
  beta: tf.Variable;
  mean: tf.Variable;
  variance: tf.Variable;
}

let enabled = true;

/** Tests and benchmarks only: false runs the tensor formula on wasm too. */
export function setFrozenBatchNormWasm(on: boolean): void {
  enabled = on;
}

/** scale = gamma / sqrt(var) and shift = beta - mean * scale, as tensors (no epsilon: the authors' FrozenBatchNorm). */
function scaleShift(b: FrozenBuffers): [tf.Tensor1D, tf.Tensor1D] {
  return tf.tidy(() => {
    const scale = tf.mul(b.gamma, tf.rsqrt(b.variance)) as tf.Tensor1D;
    return [scale, tf.sub(b.beta, tf.mul(b.mean, scale)) as tf.Tensor1D];
  });
}

/** The tensor formula: y = x * scale + shift (tfjs's kernels and their gradients). */
export function frozenBatchNormFormula(x: tf.Tensor4D, b: FrozenBuffers): tf.Tensor4D {
  return tf.tidy(() => {
    const [scale, shift] = scaleShift(b);
    return tf.add(tf.mul(x, scale), shift) as tf.Tensor4D;
  });
}

/** One layer's frozen batch norm: the wasm passes where they apply, the tensor formula elsewhere. */
export class FrozenBatchNorm {
  private readonly buffers: FrozenBuffers;
  /** The buffers' data the arrays below were computed from. */
  private from: readonly object[] = [];
  private scale = new Float32Array(0);
  private shift = new Float32Array(0);

  constructor(buffers: FrozenBuffers) {
    this.buffers = buffers;
  }

  apply(x: tf.Tensor4D): tf.Tensor4D {
    return this.wasmPasses(x) ?? frozenBatchNormFormula(x, this.buffers);
  }

  /** y by the wasm passes, with their gradient; null where they do not apply. */
  private wasmPasses(x: tf.Tensor4D): tf.Tensor4D | null {
    const c = x.shape[3];
    if (!enabled || x.dtype !== 'float32' || tf.getBackend() !== 'wasm' || !wasmLoopsFor(hostView(x), c)) return null;
    const [scale, shift] = this.hostScaleShift();
    const f = tf.customGrad(((xs: tf.Tensor) => ({
      value: hostTensor<tf.Rank.R4>(xs.shape, (out) => affine(hostView(xs), c, scale, shift, out)),
      gradFunc: (dy: tf.Tensor) => hostTensor<tf.Rank.R4>(dy.shape, (out) => affine(hostView(dy), c, scale, null, out)),
    })) as unknown as Parameters<typeof tf.customGrad>[0]);
    return f(x) as tf.Tensor4D;
  }

  /** scale and shift of the current buffers as host arrays (the formula's kernels run again when a buffer was replaced). */
  private hostScaleShift(): [Float32Array, Float32Array] {
    const b = this.buffers;
    const now = [b.gamma.dataId, b.beta.dataId, b.mean.dataId, b.variance.dataId];
    if (now.some((id, i) => id !== this.from[i])) {
      const [scale, shift] = scaleShift(b);
      this.scale = (scale.dataSync() as Float32Array).slice();
      this.shift = (shift.dataSync() as Float32Array).slice();
      tf.dispose([scale, shift]);
      this.from = now;
    }
    return [this.scale, this.shift];
  }
}

/**
 * out[row, k] = v[row, k] * scale[k] (+ shift[k]), each float32 operation rounded: the wasm pass, or this
 * loop where the module does not take the views (a kernel thread's heap growth can leave the main thread's
 * views on another SharedArrayBuffer object for a moment: backend-memory.ts). Double rounding is harmless
 * here: a float64 product or sum of two float32 values rounded to float32 is the float32 operation's result.
 */
function affine(v: Float32Array, c: number, scale: Float32Array, shift: Float32Array | null, out: Float32Array): void {
  const simd = wasmLoopsFor(v, c) && wasmLoopsFor(out, c);
  if (simd) {
    if (shift) simd.affine32(v, scale, shift, out);
    else simd.scale32(v, scale, out);
    return;
  }
  frozenAffineLoop(v, c, scale, shift, out);
}

/** The loop of `affine` (exported for its test): float32 products, then float32 sums with `shift`. */
export function frozenAffineLoop(v: Float32Array, c: number, scale: Float32Array, shift: Float32Array | null, out: Float32Array): void {
  for (let i = 0; i < v.length; i += c)
    for (let k = 0; k < c; k++) {
      const product = Math.fround(v[i + k]! * scale[k]!);
      out[i + k] = shift ? Math.fround(product + shift[k]!) : product;
    }
}

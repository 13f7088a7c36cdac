/**
 * Makes the tfjs wasm backend trainable for conv nets.
 *
 * wasm ships no `Conv2DBackpropFilter` (so no conv net trains on it) and a naive
 * `Conv2DBackpropInput` that was over half of a training step's time (DESIGN.md). Both are registered
 * here from `convFilterGrad` / `convInputGrad`, which use only forward Conv2D (XNNPACK), MatMul, Pad,
 * Reverse, Transpose and Slice, all of them native wasm kernels.
 *
 * A kernel may return a Tensor instead of a TensorInfo (tfjs-node's kernels do); ops run inside a
 * kernel are not recorded on the gradient tape (kernelDepth > 0), and `tf.tidy` frees intermediates.
 */
import * as tf from '@tensorflow/tfjs';
import { convFilterGrad, convInputGrad, type ConvGeometry } from './conv.ts';
import { backendModule } from './backend-memory.ts';
import { rowTileLength, type WasmHeap } from './host-memory.ts';
import { addBiasWasm, sumRowsWasm } from './channel-ops-wasm.ts';
import { registerReluGradients } from './relu-grad-wasm.ts';
import { resizeBilinearGradWasm } from './resize-grad-wasm.ts';

type Shape4 = [number, number, number, number];

/** What a kernel function receives. */
type KernelArgs = { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap };

interface BackpropAttrs {
  strides: number | [number, number];
  pad: 'valid' | 'same' | number | tf.backend_util.ExplicitPadding;
  dataFormat: 'NHWC' | 'NCHW';
  dimRoundingMode?: 'floor' | 'round' | 'ceil';
}

function geometry(xShape: Shape4, filterShape: Shape4, attrs: BackpropAttrs, kernel: string): ConvGeometry {
  if (attrs.dataFormat !== 'NHWC') throw new Error(`${kernel} (wasm): only NHWC is supported, got ${attrs.dataFormat}`);
  const info = tf.backend_util.computeConv2DInfo(
    xShape,
    filterShape,
    attrs.strides,
    1,
    attrs.pad,
    attrs.dimRoundingMode,
    false,
    'channelsLast',
  );
  const p = info.padInfo;
  return { strides: [info.strideHeight, info.strideWidth], dilations: [1, 1], pad: [p.top, p.bottom, p.left, p.right] };
}

/**
 * Wraps a kernel input as a Tensor that ops can take. The engine does not add a backend reference for
 * such a wrapper, but disposing it drops one, so take one first: the caller's tensor stays alive.
 */
function asTensor(info: tf.TensorInfo): tf.Tensor4D {
  const engine = tf.engine();
  engine.backend.incRef(info.dataId);
  return engine.makeTensorFromTensorInfo(info) as tf.Tensor4D;
}

/**
 * tfjs-wasm's Sum reduces the innermost axes only: a sum over the leading axes of NHWC ([0, 1, 2]: every
 * batch-norm statistic and bias gradient of a training step) transposes the whole tensor first, then
 * adds each channel's values in order. This adds them in the same order (row by row, one float32
 * accumulator per channel) straight from the untransposed input: the same bits, without the copy; as wasm
 * SIMD where src/ops/channel-ops-wasm.ts runs, else the JS loop below. Returns null for other sums (the
 * stock kernel runs).
 */
function sumLeadingAxes(args: KernelArgs): tf.TensorInfo | null {
  const x = args.inputs.x!;
  const { axis, keepDims } = args.attrs as unknown as { axis: number | number[]; keepDims: boolean };
  const rank = x.shape.length;
  if (x.dtype !== 'float32' || rank < 2) return null;
  const axes = tf.util.parseAxisParam(axis, x.shape).sort((a, b) => a - b);
  if (axes.length !== rank - 1 || axes.some((a, i) => a !== i)) return null;
  const channels = x.shape[rank - 1]!;
  const rows = tf.util.sizeFromShape(x.shape) / channels;
  const backend = args.backend as WasmHeap;
  const out = backend.makeOutput(keepDims ? [...x.shape.slice(0, -1).map(() => 1), channels] : [channels], 'float32');
  // views after the allocation (it may grow the heap, which detaches older views)
  const values = backend.typedArrayFromHeap(x);
  const sums = backend.typedArrayFromHeap(out) as Float32Array;
  sums.fill(0);
  if (sumRowsWasm(values as Float32Array, channels, sums)) return out;
  // the sums accumulate in the output; a float32 add done in float64 and rounded back (Math.fround) is the
  // float32 add: the stock kernel's bits. Tiles of rows (`rowTileLength`) and four channels at a time with
  // their sums in locals; each channel's values still added row by row.
  const tile = rowTileLength(channels);
  const length = rows * channels;
  for (let t0 = 0; t0 < length; t0 += tile) {
    const t1 = Math.min(length, t0 + tile);
    let c = 0;
    for (; c + 4 <= channels; c += 4) {
      let s0 = sums[c]!;
      let s1 = sums[c + 1]!;
      let s2 = sums[c + 2]!;
      let s3 = sums[c + 3]!;
      for (let k = t0 + c; k < t1; k += channels) {
        s0 = Math.fround(s0 + values[k]!);
        s1 = Math.fround(s1 + values[k + 1]!);
        s2 = Math.fround(s2 + values[k + 2]!);
        s3 = Math.fround(s3 + values[k + 3]!);
      }
      sums[c] = s0;
      sums[c + 1] = s1;
      sums[c + 2] = s2;
      sums[c + 3] = s3;
    }
    for (; c < channels; c++) {
      let s0 = sums[c]!;
      for (let k = t0 + c; k < t1; k += channels) s0 = Math.fround(s0 + values[k]!);
      sums[c] = s0;
    }
  }
  return out;
}

type MaxPoolGradWasm = (...offsetsAndGeometry: number[]) => void;

let maxPoolGradSimd = true;

/** Tests and benchmarks only: false runs maxPoolGrad's JS loop instead of its wasm SIMD (src/ops/wasm/max-pool-grad.wat). */
export function setMaxPoolGradWasm(on: boolean): void {
  maxPoolGradSimd = on;
}

/**
 * Max-pool gradient: each window's dy goes to the window's first maximum in row-major order (PyTorch's
 * choice; padding never counts), contributions to one input position added in output order. Replaces
 * tfjs-wasm's MaxPoolGrad, which is slow (3.5 ms of a 70 ms small-DeepLab step for the stem's 3x3
 * stride-2 pool of a [4,32,64,16] map; the JS loop below 1.3 ms, its SIMD 0.24), takes the last of tied
 * maxima, and is wrong where a window holds no positive value: it sends that window's gradient to the
 * window's first element whatever its value (tfjs 4.22; tested). Where maxima are unique and positive
 * the bits are the stock kernel's (tested). Ties are not rare in training: on the synthetic images' flat
 * regions neighbouring ReLU outputs are equal, so runs round differently from the stock kernel's from
 * the first steps on.
 * Channels innermost, contiguous in NHWC. The loop below as wasm SIMD on the backend's memory
 * (src/ops/wasm/max-pool-grad.wat: four channels a step, the same comparisons and float32 adds in the same
 * order, the same bits; the JS loop runs where the module is unavailable). Returns null for what it does
 * not cover (non-float32, NCHW, dilation).
 */
function maxPoolGrad(args: KernelArgs): tf.TensorInfo | null {
  const { dy, input } = args.inputs as { dy: tf.TensorInfo; input: tf.TensorInfo };
  const a = args.attrs as unknown as {
    filterSize: number | [number, number];
    strides: number | [number, number];
    pad: 'valid' | 'same' | number | tf.backend_util.ExplicitPadding;
    dimRoundingMode?: 'floor' | 'round' | 'ceil';
  };
  if (input.dtype !== 'float32' || dy.dtype !== 'float32' || input.shape.length !== 4) return null;
  const info = tf.backend_util.computePool2DInfo(input.shape as Shape4, a.filterSize, a.strides, 1, a.pad, a.dimRoundingMode);
  if (info.dataFormat !== 'channelsLast' || info.dilationHeight !== 1 || info.dilationWidth !== 1) return null;
  const { batchSize: n, inHeight: h, inWidth: w, inChannels: c, outHeight: oh, outWidth: ow } = info;
  const { strideHeight: sh, strideWidth: sw, filterHeight: fh, filterWidth: fw } = info;
  const { top, left } = info.padInfo;
  const backend = args.backend as WasmHeap;
  const out = backend.makeOutput(input.shape as number[], 'float32');
  // views after the allocation (it may grow the heap, which detaches older views)
  const x = backend.typedArrayFromHeap(input);
  const g = backend.typedArrayFromHeap(dy);
  const dx = backend.typedArrayFromHeap(out);
  const simd = maxPoolGradSimd ? (backendModule('max-pool-grad')?.exports.grad as MaxPoolGradWasm | undefined) : undefined;
  if (simd) {
    simd(x.byteOffset, g.byteOffset, dx.byteOffset, n, h, w, c, oh, ow, fh, fw, sh, sw, top, left);
    return out;
  }
  dx.fill(0);
  for (let b = 0; b < n; b++) {
    for (let i = 0; i < oh; i++) {
      const r0 = Math.max(0, i * sh - top);
      const r1 = Math.min(h, i * sh - top + fh);
      for (let j = 0; j < ow; j++) {
        const c0 = Math.max(0, j * sw - left);
        const c1 = Math.min(w, j * sw - left + fw);
        const dyBase = ((b * oh + i) * ow + j) * c;
        // four channels at a time, their maxima and positions in locals (each channel's own dx
        // elements, so the order of the additions to any one element is the windows' order)
        let k = 0;
        for (; k + 4 <= c; k += 4) {
          let m0 = -Infinity;
          let m1 = -Infinity;
          let m2 = -Infinity;
          let m3 = -Infinity;
          let a0 = -1;
          let a1 = -1;
          let a2 = -1;
          let a3 = -1;
          for (let r = r0; r < r1; r++) {
            for (let q = c0; q < c1; q++) {
              const at = ((b * h + r) * w + q) * c + k;
              const v0 = x[at]!;
              const v1 = x[at + 1]!;
              const v2 = x[at + 2]!;
              const v3 = x[at + 3]!;
              if (v0 > m0 || a0 < 0) {
                m0 = v0;
                a0 = at;
              }
              if (v1 > m1 || a1 < 0) {
                m1 = v1;
                a1 = at + 1;
              }
              if (v2 > m2 || a2 < 0) {
                m2 = v2;
                a2 = at + 2;
              }
              if (v3 > m3 || a3 < 0) {
                m3 = v3;
                a3 = at + 3;
              }
            }
          }
          if (a0 >= 0) dx[a0]! += g[dyBase + k]!;
          if (a1 >= 0) dx[a1]! += g[dyBase + k + 1]!;
          if (a2 >= 0) dx[a2]! += g[dyBase + k + 2]!;
          if (a3 >= 0) dx[a3]! += g[dyBase + k + 3]!;
        }
        for (; k < c; k++) {
          let m0 = -Infinity;
          let a0 = -1;
          for (let r = r0; r < r1; r++) {
            for (let q = c0; q < c1; q++) {
              const at = ((b * h + r) * w + q) * c + k;
              const v0 = x[at]!;
              if (v0 > m0 || a0 < 0) {
                m0 = v0;
                a0 = at;
              }
            }
          }
          if (a0 >= 0) dx[a0]! += g[dyBase + k]!;
        }
      }
    }
  }
  return out;
}

/**
 * Identity (what `clone` runs) as a second reference to the same data, as tfjs's cpu backend does it,
 * where tfjs-wasm copies: tfjs's engine clones every tensor it saves for a backward pass, 311 clones
 * (40 MB) in one small-DeepLab training step at batch 8. Safe because nothing writes into a tensor's
 * memory after the kernel that made it (tfjs kernels write their outputs; our host loops write only
 * outputs they allocate, `hostTensor`); the backend frees the data with its last reference, as for
 * Reshape. Strings keep the stock kernel.
 */
function aliasIdentity(args: KernelArgs): tf.TensorInfo | null {
  const x = args.inputs.x as tf.TensorInfo;
  if (x.dtype === 'string') return null;
  (args.backend as { incRef(dataId: tf.DataId): void }).incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
}

type StockKernel = 'Sum' | 'MaxPoolGrad' | 'Identity' | 'ResizeBilinearGrad' | 'Add';

let registered = false;
/** The stock kernels this module replaced (the tests compare against them). */
const stock = new Map<string, tf.KernelConfig>();

/** Tests only: tfjs-wasm's own kernel `name`, as it was before `registerWasmTrainingKernels` replaced it. */
export function stockWasmKernel(name: StockKernel): tf.KernelConfig | undefined {
  return stock.get(name);
}

/**
 * Registers `ours` in place of tfjs-wasm's kernel `name`, falling back to the stock kernel (kept for the
 * tests, `stockWasmKernel`) for the inputs where `ours` returns null.
 */
function overrideStock(name: StockKernel, ours: (args: KernelArgs) => tf.TensorInfo | null): void {
  const stockKernel = tf.getKernel(name, 'wasm');
  if (!stockKernel) return;
  stock.set(name, stockKernel);
  tf.unregisterKernel(name, 'wasm');
  tf.registerKernel({ ...stockKernel, kernelFunc: (args) => ours(args) ?? (stockKernel.kernelFunc(args) as tf.TensorInfo) });
}

/** Registers the conv gradient kernels for wasm. Idempotent. Call after the wasm backend is imported. */
export function registerWasmTrainingKernels(): void {
  if (registered) return;
  registered = true;
  overrideStock('Sum', sumLeadingAxes);
  overrideStock('MaxPoolGrad', maxPoolGrad);
  overrideStock('Identity', aliasIdentity);
  overrideStock('ResizeBilinearGrad', resizeBilinearGradWasm);
  overrideStock('Add', addBiasWasm);
  registerReluGradients();
  if (tf.getKernel('Conv2DBackpropInput', 'wasm')) tf.unregisterKernel('Conv2DBackpropInput', 'wasm');
  if (tf.getKernel('Conv2DBackpropFilter', 'wasm')) tf.unregisterKernel('Conv2DBackpropFilter', 'wasm');

  tf.registerKernel({
    kernelName: 'Conv2DBackpropFilter',
    backendName: 'wasm',
    kernelFunc: ({ inputs, attrs }) => {
      const a = attrs as unknown as BackpropAttrs & { filterShape: Shape4 };
      return tf.tidy(() => {
        const x = asTensor(inputs.x!);
        const dy = asTensor(inputs.dy!);
        const g = geometry(x.shape, a.filterShape, a, 'Conv2DBackpropFilter');
        return convFilterGrad(x, dy, a.filterShape, g);
      });
    },
  });

  tf.registerKernel({
    kernelName: 'Conv2DBackpropInput',
    backendName: 'wasm',
    kernelFunc: ({ inputs, attrs }) => {
      const a = attrs as unknown as BackpropAttrs & { inputShape: Shape4 };
      return tf.tidy(() => {
        const dy = asTensor(inputs.dy!);
        const filter = asTensor(inputs.filter!);
        const g = geometry(a.inputShape, filter.shape, a, 'Conv2DBackpropInput');
        return convInputGrad(dy, filter, a.inputShape, g);
      });
    },
  });
}

/**
 * 2-D convolution that trains on every tfjs backend, dilated or not.
 *
 * tfjs refuses gradients of dilated conv2d ("dilation rates greater than 1 are not yet supported in
 * gradients") and the wasm backend has no Conv2DBackpropFilter kernel at all. Both gradients of a
 * convolution are themselves convolutions (or matmuls), and a forward Conv2D is the one kernel every
 * backend has and makes fast (XNNPACK on wasm, cuDNN on tensorflow). So:
 *
 * - `convInputGrad` / `convFilterGrad` express dL/dx and dL/dW with forward conv2d, matmul, pad,
 *   reverse, transpose and slice only (on the host backends dL/dW is our own wasm kernel instead:
 *   filter-grad-kernel.ts). They are the single implementation behind both
 * - `conv2d` (dilated case: a `tf.customGrad` op whose backward calls them) and
 * - the wasm `Conv2DBackpropInput` / `Conv2DBackpropFilter` kernels (`wasm-kernels.ts`), which make the
 *   plain `tf.conv2d` gradient work (and run fast) on wasm.
 *
 * Layout is NHWC with HWIO filters. Padding is PyTorch-style explicit `[top, bottom, left, right]`:
 * tfjs 'same' pads stride-2 convs on even sizes asymmetrically (more at the bottom/right), PyTorch
 * pads both sides by the same amount, and weights imported from PyTorch only line up with the latter.
 */
import * as tf from '@tensorflow/tfjs';
import { hostTensor, hostView, onHostBackend } from './host-memory.ts';
import { kernelFilterGrad, kernelTakes } from './filter-grad-kernel.ts';

export type Pad4 = readonly [top: number, bottom: number, left: number, right: number];

export interface ConvOptions {
  /** Stride, one value or [h, w]. Default 1. */
  stride?: number | readonly [number, number];
  /** Dilation, one value or [h, w]. Default 1. */
  dilation?: number | readonly [number, number];
  /** Symmetric padding as PyTorch's `padding=p` (a number or [ph, pw]), or explicit [t, b, l, r]. Default 0. */
  pad?: number | readonly [number, number] | Pad4;
}

export interface ConvGeometry {
  strides: [number, number];
  dilations: [number, number];
  pad: Pad4;
}

function pair(v: number | readonly [number, number] | undefined, what: string): [number, number] {
  const p: [number, number] = v === undefined ? [1, 1] : typeof v === 'number' ? [v, v] : [v[0], v[1]];
  if (!p.every((n) => Number.isInteger(n) && n >= 1)) {
    throw new Error(`conv2d: ${what} must be positive integers, got ${JSON.stringify(v)}`);
  }
  return p;
}

/** Normalises ConvOptions into explicit strides, dilations and [t, b, l, r] padding. */
export function convGeometry(opts: ConvOptions = {}): ConvGeometry {
  const strides = pair(opts.stride, 'stride');
  const dilations = pair(opts.dilation, 'dilation');
  const p = opts.pad ?? 0;
  const pad: Pad4 = typeof p === 'number' ? [p, p, p, p] : p.length === 2 ? [p[0], p[0], p[1], p[1]] : [p[0], p[1], p[2], p[3]];
  if (!pad.every((n) => Number.isInteger(n) && n >= 0)) {
    throw new Error(`conv2d: pad must be non-negative integers, got ${JSON.stringify(p)}`);
  }
  if ((strides[0] > 1 || strides[1] > 1) && (dilations[0] > 1 || dilations[1] > 1)) {
    throw new Error(`conv2d: stride ${strides} with dilation ${dilations} is not supported (one of them must be 1)`);
  }
  return { strides, dilations, pad };
}

/** Output spatial size of a conv, as PyTorch computes it (floor). */
export function convOutSize(inSize: number, kernel: number, stride: number, dilation: number, padSum: number): number {
  return Math.floor((inSize + padSum - dilation * (kernel - 1) - 1) / stride) + 1;
}

function explicitPadding(pad: Pad4): [[number, number], [number, number], [number, number], [number, number]] {
  return [
    [0, 0],
    [pad[0], pad[1]],
    [pad[2], pad[3]],
    [0, 0],
  ];
}

function checkRank4(t: tf.Tensor, name: string): asserts t is tf.Tensor4D {
  if (t.rank !== 4) throw new Error(`conv2d: ${name} must be rank 4 (${name === 'filter' ? 'HWIO' : 'NHWC'}), got shape [${t.shape}]`);
}

/**
 * Convolution with PyTorch semantics (explicit symmetric padding, dilation) whose gradients exist on
 * every backend. Forward is the backend's own conv2d (dilation supported natively); for dilation 1 the
 * backward is the backend's own Conv2DBackprop* kernels (wasm's are registered by `wasm-kernels.ts`),
 * for dilation > 1 it is `convInputGrad` / `convFilterGrad`.
 */
export function conv2d(x: tf.Tensor4D, filter: tf.Tensor4D, opts: ConvOptions = {}): tf.Tensor4D {
  checkRank4(x, 'input');
  checkRank4(filter, 'filter');
  if (x.shape[3] !== filter.shape[2]) {
    throw new Error(`conv2d: input has ${x.shape[3]} channels but the filter [${filter.shape}] expects ${filter.shape[2]}`);
  }
  const g = convGeometry(opts);
  if (g.dilations[0] === 1 && g.dilations[1] === 1) {
    return tf.conv2d(x, filter, g.strides, explicitPadding(g.pad), 'NHWC', 1);
  }
  const taps = liveTaps(x.shape, filter.shape, g);
  if (taps) return trimmedAtrous(x, filter, g, taps);
  return atrous(x, filter, g);
}

/** First and last filter tap (per spatial axis) that ever touch the unpadded input. */
type TapRange = { h: [number, number]; w: [number, number] };

/**
 * With a large dilation on a small map (ASPP's dilation 24 on a 8x16 feature map), most filter taps
 * only ever see padding. Returns the taps that touch the input, or null when all do (or none do, which
 * is left to the plain path). Stride is 1 here (dilation > 1 requires it).
 */
function liveTaps(xShape: readonly number[], wShape: readonly number[], g: ConvGeometry): TapRange | null {
  const axis = (inSize: number, k: number, d: number, before: number, after: number): [number, number] | null => {
    const out = convOutSize(inSize, k, 1, d, before + after);
    let first = -1;
    let last = -1;
    for (let t = 0; t < k; t++) {
      const lo = t * d - before; // input row seen by output row 0
      if (lo <= inSize - 1 && lo + out - 1 >= 0) {
        if (first < 0) first = t;
        last = t;
      }
    }
    return first < 0 ? null : [first, last];
  };
  const h = axis(xShape[1]!, wShape[0]!, g.dilations[0], g.pad[0], g.pad[1]);
  const w = axis(xShape[2]!, wShape[1]!, g.dilations[1], g.pad[2], g.pad[3]);
  if (!h || !w) return null;
  if (h[0] === 0 && h[1] === wShape[0]! - 1 && w[0] === 0 && w[1] === wShape[1]! - 1) return null;
  return { h, w };
}

/**
 * The same convolution with the dead taps sliced off the filter (the slice's gradient pads dW back
 * with zeros) and the padding reduced by the dropped taps' reach, cropping the input where that goes
 * negative. The output is identical, the work is (live taps / all taps) of it.
 */
function trimmedAtrous(x: tf.Tensor4D, filter: tf.Tensor4D, g: ConvGeometry, taps: TapRange): tf.Tensor4D {
  const [kh, kw, cin, cout] = filter.shape;
  const [dh, dw] = g.dilations;
  const sub = filter.slice([taps.h[0], taps.w[0], 0, 0], [taps.h[1] - taps.h[0] + 1, taps.w[1] - taps.w[0] + 1, cin, cout]);
  const pads = [
    g.pad[0] - taps.h[0] * dh,
    g.pad[1] - (kh - 1 - taps.h[1]) * dh,
    g.pad[2] - taps.w[0] * dw,
    g.pad[3] - (kw - 1 - taps.w[1]) * dw,
  ];
  const [ct, cb, cl, cr] = pads.map((p) => Math.max(0, -p)) as [number, number, number, number];
  const cropped = ct + cb + cl + cr > 0 ? x.slice([0, ct, cl, 0], [x.shape[0], x.shape[1] - ct - cb, x.shape[2] - cl - cr, cin]) : x;
  const pad = pads.map((p) => Math.max(0, p)) as [number, number, number, number];
  return atrous(cropped, sub, { ...g, pad });
}

/** Dilated conv as a custom op: forward by the backend, backward by convInputGrad/convFilterGrad. */
function atrous(x: tf.Tensor4D, filter: tf.Tensor4D, g: ConvGeometry): tf.Tensor4D {
  const pad = explicitPadding(g.pad);
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [xx, ww, save] = args as [tf.Tensor4D, tf.Tensor4D, tf.GradSaveFunc];
    save([xx, ww]);
    return {
      value: tf.conv2d(xx, ww, g.strides, pad, 'NHWC', g.dilations),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [sx, sw] = saved as [tf.Tensor4D, tf.Tensor4D];
        return [convInputGrad(dy as tf.Tensor4D, sw, sx.shape, g), convFilterGrad(sx, dy as tf.Tensor4D, sw.shape, g)];
      },
    };
  });
  return op(x, filter) as tf.Tensor4D;
}

/**
 * dL/dx of a conv: insert (stride - 1) zeros between the rows/columns of dy, then correlate with the
 * spatially flipped filter (in/out channels swapped) at the same dilation. Crops/pads so that the
 * result has exactly `inputShape`.
 */
export function convInputGrad(
  dy: tf.Tensor4D,
  filter: tf.Tensor4D,
  inputShape: readonly [number, number, number, number],
  g: ConvGeometry,
): tf.Tensor4D {
  return tf.tidy(() => {
    const [n, h, w] = inputShape;
    const [kh, kw, , cout] = filter.shape;
    const [sh, sw] = g.strides;
    const [dh, dw] = g.dilations;
    const [pt, , pl] = g.pad;
    const unpadded = g.pad.every((p) => p === 0);
    if (kh === 1 && kw === 1 && sh === 1 && sw === 1 && unpadded) {
      // A 1x1 conv by the transposed filter. (tfjs-wasm's matMul with transposeB is ~6x slower.)
      return tf.conv2d(dy, filter.transpose([0, 1, 3, 2]) as tf.Tensor4D, 1, 'valid');
    }
    if (matmulColumns && onHostBackend() && takesMatmul(dy.shape, filter.shape)) return matmulInputGrad(dy, filter, inputShape, g);
    if (sh > 1 && sh === sw && dh === 1 && dw === 1) {
      // a kernel that is not a multiple of the stride leaves some phases fewer taps (zeros in the stacked filter)
      const uneven = kh % sh !== 0 || kw % sw !== 0;
      return uneven && hostShuffle && onHostBackend()
        ? phaseInputGrad(dy, filter, inputShape, g)
        : stridedInputGrad(dy, filter, inputShape, g);
    }
    const [, ho, wo] = dy.shape;
    let up: tf.Tensor4D = dy;
    if (sh > 1 || sw > 1) {
      const six = dy.reshape([n, ho, 1, wo, 1, cout]);
      const spread = tf.pad(six, [
        [0, 0],
        [0, 0],
        [0, sh - 1],
        [0, 0],
        [0, sw - 1],
        [0, 0],
      ]);
      up = spread.reshape([n, ho * sh, wo * sw, cout]);
    }
    // dx[i] = sum_k up[i + pt - k*d] * W[k]; with k' = K-1-k this is a correlation of `up`, shifted by
    // P = (K-1)*d - pt, with the flipped filter. Pad (or crop) `up` to length H + (K-1)*d.
    const top = (kh - 1) * dh - pt;
    const left = (kw - 1) * dw - pl;
    const bottom = h + (kh - 1) * dh - top - ho * sh;
    const right = w + (kw - 1) * dw - left - wo * sw;
    // crop where negative; the positive amounts are the conv's own padding (no Pad op, same sums)
    up = cropOrPad(up, Math.min(top, 0), Math.min(bottom, 0), Math.min(left, 0), Math.min(right, 0));
    const pad: Pad4 = [Math.max(top, 0), Math.max(bottom, 0), Math.max(left, 0), Math.max(right, 0)];
    return tf.conv2d(up, flipTaps(filter), 1, explicitPadding(pad), 'NHWC', [dh, dw]);
  });
}

let hostShuffle = true;
let filterKernel = true;
let matmulColumns = true;

/** Tests only: false keeps `convInputGrad` on its convolutions where `matmulInputGrad` would take the call. */
export function setMatmulInputGrad(enabled: boolean): void {
  matmulColumns = enabled;
}

/**
 * Whether `matmulInputGrad` takes an input gradient on the host backends: a filter wider than 1x1 on a
 * map of at most three times as many output pixels (all images) as the filter has output channels. Small
 * maps under wide filters are where the convolutions lose: the filter is rearranged and packed anew on
 * every call (it is the gradient's "input" there), and a stacked strided filter computes rows no phase
 * keeps. Measured on wasm, one thread (ms, convolutions / matmul; pixels / output channels): the paper's
 * discriminator's conv4 (4x4 stride 2, 256 -> 512 on 8x16, batch 4; 0.25) 70 / 20, its conv3 on the
 * target (1) 30 / 25 and on the source (2.25) 48-54 / 30-42, the preset's conv4 (64 -> 128; 1) 3.6 / 1.6;
 * a 3x3 512 -> 512 on 4x8 (0.25) 54.7 / 23.1; at 4 about even (a 3x3 128 -> 128 on 4 x 8x16: 8.0-9.7 /
 * 8.0-8.1, a 3x3 stride 2 64 -> 128: 4.8 / 4.3); past it the convolutions win: a 3x3 128 -> 128 on 8 x
 * 8x16 (8) 11.4 / 12.9, the discriminator's conv2 (16) 23 / 27, a 3x3 64 -> 64 on 4 x 16x32 (32) 5.7 / 9.6.
 * At two kernel threads (the pool splits both): conv4 65 / 14, conv3 24-29 / 17-18, at 4 and 16 even.
 */
function takesMatmul(dyShape: readonly number[], filterShape: readonly number[]): boolean {
  const [n, ho, wo] = dyShape as [number, number, number, number];
  const [kh, kw, , cout] = filterShape as [number, number, number, number];
  return (kh > 1 || kw > 1) && n * ho * wo <= 3 * cout;
}

/**
 * dL/dx of a conv (any stride, dilation, padding) as one matmul and a scatter: the columns
 * C[(i, j, ci), p] = sum over co of W[i, j, ci, co] * dy[p, co] (the filter as it lies, [kh*kw*cin, cout],
 * times dy transposed, [cout, n*ho*wo]: no filter rearranged, only dy's few pixels packed), then each
 * output pixel p = (b, oy, ox) adds its column of tap (i, j) into dx[b, oy*sh + i*dh - top, ox*sw + j*dw -
 * left] where that lies inside x (padding drops the rest). Each element of dx is a float32 sum over the
 * taps in the order (i, j) of matmul sums over the output channels: other roundings than the
 * convolutions' (one sum over taps and channels), the same at every thread count. Host backends only.
 */
function matmulInputGrad(
  dy: tf.Tensor4D,
  filter: tf.Tensor4D,
  [n, h, w, cin]: readonly [number, number, number, number],
  g: ConvGeometry,
): tf.Tensor4D {
  return tf.tidy(() => {
    const [kh, kw, , cout] = filter.shape;
    const [, ho, wo] = dy.shape;
    const pixels = n * ho * wo;
    const [sh, sw] = g.strides;
    const [dh, dw] = g.dilations;
    const [pt, , pl] = g.pad;
    const columns = tf.matMul(filter.reshape([kh * kw * cin, cout]), dy.reshape([pixels, cout]).transpose());
    return hostTensor<tf.Rank.R4>([n, h, w, cin], (dx) => {
      dx.fill(0);
      const c = hostView(columns);
      for (let i = 0; i < kh; i++) {
        for (let j = 0; j < kw; j++) {
          const tap = (i * kw + j) * cin * pixels;
          for (let b = 0; b < n; b++) {
            for (let oy = 0; oy < ho; oy++) {
              const y = oy * sh + i * dh - pt;
              if (y < 0 || y >= h) continue;
              for (let ox = 0; ox < wo; ox++) {
                const x = ox * sw + j * dw - pl;
                if (x < 0 || x >= w) continue;
                const p = (b * ho + oy) * wo + ox;
                const at = ((b * h + y) * w + x) * cin;
                // the float32 sum: the double sum of two float32s rounded to float32 by the store
                for (let ci = 0; ci < cin; ci++) dx[at + ci] = dx[at + ci]! + c[tap + ci * pixels + p]!;
              }
            }
          }
        }
      }
    });
  });
}

/** Tests only: false makes `convFilterGrad` use tensor ops on the host backends too, not our wasm kernel. */
export function setFilterGradKernel(enabled: boolean): void {
  filterKernel = enabled;
}

/** Tests only: false forces the device-side (GPU) filter shuffles and 1x1 filter-gradient rows on every backend. */
export function setHostFilterShuffle(enabled: boolean): void {
  hostShuffle = enabled;
}

/**
 * Builds a rearranged filter [oh, ow, cout, groups * cin] (in/out channels swapped) whose tap (u, v),
 * channel group g, is the source tap `source(u, v, g)` of `filter` [kh, kw, cin, cout], or zeros.
 * On wasm and cpu the weights live in host memory: the shuffle is a plain loop there (tfjs-wasm's
 * Reverse, Gather, StridedSlice and Slice run 10-30x slower than a loop on filter-sized tensors).
 * Elsewhere (GPU) it is built from tensor ops on the device.
 */
function rearrangeTaps(
  filter: tf.Tensor4D,
  oh: number,
  ow: number,
  groups: number,
  source: (u: number, v: number, g: number) => [number, number] | null,
): tf.Tensor4D {
  const [kh, kw, cin, cout] = filter.shape;
  if (hostShuffle && onHostBackend()) {
    const src = filter.dataSync();
    const out = new Float32Array(oh * ow * cout * groups * cin);
    const rowOut = groups * cin;
    for (let u = 0; u < oh; u++) {
      for (let v = 0; v < ow; v++) {
        for (let g = 0; g < groups; g++) {
          const tap = source(u, v, g);
          if (!tap || tap[0] >= kh || tap[1] >= kw) continue;
          const sBase = (tap[0] * kw + tap[1]) * cin * cout;
          const oBase = (u * ow + v) * cout * rowOut + g * cin;
          for (let c = 0; c < cin; c++) {
            const sRow = sBase + c * cout;
            for (let o = 0; o < cout; o++) out[oBase + o * rowOut + c] = src[sRow + o]!;
          }
        }
      }
    }
    return tf.tensor4d(out, [oh, ow, cout, groups * cin]);
  }
  const rows = filter.transpose([0, 1, 3, 2]).reshape([kh * kw, cout, cin]);
  const zeros = tf.zeros([1, cout, cin]);
  const taps: tf.Tensor[] = [];
  for (let u = 0; u < oh; u++) {
    for (let v = 0; v < ow; v++) {
      const parts: tf.Tensor[] = [];
      for (let g = 0; g < groups; g++) {
        const tap = source(u, v, g);
        parts.push(tap && tap[0] < kh && tap[1] < kw ? rows.slice([tap[0] * kw + tap[1], 0, 0], [1, cout, cin]) : zeros);
      }
      taps.push(tf.concat(parts, 2));
    }
  }
  return tf.concat(taps, 0).reshape([oh, ow, cout, groups * cin]);
}

/** The filter with both spatial axes reversed and in/out channels swapped: [kh, kw, cout, cin]. */
function flipTaps(filter: tf.Tensor4D): tf.Tensor4D {
  const [kh, kw] = filter.shape;
  return rearrangeTaps(filter, kh, kw, 1, (u, v) => [kh - 1 - u, kw - 1 - v]);
}

/**
 * dL/dx of a stride-s conv (dilation 1) without zero-stuffing: input position i' = s*q + r (padded
 * coordinates) only receives the taps k = r + s*t, so each of the s*s phases (r_h, r_w) is a stride-1
 * correlation of dy with its sub-filter. All phases run as ONE conv whose output channels stack them,
 * then depth-to-space interleaves them. Same flops as the gradient itself, not s*s times more.
 */
function stridedInputGrad(
  dy: tf.Tensor4D,
  filter: tf.Tensor4D,
  inputShape: readonly [number, number, number, number],
  g: ConvGeometry,
): tf.Tensor4D {
  const [n, h, w, cin] = inputShape;
  const [kh, kw] = filter.shape;
  const s = g.strides[0];
  const th = Math.ceil(kh / s);
  const tw = Math.ceil(kw / s);
  // Tap (u_h, u_w) of phase (r_h, r_w) is W[r_h + s*(T_h-1-u_h), r_w + s*(T_w-1-u_w)] (flipped over t),
  // zero past the kernel; phases stack along the output channels in depth-to-space order.
  const sub = rearrangeTaps(filter, th, tw, s * s, (uh, uw, phase) => [
    Math.floor(phase / s) + s * (th - 1 - uh),
    (phase % s) + s * (tw - 1 - uw),
  ]);
  // out_r[q] = sum_t dy[q - t] F_r[t]: a correlation of dy padded by T-1 (the conv's own padding) with F_r flipped over t.
  const stacked = tf.conv2d(dy, sub, 1, explicitPadding([th - 1, th - 1, tw - 1, tw - 1]), 'NHWC'); // [n, Q, Qw, s*s*cin]
  const [, q, qw] = stacked.shape;
  const [pt, , pl] = g.pad;
  if (hostShuffle && onHostBackend()) {
    // depth-to-space and the crop in one pass over host memory (on the discriminator's first two 4x4
    // stride-2 input gradients tfjs-wasm's Transpose + Slice took 0.5-0.6x the time of the conv before them)
    return interleavePhases([n, h, w, cin], s, pt, pl, q, qw, (phase) => ({
      from: hostView(stacked),
      channels: s * s * cin,
      offset: phase * cin,
    }));
  }
  // depth-to-space as reshape + transpose: [n, Q, Qw, s, s, cin] -> [n, Q, s, Qw, s, cin] (tfjs-wasm's
  // DepthToSpace kernel ran ~18x slower than this on a D-sized map, 4x64x128x19)
  const full = stacked
    .reshape([n, q, qw, s, s, cin])
    .transpose([0, 1, 3, 2, 4, 5])
    .reshape([n, s * q, s * qw, cin]) as tf.Tensor4D; // padded coordinates
  // dx[i] = full[i + pt]; positions past the end were never touched by dy (zeros).
  return cropOrPad(full, -pt, h + pt - s * q, -pl, w + pl - s * qw).reshape([n, h, w, cin]);
}

/**
 * `stridedInputGrad` with one conv per phase, each by its own taps only, the phases interleaved (and
 * cropped to x) by a loop over host memory (wasm, cpu). When the kernel is not a multiple of the stride
 * the stacked filter is mostly zeros (3x3 stride 2: 16 taps for 9, 1x1 stride 2: 4 for 1), and its conv
 * pays for them: this one took 0.63-0.66x of its time on the plain net's 3x3 stride-2 layers and 0.42x on
 * a 1x1 stride-2 one (8 images, wasm). A kernel that is a multiple (the discriminator's 4x4 stride 2)
 * stays stacked, where one conv beats four. The same sums, in the same order: the stacked conv's extra
 * terms are exact zeros, so the bits are the same (test/ops/conv.test.ts).
 */
function phaseInputGrad(
  dy: tf.Tensor4D,
  filter: tf.Tensor4D,
  inputShape: readonly [number, number, number, number],
  g: ConvGeometry,
): tf.Tensor4D {
  const [n, h, w, cin] = inputShape;
  const [kh, kw] = filter.shape;
  const s = g.strides[0];
  const [pt, , pl] = g.pad;
  const [, ho, wo] = dy.shape;
  // phase r of an axis gets the taps k = r + s*t, t < taps(r); its output covers padded positions s*m + r, m < Q
  const taps = (k: number, r: number) => Math.ceil((k - r) / s);
  const q = ho + taps(kh, 0) - 1;
  const qw = wo + taps(kw, 0) - 1;
  const phases: (tf.Tensor4D | null)[] = [];
  for (let rh = 0; rh < s; rh++) {
    for (let rw = 0; rw < s; rw++) {
      const th = taps(kh, rh);
      const tw = taps(kw, rw);
      if (th <= 0 || tw <= 0) {
        phases.push(null); // no tap reaches this phase: its positions get zeros
        continue;
      }
      // out[m] = sum_u dy[m - (T-1) + u] W[r + s*(T-1-u)]: dy padded by T-1 before (and to Q after), the taps flipped
      const sub = rearrangeTaps(filter, th, tw, 1, (u, v) => [rh + s * (th - 1 - u), rw + s * (tw - 1 - v)]);
      const pad: Pad4 = [th - 1, q - ho, tw - 1, qw - wo];
      phases.push(tf.conv2d(dy, sub, 1, explicitPadding(pad), 'NHWC'));
    }
  }
  return interleavePhases([n, h, w, cin], s, pt, pl, q, qw, (phase) => {
    const t = phases[phase];
    return t ? { from: hostView(t), channels: cin, offset: 0 } : null;
  });
}

/** Where phase `p`'s values lie: pixel (b, m, mw) of a [n, Q, Qw, channels] map, its cin values from `offset`. */
type PhaseSource = { from: Float32Array; channels: number; offset: number } | null;

/**
 * dx [n, h, w, cin] of a stride-s input gradient computed phase by phase (host backends): dx[i] (padded
 * coordinate i + pt) is phase (i + pt) mod s at row (i + pt) div s, the same for columns; a phase without
 * taps (null) or a row past Q (never touched by dy) gives zeros. Phase p = r_h * s + r_w (depth-to-space
 * order). `phase` is called inside the output's fill: the views it returns are taken after the allocation.
 */
function interleavePhases(
  [n, h, w, cin]: readonly [number, number, number, number],
  s: number,
  pt: number,
  pl: number,
  q: number,
  qw: number,
  phase: (p: number) => PhaseSource,
): tf.Tensor4D {
  return hostTensor<tf.Rank.R4>([n, h, w, cin], (dx) => {
    const sources = Array.from({ length: s * s }, (_, p) => phase(p));
    for (let b = 0; b < n; b++) {
      for (let i = 0; i < h; i++) {
        const rh = (i + pt) % s;
        const m = (i + pt - rh) / s;
        for (let j = 0; j < w; j++) {
          const rw = (j + pl) % s;
          const mw = (j + pl - rw) / s;
          const src = sources[rh * s + rw];
          const at = ((b * h + i) * w + j) * cin;
          if (!src || m >= q || mw >= qw) {
            dx.fill(0, at, at + cin);
            continue;
          }
          const start = ((b * q + m) * qw + mw) * src.channels + src.offset;
          dx.set(src.from.subarray(start, start + cin), at);
        }
      }
    }
  });
}

/**
 * dL/dW of a conv. On the host backends our wasm kernel (filter-grad-kernel.ts: one pass over x and dy,
 * copied into its memory; up to 1 GiB of them). Otherwise: a 1x1 conv is xᵀ·dy (after striding x); any other is a forward conv of the padded
 * input, with batch and channels swapped, by dy used as the filter: the roles of stride and dilation
 * swap too (stride of the dW conv = dilation of the conv, dilation of the dW conv = its stride).
 */
export function convFilterGrad(
  x: tf.Tensor4D,
  dy: tf.Tensor4D,
  filterShape: readonly [number, number, number, number],
  g: ConvGeometry,
): tf.Tensor4D {
  return tf.tidy(() => {
    const [kh, kw, cin, cout] = filterShape;
    const [, ho, wo] = dy.shape;
    const [sh, sw] = g.strides;
    const [dh, dw] = g.dilations;
    const unpadded = g.pad.every((p) => p === 0);
    if (filterKernel && onHostBackend() && kernelTakes(cin, cout, x.size + dy.size)) return kernelFilterGrad(x, dy, filterShape, g);
    if (kh === 1 && kw === 1 && unpadded) {
      if (hostShuffle && onHostBackend()) {
        const out = tf.matMul(stridedRowsTransposed(x, sh, sw, ho, wo), dy.reshape([-1, cout]));
        return out.reshape([1, 1, cin, cout]);
      }
      let xs: tf.Tensor4D = x;
      if (sh > 1 || sw > 1) {
        xs = tf.stridedSlice(x, [0, 0, 0, 0], [x.shape[0], (ho - 1) * sh + 1, (wo - 1) * sw + 1, cin], [1, sh, sw, 1]) as tf.Tensor4D;
      }
      // Explicit transpose: tfjs-wasm's matMul with transposeA is ~4x slower than transpose + matMul.
      const out = tf.matMul(xs.reshape([-1, cin]).transpose(), dy.reshape([-1, cout]));
      return out.reshape([1, 1, cin, cout]);
    }
    // The padding is the conv's own (explicit), not a Pad op: tfjs-wasm's PadV2 on this layout (N, often
    // 1-4, as the innermost axis) cost as much as the conv itself; the sums are the same, bit for bit.
    const xT = x.transpose([3, 1, 2, 0]) as tf.Tensor4D; // [Cin, H, W, N]
    const dyT = dy.transpose([1, 2, 0, 3]) as tf.Tensor4D; // [Ho, Wo, N, Cout] used as HWIO filter
    const r = tf.conv2d(xT, dyT, [dh, dw], explicitPadding(g.pad), 'NHWC', [sh, sw]); // [Cin, >=KH, >=KW, Cout]
    const exact = r.shape[1] === kh && r.shape[2] === kw ? r : r.slice([0, 0, 0, 0], [cin, kh, kw, cout]);
    return exact.transpose([1, 2, 0, 3]) as tf.Tensor4D;
  });
}

/**
 * [cin, n * ho * wo]: the pixels a 1x1 conv of stride (sh, sw) reads from x [n, h, w, cin], one row per
 * channel, as one loop over host memory (wasm, cpu). The tensor ops for it (strided slice, transpose)
 * took ~4 ms of a small-DeepLab step on wasm; the values are the same. The pixels go in blocks of
 * `TRANSPOSE_BLOCK`: each channel's row gets a block's values as one contiguous run, and the block's
 * source pixels stay in cache across the channels (one pixel per output element, column by column, was
 * 2.5-3.7x slower: every write touched another cache line).
 */
function stridedRowsTransposed(x: tf.Tensor4D, sh: number, sw: number, ho: number, wo: number): tf.Tensor2D {
  const [n, h, w, cin] = x.shape;
  const rows = n * ho * wo;
  const bases = new Int32Array(rows);
  let p = 0;
  for (let b = 0; b < n; b++)
    for (let i = 0; i < ho; i++) for (let j = 0; j < wo; j++, p++) bases[p] = ((b * h + i * sh) * w + j * sw) * cin;
  return hostTensor<tf.Rank.R2>([cin, rows], (out) => {
    const src = hostView(x);
    for (let p0 = 0; p0 < rows; p0 += TRANSPOSE_BLOCK) {
      const p1 = Math.min(rows, p0 + TRANSPOSE_BLOCK);
      for (let c = 0; c < cin; c++) {
        const row = c * rows;
        for (let q = p0; q < p1; q++) out[row + q] = src[bases[q]! + c]!;
      }
    }
  });
}

/** Pixels per block of `stridedRowsTransposed` (8-64 measured alike; 32 x 4 bytes: two cache lines a row). */
const TRANSPOSE_BLOCK = 32;

/** Pads (positive) or crops (negative) the two spatial axes of an NHWC tensor. */
function cropOrPad(t: tf.Tensor4D, top: number, bottom: number, left: number, right: number): tf.Tensor4D {
  const [n, h, w, c] = t.shape;
  const ct = Math.max(0, -top);
  const cb = Math.max(0, -bottom);
  const cl = Math.max(0, -left);
  const cr = Math.max(0, -right);
  let out = t;
  if (ct + cb + cl + cr > 0) out = t.slice([0, ct, cl, 0], [n, h - ct - cb, w - cl - cr, c]);
  const pt = Math.max(0, top);
  const pb = Math.max(0, bottom);
  const pl = Math.max(0, left);
  const pr = Math.max(0, right);
  if (pt + pb + pl + pr > 0)
    out = tf.pad(out, [
      [0, 0],
      [pt, pb],
      [pl, pr],
      [0, 0],
    ]);
  return out;
}

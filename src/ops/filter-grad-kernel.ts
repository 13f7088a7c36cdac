/**
 * dL/dW of a 2-D convolution as one pass over the input and the output gradient in NHWC, on the host
 * backends (wasm, cpu): our own wasm SIMD kernel (src/ops/wasm/filter-grad.wat), no transposes (x and dy
 * are copied into its memory, their channels padded with zeros to its 4-in, 8-out register tile). The
 * stock path (`convFilterGrad`'s forward conv with the batch as channels) transposes x and dy, and
 * tfjs-wasm's Conv2D transposes and packs its "filter", the whole [Ho, Wo, N, Cout] gradient, again on
 * every call: ~17 ms of a plain-net step on one core, and its convolution itself runs memory-bound.
 *
 * For every tap (i, j) and image b one call adds dW[i][j][ci][co] += x[b, y*sh + i*dh - top, xo*sw + j*dw
 * - left, ci] * dy[b, y, xo, co] over the output pixels (y, xo) whose input pixel for that tap lies inside
 * the image (padding contributes zeros: those pixels are left out, a rectangle of rows and columns). Every
 * element of dW is a float32 sum in the order (b, y, xo): the same bits on every run, thread count and
 * machine (separate multiply and add: no fused multiply-add).
 */
import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs';
import type { ConvGeometry } from './conv.ts';
import { hostTensor, hostView } from './host-memory.ts';

/** What this file uses of the WebAssembly global (not in the project's ES-only `lib`). */
interface WasmMemory {
  readonly buffer: ArrayBuffer;
  grow(pages: number): number;
}
interface WasmApi {
  Memory: new (d: { initial: number }) => WasmMemory;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (m: object, imports: object) => { exports: Record<string, unknown> };
}
const wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

interface Kernel {
  run(
    x: number,
    dy: number,
    out: number,
    count: number,
    xstride: number,
    cn: number,
    on: number,
    cout: number,
    rows: number,
    xrow: number,
    dyrow: number,
  ): void;
  memory: WasmMemory;
}

const PAGE = 65_536;
/**
 * A call covers at most CHANNELS input x CHANNELS output channels (a 64-byte line of x and of dy per
 * pixel) and PIXELS output pixels: its x and dy data, ~2-4 lines a pixel, stay in the first-level cache
 * while the kernel walks them once per register tile.
 */
const CHANNELS = 16;
const PIXELS = 192;
let kernel: Kernel | null = null;

/** The module, instantiated once per thread with a memory of its own. */
function instance(): Kernel {
  if (!kernel) {
    const bytes = readFileSync(new URL('./wasm/filter-grad.wasm', import.meta.url));
    const memory = new wasm.Memory({ initial: 16 });
    const { exports } = new wasm.Instance(new wasm.Module(bytes), { env: { memory } });
    kernel = { run: exports.run as Kernel['run'], memory };
  }
  return kernel;
}

/** Most floats of x and dy together the kernel copies into its memory (1 GiB; a wasm memory ends at 4). */
const MAX_FLOATS = 2 ** 28;

/** `c` rounded up to a multiple of `m`. */
const roundUp = (c: number, m: number) => Math.ceil(c / m) * m;

/**
 * Whether the kernel takes a layer whose x and dy hold `floats` together (its own memory holds a copy of
 * both, their channels padded to its register tile's 4 in and 8 out).
 */
export function kernelTakes(cin: number, cout: number, floats: number): boolean {
  return floats * Math.max(roundUp(cin, 4) / cin, roundUp(cout, 8) / cout) <= MAX_FLOATS;
}

/**
 * `src` ([pixels, c] float32) into `dst` from `at` as [pixels, cp] (cp >= c), the extra channels zero.
 */
function copyPadded(dst: Float32Array, at: number, src: Float32Array, c: number, cp: number): void {
  if (cp === c) {
    dst.set(src, at);
    return;
  }
  const pixels = src.length / c;
  for (let p = 0; p < pixels; p++) {
    const from = p * c;
    const to = at + p * cp;
    for (let k = 0; k < c; k++) dst[to + k] = src[from + k]!;
    dst.fill(0, to + c, to + cp);
  }
}

/**
 * dL/dW [kh, kw, cin, cout] of the convolution of x [n, h, w, cin] with geometry `g` whose output gradient
 * is dy [n, ho, wo, cout]. Host backends. Channel counts that are not multiples of 4 (in) and 8 (out) are
 * padded with zeros in the kernel's copies (the padded channels' sums are dropped; the others' are the same).
 */
export function kernelFilterGrad(
  x: tf.Tensor4D,
  dy: tf.Tensor4D,
  filterShape: readonly [number, number, number, number],
  g: ConvGeometry,
): tf.Tensor4D {
  const [n, h, w, c] = x.shape;
  const [, ho, wo, o] = dy.shape;
  const [kh, kw] = filterShape;
  const [cin, cout] = [roundUp(c, 4), roundUp(o, 8)];
  const [sh, sw] = g.strides;
  const [dh, dw] = g.dilations;
  const [top, , left] = g.pad;
  const k = instance();
  const xSize = n * h * w * cin;
  const dySize = n * ho * wo * cout;
  const size = kh * kw * cin * cout;
  const need = (xSize + dySize + size) * 4;
  if (k.memory.buffer.byteLength < need) k.memory.grow(Math.ceil((need - k.memory.buffer.byteLength) / PAGE));
  const f = new Float32Array(k.memory.buffer);
  const [atX, atDy, atOut] = [0, xSize, xSize + dySize];
  copyPadded(f, atX, hostView(x), c, cin);
  copyPadded(f, atDy, hostView(dy), o, cout);
  f.fill(0, atOut, atOut + size);
  for (let i = 0; i < kh; i++) {
    // the output rows whose input row for tap row i lies inside the image: y * sh + i * dh - top in [0, h)
    const rowShift = i * dh - top;
    const y0 = Math.max(0, Math.ceil(-rowShift / sh));
    const y1 = Math.min(ho, Math.floor((h - 1 - rowShift) / sh) + 1);
    if (y1 <= y0) continue;
    for (let j = 0; j < kw; j++) {
      // likewise the output columns for tap column j: xo * sw + j * dw - left in [0, w)
      const colShift = j * dw - left;
      const x0 = Math.max(0, Math.ceil(-colShift / sw));
      const x1 = Math.min(wo, Math.floor((w - 1 - colShift) / sw) + 1);
      if (x1 <= x0) continue;
      const length = x1 - x0;
      const slab = atOut + (i * kw + j) * cin * cout;
      for (let b = 0; b < n; b++) {
        for (let c0 = 0; c0 < cin; c0 += CHANNELS) {
          const cn = Math.min(CHANNELS, cin - c0);
          for (let o0 = 0; o0 < cout; o0 += CHANNELS) {
            const on = Math.min(CHANNELS, cout - o0);
            const out = (slab + c0 * cout + o0) * 4;
            const xAt = (y: number, xo: number) => (atX + ((b * h + y * sh + rowShift) * w + xo * sw + colShift) * cin + c0) * 4;
            const dyAt = (y: number, xo: number) => (atDy + ((b * ho + y) * wo + xo) * cout + o0) * 4;
            if (length >= PIXELS) {
              // long rows: each in pieces of PIXELS
              for (let y = y0; y < y1; y++)
                for (let xo = x0; xo < x1; xo += PIXELS)
                  k.run(xAt(y, xo), dyAt(y, xo), out, Math.min(PIXELS, x1 - xo), sw * cin * 4, cn, on, cout, 1, 0, 0);
            } else {
              // short rows: as many whole rows a call as make at most PIXELS
              const rows = Math.floor(PIXELS / length);
              for (let y = y0; y < y1; y += rows)
                k.run(
                  xAt(y, x0),
                  dyAt(y, x0),
                  out,
                  length,
                  sw * cin * 4,
                  cn,
                  on,
                  cout,
                  Math.min(rows, y1 - y),
                  sh * w * cin * 4,
                  wo * cout * 4,
                );
            }
          }
        }
      }
    }
  }
  return hostTensor<tf.Rank.R4>([kh, kw, c, o], (out) => {
    if (c === cin && o === cout) {
      out.set(f.subarray(atOut, atOut + size));
      return;
    }
    // drop the padded channels' rows (input) and columns (output)
    for (let r = 0; r < kh * kw * c; r++) {
      const from = atOut + (Math.floor(r / c) * cin + (r % c)) * cout;
      out.set(f.subarray(from, from + o), r * o);
    }
  });
}

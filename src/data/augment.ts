/**
 * Augmentation kernels of the training transforms (REFERENCE 6.3), on interleaved RGB uint8 images
 * (HWC, 3 channels) and uint8 label maps (train IDs, 255 = ignore). They run inside decode workers, so
 * there is no tfjs here: plain loops over typed arrays, every output buffer can be passed in, and the
 * composed `augmentSample` keeps its intermediates in per-thread scratch buffers that grow once and are
 * reused (nothing is allocated per sample in the steady state, apart from a few small coefficient tables).
 *
 * Fidelity target is the authors' PIL/torchvision path, reproduced integer-for-integer:
 * - image resizing = PIL `Image.resize(..., BICUBIC)` (`ImagingResample`: a = -0.5 kernel, support
 *   widened by the scale factor when downscaling, 22-bit fixed-point weights, horizontal pass first
 *   into a uint8 intermediate, then vertical);
 * - label resizing = PIL NEAREST (`ImagingScaleAffine`: pixel-centre sampling with PIL's accumulated
 *   source coordinate);
 * - ColorJitter = torchvision on a PIL image: `ImageEnhance.Brightness/Contrast/Color` (`Image.blend`
 *   in float32, truncated to uint8) and `adjust_hue` (PIL's 8-bit HSV, H shifted by
 *   int(hue * 255) modulo 256);
 * - RandomScale / RandomCrop / RandomHorizontalFlip = SPCL's `core/datasets/transform.py`.
 * The tests compare resizing and jitter with PIL byte-for-byte when python3-pil is installed.
 *
 * Every random draw comes from the `Rng` that is passed in, in the order the reference transforms
 * draw them (jitter order and factors, scale, crop y then x, flip), so a seed fixes the output.
 *
 * `augmentSample` does not jitter the whole image: it computes contrast's whole-image mean exactly (a
 * luma-only pass through the ops drawn before contrast), then jitters only the source pixels the crop
 * window's resize reads, row by row inside the resize (see "ColorJitter compiled for the pixels a crop
 * reads"). The output is byte-identical to jittering the whole image first (`applyColorJitter`), which
 * stays as the reference the tests compare with.
 */
import type { Rng } from './rng.ts';
import { IGNORE } from './labels.ts';

// ---------------------------------------------------------------------------------------------------
// Resizing

/** PIL's fixed-point precision for 8-bit resampling (`PRECISION_BITS = 32 - 8 - 2`). */
const PRECISION_BITS = 22;
const HALF = 1 << (PRECISION_BITS - 1);
/** Sums at or above this clip to 255 (`clip8`). */
const CLIP_HIGH = 256 << PRECISION_BITS;

/** PIL's bicubic kernel (Keys, a = -0.5), support 2. */
function bicubicKernel(x: number): number {
  const a = -0.5;
  if (x < 0) x = -x;
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

interface Coefficients {
  /** Per output index: first source index, number of taps. */
  bounds: Int32Array;
  /** Per output index: `ksize` fixed-point weights (unused taps are 0). */
  weights: Int32Array;
  ksize: number;
}

/**
 * PIL's `precompute_coeffs` + `normalize_coeffs_8bpc` for the output indices first..first+count-1 of a
 * full resize inSize -> outSize (a window of the full resize is bit-identical to resizing and cropping).
 */
function coefficients(inSize: number, outSize: number, first: number, count: number): Coefficients {
  const scale = inSize / outSize;
  const filterscale = scale < 1 ? 1 : scale;
  const support = 2 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const ss = 1 / filterscale;
  const bounds = new Int32Array(count * 2);
  const weights = new Int32Array(count * ksize);
  const k = new Float64Array(ksize);
  for (let i = 0; i < count; i++) {
    const xx = first + i;
    const center = (xx + 0.5) * scale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const w = bicubicKernel((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    const base = i * ksize;
    for (let x = 0; x < xmax; x++) {
      const w = ww !== 0 ? k[x]! / ww : k[x]!;
      weights[base + x] = w < 0 ? Math.trunc(-0.5 + w * (1 << PRECISION_BITS)) : Math.trunc(0.5 + w * (1 << PRECISION_BITS));
    }
    bounds[i * 2] = xmin;
    bounds[i * 2 + 1] = xmax;
  }
  return { bounds, weights, ksize };
}

/** `clip8`: fixed-point sum -> uint8 (sums stay well inside int32, see PIL's 2 spare bits). */
function clip8(v: number): number {
  return v <= 0 ? 0 : v >= CLIP_HIGH ? 255 : v >> PRECISION_BITS;
}

// Per-thread scratch: grown on demand, never shrunk, never returned to callers.
let tempScratch: Uint8Array = new Uint8Array(0);
let accScratch = new Int32Array(0);
let rowScratch: Uint8Array = new Uint8Array(0);

function tempBuffer(n: number): Uint8Array {
  if (tempScratch.length < n) tempScratch = new Uint8Array(Math.ceil(n * 1.25));
  return tempScratch;
}

function accBuffer(n: number): Int32Array {
  if (accScratch.length < n) accScratch = new Int32Array(Math.ceil(n * 1.25));
  return accScratch;
}

function rowBuffer(n: number): Uint8Array {
  if (rowScratch.length < n) rowScratch = new Uint8Array(Math.ceil(n * 1.25));
  return rowScratch;
}

function checkLength(what: string, buf: ArrayLike<number>, need: number): void {
  if (buf.length < need) throw new RangeError(`${what}: buffer holds ${buf.length} values, needs ${need}`);
}

function checkSize(what: string, w: number, h: number): void {
  if (!(Number.isInteger(w) && Number.isInteger(h) && w > 0 && h > 0)) {
    throw new RangeError(`${what}: size must be positive integers, got ${w}x${h} (w x h)`);
  }
}

/**
 * PIL's horizontal pass for one row: `count` output pixels from the RGB row whose source pixel x sits
 * at byte `base + 3x` of `src`. The sums are PIL's int32 sums (`Math.imul` keeps V8 on int32).
 */
function horizontalRow(src: Uint8Array, base: number, dst: Uint8Array, d: number, count: number, c: Coefficients): void {
  const { bounds, weights, ksize } = c;
  for (let xx = 0; xx < count; xx++, d += 3) {
    const n = bounds[xx * 2 + 1]!;
    const kb = xx * ksize;
    let p = base + bounds[xx * 2]! * 3;
    let s0 = HALF;
    let s1 = HALF;
    let s2 = HALF;
    for (let x = 0; x < n; x++, p += 3) {
      const w = weights[kb + x]!;
      s0 = (s0 + Math.imul(src[p]!, w)) | 0;
      s1 = (s1 + Math.imul(src[p + 1]!, w)) | 0;
      s2 = (s2 + Math.imul(src[p + 2]!, w)) | 0;
    }
    dst[d] = clip8(s0);
    dst[d + 1] = clip8(s1);
    dst[d + 2] = clip8(s2);
  }
}

/**
 * PIL's vertical pass for output row `yy`: `len` bytes from the `taps` rows of `temp` starting at byte
 * `from`, `stride` bytes apart. Rows are taken four at a time, so the accumulator row is read and written
 * once per four taps; the last group writes the clipped bytes. The sums are int32 with wrap-around
 * (`Math.imul`, `| 0`): the total is PIL's int32 sum, which fits, so no intermediate wrap can change it.
 */
function verticalRow(
  temp: Uint8Array,
  from: number,
  stride: number,
  c: Coefficients,
  yy: number,
  acc: Int32Array,
  len: number,
  out: Uint8Array,
  o: number,
): void {
  const taps = c.bounds[yy * 2 + 1]!;
  const kb = yy * c.ksize;
  const weights = c.weights;
  for (let k = 0; k < taps; k += 4) {
    // Missing taps of the last group read row `from` with weight 0.
    const w0 = weights[kb + k]!;
    const w1 = k + 1 < taps ? weights[kb + k + 1]! : 0;
    const w2 = k + 2 < taps ? weights[kb + k + 2]! : 0;
    const w3 = k + 3 < taps ? weights[kb + k + 3]! : 0;
    const r0 = from + k * stride;
    const r1 = k + 1 < taps ? r0 + stride : from;
    const r2 = k + 2 < taps ? r0 + 2 * stride : from;
    const r3 = k + 3 < taps ? r0 + 3 * stride : from;
    const first = k === 0;
    const last = k + 4 >= taps;
    if (first && last) {
      for (let i = 0; i < len; i++) {
        out[o + i] = clip8(
          (HALF +
            Math.imul(temp[r0 + i]!, w0) +
            Math.imul(temp[r1 + i]!, w1) +
            Math.imul(temp[r2 + i]!, w2) +
            Math.imul(temp[r3 + i]!, w3)) |
            0,
        );
      }
    } else if (first) {
      for (let i = 0; i < len; i++) {
        acc[i] =
          (HALF +
            Math.imul(temp[r0 + i]!, w0) +
            Math.imul(temp[r1 + i]!, w1) +
            Math.imul(temp[r2 + i]!, w2) +
            Math.imul(temp[r3 + i]!, w3)) |
          0;
      }
    } else if (last) {
      for (let i = 0; i < len; i++) {
        out[o + i] = clip8(
          (acc[i]! +
            Math.imul(temp[r0 + i]!, w0) +
            Math.imul(temp[r1 + i]!, w1) +
            Math.imul(temp[r2 + i]!, w2) +
            Math.imul(temp[r3 + i]!, w3)) |
            0,
        );
      }
    } else {
      for (let i = 0; i < len; i++) {
        acc[i] =
          (acc[i]! +
            Math.imul(temp[r0 + i]!, w0) +
            Math.imul(temp[r1 + i]!, w1) +
            Math.imul(temp[r2 + i]!, w2) +
            Math.imul(temp[r3 + i]!, w3)) |
          0;
      }
    }
  }
}

/** A window's coefficients and the source rectangle it reads. */
interface WindowPlan {
  /** Vertical / horizontal coefficients, null when that size does not change (PIL skips the pass). */
  vert: Coefficients | null;
  horiz: Coefficients | null;
  rect: SourceRect;
}

/**
 * Source rows the vertical pass reads (PIL's ybox_first / ybox_last) and source columns the horizontal
 * pass reads, for window [x0, x0+ow) x [y0, y0+oh) of the resize sw x sh -> dw x dh; the bounds grow
 * monotonically with the output index, so first and last output give the extent.
 */
function planWindow(sw: number, sh: number, dw: number, dh: number, x0: number, y0: number, ow: number, oh: number): WindowPlan {
  const rect = { x: x0, y: y0, width: ow, height: oh };
  const vert = sh !== dh ? coefficients(sh, dh, y0, oh) : null;
  if (vert) {
    rect.y = vert.bounds[0]!;
    rect.height = vert.bounds[(oh - 1) * 2]! + vert.bounds[(oh - 1) * 2 + 1]! - rect.y;
  }
  const horiz = sw !== dw ? coefficients(sw, dw, x0, ow) : null;
  if (horiz) {
    rect.x = horiz.bounds[0]!;
    rect.width = horiz.bounds[(ow - 1) * 2]! + horiz.bounds[(ow - 1) * 2 + 1]! - rect.x;
  }
  return { vert, horiz, rect };
}

/**
 * The source rectangle `resizeBicubicWindow` reads for a window (what `compileJitter` can stage).
 */
export function bicubicSourceRect(
  sw: number,
  sh: number,
  dw: number,
  dh: number,
  x0: number,
  y0: number,
  ow: number,
  oh: number,
): SourceRect {
  checkSize('bicubicSourceRect source', sw, sh);
  checkSize('bicubicSourceRect window', ow, oh);
  if (x0 < 0 || y0 < 0 || x0 + ow > dw || y0 + oh > dh) {
    throw new RangeError(`bicubicSourceRect: window ${ow}x${oh} at (${x0}, ${y0}) is outside the ${dw}x${dh} target`);
  }
  return planWindow(sw, sh, dw, dh, x0, y0, ow, oh).rect;
}

/**
 * Window [x0, x0+ow) x [y0, y0+oh) of PIL's bicubic resize of an RGB image sw x sh -> dw x dh, written
 * into `out` with a row stride of `outStride` pixels starting at pixel `outOffset` (so a crop can land
 * inside a padded buffer). Bit-identical to `resizeBicubic` followed by cropping.
 *
 * With a `jitter` program (see `compileJitter`) the source is read through it: the result equals
 * resizing `applyColorJitter`'s output, but only the source rectangle this window reads (PIL's
 * coefficient bounds, both directions) is jittered, one row at a time just before its horizontal pass,
 * so a jittered row is resampled while it is still in L1. Rows the program staged (the rectangle given
 * to `compileJitter`) start from their staged pixels.
 */
export function resizeBicubicWindow(
  src: Uint8Array,
  sw: number,
  sh: number,
  dw: number,
  dh: number,
  x0: number,
  y0: number,
  ow: number,
  oh: number,
  out: Uint8Array,
  outStride = ow,
  outOffset = 0,
  jitter: JitterProgram | null = null,
): void {
  checkSize('resizeBicubic source', sw, sh);
  checkSize('resizeBicubic target', dw, dh);
  if (ow <= 0 || oh <= 0) return;
  if (x0 < 0 || y0 < 0 || x0 + ow > dw || y0 + oh > dh) {
    throw new RangeError(`resizeBicubicWindow: window ${ow}x${oh} at (${x0}, ${y0}) is outside the ${dw}x${dh} target`);
  }
  checkLength('resizeBicubic source', src, sw * sh * 3);
  checkLength('resizeBicubic output', out, (outOffset + (oh - 1) * outStride + ow) * 3);
  if (jitter && (jitter.width !== sw || jitter.height !== sh)) {
    throw new RangeError(
      `resizeBicubicWindow: the jitter program was compiled for a ${jitter.width}x${jitter.height} image, the source is ${sw}x${sh}`,
    );
  }
  const { vert, horiz, rect } = planWindow(sw, sh, dw, dh, x0, y0, ow, oh);
  const rowFirst = rect.y;
  const rowCount = rect.height;
  const colFirst = rect.x;
  const colCount = rect.width;

  // Where the rows come from: the source (all steps), or the program's staged pixels (the steps after
  // contrast) when they cover this rectangle.
  let steps = jitter && jitter.steps.length > 0 ? jitter.steps : null;
  let from = src;
  let fromStride = sw * 3;
  let fromStart = (rowFirst * sw + colFirst) * 3; // byte of (rowFirst, colFirst)
  const stage = jitter ? liveStage(jitter) : null;
  if (stage) {
    const r = stage.rect;
    if (r.x <= colFirst && r.y <= rowFirst && colFirst + colCount <= r.x + r.width && rowFirst + rowCount <= r.y + r.height) {
      steps = stage.steps;
      from = stage.data;
      fromStride = r.width * 3;
      fromStart = ((rowFirst - r.y) * r.width + (colFirst - r.x)) * 3;
    }
  }

  const rowLen = ow * 3;
  const seg = steps && horiz ? rowBuffer(colCount * 3) : null;
  // Source row rowFirst + y -> jitter -> horizontal pass -> `dst` at byte d (ow pixels).
  const produce = (y: number, dst: Uint8Array, d: number): void => {
    const at = fromStart + y * fromStride;
    if (!steps) {
      if (horiz) horizontalRow(from, at - colFirst * 3, dst, d, ow, horiz);
      else dst.set(from.subarray(at, at + rowLen), d);
    } else if (horiz) {
      runJitterSteps(steps, from, at, seg!, 0, colCount * 3);
      horizontalRow(seg!, -colFirst * 3, dst, d, ow, horiz);
    } else {
      runJitterSteps(steps, from, at, dst, d, rowLen);
    }
  };

  if (!vert) {
    for (let y = 0; y < oh; y++) produce(y, out, (outOffset + y * outStride) * 3);
    return;
  }
  // Intermediate rows (uint8, as PIL's). Without jitter or horizontal pass they are the source's own.
  const direct = !steps && !horiz;
  const temp = direct ? from : tempBuffer(rowLen * rowCount);
  const tempStride = direct ? fromStride : rowLen;
  const tempStart = direct ? fromStart : 0;
  const acc = accBuffer(rowLen);
  let produced = 0;
  for (let yy = 0; yy < oh; yy++) {
    // Make the rows this output row reads just before it reads them (they are still in cache).
    const end = vert.bounds[yy * 2]! + vert.bounds[yy * 2 + 1]! - rowFirst;
    if (!direct) for (; produced < end; produced++) produce(produced, temp, produced * rowLen);
    const at = tempStart + (vert.bounds[yy * 2]! - rowFirst) * tempStride;
    verticalRow(temp, at, tempStride, vert, yy, acc, rowLen, out, (outOffset + yy * outStride) * 3);
  }
}

/**
 * PIL `Image.resize((dw, dh), BICUBIC)` of an RGB image (antialiased when downscaling). Output is a
 * new buffer unless `out` (>= dw*dh*3) is given.
 */
export function resizeBicubic(src: Uint8Array, sw: number, sh: number, dw: number, dh: number, out?: Uint8Array): Uint8Array {
  checkSize('resizeBicubic target', dw, dh);
  const dst = out ?? new Uint8Array(dw * dh * 3);
  resizeBicubicWindow(src, sw, sh, dw, dh, 0, 0, dw, dh, dst);
  return dst;
}

/**
 * Source indices of PIL's nearest resize for outputs first..first+count-1: `ImagingScaleAffine`
 * starts at scale/2 and *accumulates* the step (so it is floor((x + 0.5) * in / out) up to float
 * accumulation, reproduced here); clamped to the image.
 */
function nearestTable(inSize: number, outSize: number, first: number, count: number): Int32Array {
  const step = inSize / outSize;
  const table = new Int32Array(count);
  let pos = step * 0.5;
  for (let x = 0; x < first; x++) pos += step;
  for (let i = 0; i < count; i++) {
    const v = Math.trunc(pos);
    table[i] = v < 0 ? 0 : v >= inSize ? inSize - 1 : v;
    pos += step;
  }
  return table;
}

/**
 * Window of PIL's NEAREST resize sw x sh -> dw x dh (any channel count), written with a row stride of
 * `outStride` pixels from pixel `outOffset`; see `resizeBicubicWindow`.
 */
export function resizeNearestWindow(
  src: Uint8Array,
  sw: number,
  sh: number,
  dw: number,
  dh: number,
  channels: number,
  x0: number,
  y0: number,
  ow: number,
  oh: number,
  out: Uint8Array,
  outStride = ow,
  outOffset = 0,
): void {
  checkSize('resizeNearest source', sw, sh);
  checkSize('resizeNearest target', dw, dh);
  if (ow <= 0 || oh <= 0) return;
  if (x0 < 0 || y0 < 0 || x0 + ow > dw || y0 + oh > dh) {
    throw new RangeError(`resizeNearestWindow: window ${ow}x${oh} at (${x0}, ${y0}) is outside the ${dw}x${dh} target`);
  }
  checkLength('resizeNearest source', src, sw * sh * channels);
  checkLength('resizeNearest output', out, (outOffset + (oh - 1) * outStride + ow) * channels);
  const xs = nearestTable(sw, dw, x0, ow);
  const ys = nearestTable(sh, dh, y0, oh);
  for (let y = 0; y < oh; y++) nearestRow(src, ys[y]! * sw * channels, xs, out, (outOffset + y * outStride) * channels, channels);
}

/** One output row of `resizeNearestWindow` (a function of its own, so V8 optimises it once). */
function nearestRow(src: Uint8Array, srow: number, xs: Int32Array, out: Uint8Array, o: number, channels: number): void {
  const ow = xs.length;
  if (channels === 1) {
    for (let x = 0; x < ow; x++) out[o++] = src[srow + xs[x]!]!;
    return;
  }
  for (let x = 0; x < ow; x++) {
    const p = srow + xs[x]! * channels;
    for (let c = 0; c < channels; c++) out[o++] = src[p + c]!;
  }
}

/** PIL `Image.resize((dw, dh), NEAREST)` (pixel centres), used for label maps. */
export function resizeNearest(src: Uint8Array, sw: number, sh: number, dw: number, dh: number, channels = 1, out?: Uint8Array): Uint8Array {
  checkSize('resizeNearest target', dw, dh);
  const dst = out ?? new Uint8Array(dw * dh * channels);
  resizeNearestWindow(src, sw, sh, dw, dh, channels, 0, 0, dw, dh, dst);
  return dst;
}

// ---------------------------------------------------------------------------------------------------
// Random scale, crop, flip (SPCL transform.py: RandomScale, RandomCrop(pad_if_needed), RandomHorizontalFlip)

export interface CropResult {
  image: Uint8Array;
  label: Uint8Array | null;
  /** Crop size. */
  width: number;
  height: number;
}

/** The part of crop window (cropX, cropY, cropW x cropH) inside a scaledW x scaledH image, or null. */
function visibleWindow(scaledW: number, scaledH: number, cropX: number, cropY: number, cropW: number, cropH: number): SourceRect | null {
  const x = Math.max(0, cropX);
  const y = Math.max(0, cropY);
  const width = Math.min(scaledW, cropX + cropW) - x;
  const height = Math.min(scaledH, cropY + cropH) - y;
  return width > 0 && height > 0 ? { x, y, width, height } : null;
}

/**
 * Resizes image (bicubic) and label (nearest) to scaledW x scaledH and cuts the cropW x cropH window
 * whose top-left corner is (cropX, cropY) in the scaled image. Offsets may be negative and the window
 * may extend past the scaled image: those pixels are padding (image 0, label 255). Only the pixels of
 * the window are computed; with a `jitter` program (compiled for `image`) only the source pixels they
 * read are jittered (as if the whole image had been jittered first).
 */
export function scaleAndCrop(
  image: Uint8Array,
  label: Uint8Array | null,
  w: number,
  h: number,
  scaledW: number,
  scaledH: number,
  cropX: number,
  cropY: number,
  cropW: number,
  cropH: number,
  out?: { image?: Uint8Array; label?: Uint8Array },
  jitter: JitterProgram | null = null,
): CropResult {
  checkSize('scaleAndCrop crop', cropW, cropH);
  const outImage = out?.image ?? new Uint8Array(cropW * cropH * 3);
  const outLabel = label === null ? null : (out?.label ?? new Uint8Array(cropW * cropH));
  checkLength('scaleAndCrop image output', outImage, cropW * cropH * 3);
  if (outLabel) checkLength('scaleAndCrop label output', outLabel, cropW * cropH);
  const v = visibleWindow(scaledW, scaledH, cropX, cropY, cropW, cropH);
  if (!v || v.width !== cropW || v.height !== cropH) {
    outImage.fill(0, 0, cropW * cropH * 3);
    outLabel?.fill(IGNORE, 0, cropW * cropH);
  }
  if (v) {
    const at = (v.y - cropY) * cropW + (v.x - cropX);
    resizeBicubicWindow(image, w, h, scaledW, scaledH, v.x, v.y, v.width, v.height, outImage, cropW, at, jitter);
    if (label && outLabel) resizeNearestWindow(label, w, h, scaledW, scaledH, 1, v.x, v.y, v.width, v.height, outLabel, cropW, at);
  }
  return { image: outImage, label: outLabel, width: cropW, height: cropH };
}

export interface ScaleCropOptions {
  /** s ~ U[lo, hi); scaled size = floor(h*s) x floor(w*s) of the input. */
  scaleRange: readonly [number, number];
  /** Crop [height, width]. */
  crop: readonly [number, number];
}

export interface ScaleCropPlacement {
  scale: number;
  scaledWidth: number;
  scaledHeight: number;
  /** Top-left of the crop in scaled-image coordinates; negative = padding on the left/top. */
  cropX: number;
  cropY: number;
}

/**
 * Draws the scale and crop offsets like SPCL's RandomScale + RandomCrop(pad_if_needed=True):
 * s = lo + (hi - lo) * U; scaled = floor(h*s) x floor(w*s). A side shorter than the crop is padded by
 * (crop - side) on *both* sides (torchvision `F.pad(img, (dw, 0))` pads left and right, `(0, dh)` top
 * and bottom), then offsets are uniform integers over the padded image, y first, then x (no draw
 * when the padded image already has the crop size). Net effect: a too-small scaled image lands at a
 * uniformly random position inside the crop, the rest being padding.
 */
export function drawScaleCrop(w: number, h: number, opts: ScaleCropOptions, rng: Rng): ScaleCropPlacement {
  const [lo, hi] = opts.scaleRange;
  const [ch, cw] = opts.crop;
  const scale = lo + (hi - lo) * rng.next();
  const scaledWidth = Math.floor(w * scale);
  const scaledHeight = Math.floor(h * scale);
  if (scaledWidth < 1 || scaledHeight < 1) {
    throw new RangeError(
      `randomScaleCrop: scale ${scale} turns ${w}x${h} into an empty ${scaledWidth}x${scaledHeight} image; raise scaleRange[0] (${lo})`,
    );
  }
  const padX = Math.max(0, cw - scaledWidth);
  const padY = Math.max(0, ch - scaledHeight);
  const paddedW = scaledWidth + 2 * padX;
  const paddedH = scaledHeight + 2 * padY;
  let i = 0;
  let j = 0;
  if (paddedW !== cw || paddedH !== ch) {
    i = rng.int(0, paddedH - ch);
    j = rng.int(0, paddedW - cw);
  }
  return { scale, scaledWidth, scaledHeight, cropX: j - padX, cropY: i - padY };
}

/** RandomScale -> RandomCrop of REFERENCE 6.3 (bicubic image, nearest label); see `drawScaleCrop`. */
export function randomScaleCrop(
  image: Uint8Array,
  label: Uint8Array | null,
  w: number,
  h: number,
  opts: ScaleCropOptions,
  rng: Rng,
  out?: { image?: Uint8Array; label?: Uint8Array },
): CropResult & ScaleCropPlacement {
  const p = drawScaleCrop(w, h, opts, rng);
  const [ch, cw] = opts.crop;
  const r = scaleAndCrop(image, label, w, h, p.scaledWidth, p.scaledHeight, p.cropX, p.cropY, cw, ch, out);
  return { ...r, ...p };
}

/** Mirrors an interleaved image of `channels` channels left-right, in place. */
function flipRows(buf: Uint8Array, w: number, h: number, channels: number): void {
  checkLength('hflip', buf, w * h * channels);
  if (channels === 1) {
    for (let y = 0; y < h; y++) buf.subarray(y * w, (y + 1) * w).reverse();
    return;
  }
  for (let y = 0; y < h; y++) {
    let a = y * w * channels;
    let b = a + (w - 1) * channels;
    for (; a < b; a += channels, b -= channels) {
      for (let c = 0; c < channels; c++) {
        const t = buf[a + c]!;
        buf[a + c] = buf[b + c]!;
        buf[b + c] = t;
      }
    }
  }
}

/** Mirrors an RGB image and (optionally) its label map left-right, in place. */
export function hflip(image: Uint8Array, label: Uint8Array | null, w: number, h: number): void {
  flipRows(image, w, h, 3);
  if (label) flipRows(label, w, h, 1);
}

// ---------------------------------------------------------------------------------------------------
// ColorJitter (torchvision on a PIL image)

export interface JitterParams {
  brightness: number;
  contrast: number;
  saturation: number;
  /** At most 0.5. */
  hue: number;
}

export type JitterOp = 'brightness' | 'contrast' | 'saturation' | 'hue';

/** torchvision's op ids: randperm(4) indexes this list. */
export const JITTER_OPS: readonly JitterOp[] = ['brightness', 'contrast', 'saturation', 'hue'];

/** Drawn factors (null = op disabled because its parameter is 0, as torchvision's None) and order. */
export interface JitterFactors {
  brightness: number | null;
  contrast: number | null;
  saturation: number | null;
  hue: number | null;
  order: readonly JitterOp[];
}

/** ITU-R 601-2 luma as PIL's RGB -> L conversion computes it: (19595 R + 38470 G + 7471 B + 2^15) >> 16. */
export function luma(r: number, g: number, b: number): number {
  return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
}

const f32 = Math.fround;

/**
 * `Image.blend(in1, in2, alpha)` for one value: float32 `in1 + alpha * (in2 - in1)`, truncated; clipped
 * to 0..255 when alpha is outside [0, 1] (PIL's extrapolation branch).
 */
function blendValue(in1: number, in2: number, alpha: number): number {
  const t = f32(in1 + f32(alpha * (in2 - in1)));
  if (alpha >= 0 && alpha <= 1) return Math.trunc(t);
  return t <= 0 ? 0 : t >= 255 ? 255 : Math.trunc(t);
}

let blendScratch: Uint8Array = new Uint8Array(0);

function applyBlendConstant(src: Uint8Array, dst: Uint8Array, n: number, base: number, alpha: number): void {
  const lut = new Uint8Array(256);
  for (let v = 0; v < 256; v++) lut[v] = blendValue(base, v, alpha);
  for (let i = 0; i < n; i++) dst[i] = lut[src[i]!]!;
}

/** PIL `ImageEnhance.Brightness(img).enhance(f)`: blend with black. */
export function adjustBrightness(src: Uint8Array, w: number, h: number, factor: number, out: Uint8Array = src): Uint8Array {
  applyBlendConstant(src, out, w * h * 3, 0, f32(factor));
  return out;
}

/** Mean of the L image, rounded as `ImageEnhance.Contrast` does: int(mean + 0.5). */
export function meanLuma(src: Uint8Array, w: number, h: number): number {
  const n = w * h;
  let sum = 0;
  for (let p = 0; p < n * 3; p += 3) sum += luma(src[p]!, src[p + 1]!, src[p + 2]!);
  return Math.trunc(sum / n + 0.5);
}

/** PIL `ImageEnhance.Contrast(img).enhance(f)`: blend with the (integer) mean grey level. */
export function adjustContrast(src: Uint8Array, w: number, h: number, factor: number, out: Uint8Array = src): Uint8Array {
  applyBlendConstant(src, out, w * h * 3, meanLuma(src, w, h), f32(factor));
  return out;
}

/** PIL `ImageEnhance.Color(img).enhance(f)` (torchvision adjust_saturation): blend with the pixel's L. */
export function adjustSaturation(src: Uint8Array, w: number, h: number, factor: number, out: Uint8Array = src): Uint8Array {
  const alpha = f32(factor);
  // 64K table over (L, value): cheaper than float math per channel on megapixel images.
  if (blendScratch.length < 65536) blendScratch = new Uint8Array(65536);
  const lut = blendScratch;
  for (let l = 0; l < 256; l++) for (let v = 0; v < 256; v++) lut[(l << 8) | v] = blendValue(l, v, alpha);
  const n = w * h * 3;
  for (let p = 0; p < n; p += 3) {
    const r = src[p]!;
    const g = src[p + 1]!;
    const b = src[p + 2]!;
    const l = luma(r, g, b) << 8;
    out[p] = lut[l | r]!;
    out[p + 1] = lut[l | g]!;
    out[p + 2] = lut[l | b]!;
  }
  return out;
}

/**
 * PIL's 8-bit HSV conversions (`rgb2hsv_row`, `hsv2rgb` in Convert.c, float32 where C uses float)
 * folded into tables, so the hue op costs a few lookups per pixel instead of divisions:
 * - H depends only on which channel is max (C's test order r, g, b), which of the other two is min,
 *   the range cr = max - min and d = max - mid: `hue[case << 16 | cr << 8 | d]`;
 * - S = trunc(float(cr / max) * 255): `sat[cr << 8 | max]`;
 * - back to RGB, the sector and the p, q, t multipliers depend on (S, H) only; p, q, t = round(V * m).
 * Built once per thread (~1.5 MB).
 */
interface HsvTables {
  hue: Uint8Array;
  sat: Uint8Array;
  sector: Uint8Array;
  pMul: Float64Array;
  qMul: Float64Array;
  tMul: Float64Array;
}

let hsvTables: HsvTables | null = null;

/** C's `rgb2hsv_row` hue for max-minus-channel differences (dr, dg, db), range cr > 0. */
function pilHue(dr: number, dg: number, db: number, cr: number, maxIs: 0 | 1 | 2): number {
  const rc = f32(dr / cr);
  const gc = f32(dg / cr);
  const bc = f32(db / cr);
  let h = maxIs === 0 ? f32(bc - gc) : maxIs === 1 ? f32(2 + rc - bc) : f32(4 + gc - rc);
  h = f32((h / 6 + 1) % 1);
  const uh = Math.trunc(h * 255);
  return uh < 0 ? 0 : uh > 255 ? 255 : uh;
}

function buildHsvTables(): HsvTables {
  const hue = new Uint8Array(6 << 16);
  for (let cr = 1; cr < 256; cr++) {
    for (let d = 0; d <= cr; d++) {
      const at = (cr << 8) | d;
      hue[(0 << 16) | at] = pilHue(0, cr, d, cr, 0); // r max, g min
      hue[(1 << 16) | at] = pilHue(0, d, cr, cr, 0); // r max, b min
      hue[(2 << 16) | at] = pilHue(cr, 0, d, cr, 1); // g max, r min
      hue[(3 << 16) | at] = pilHue(d, 0, cr, cr, 1); // g max, b min
      hue[(4 << 16) | at] = pilHue(cr, d, 0, cr, 2); // b max, r min
      hue[(5 << 16) | at] = pilHue(d, cr, 0, cr, 2); // b max, g min
    }
  }
  const sat = new Uint8Array(1 << 16);
  for (let cr = 1; cr < 256; cr++) {
    for (let max = cr; max < 256; max++) {
      const us = Math.trunc(f32(cr / max) * 255);
      sat[(cr << 8) | max] = us < 0 ? 0 : us > 255 ? 255 : us;
    }
  }
  const sector = new Uint8Array(256);
  const frac = new Float64Array(256);
  for (let h = 0; h < 256; h++) {
    const i = Math.floor((h * 6) / 255);
    sector[h] = i % 6;
    frac[h] = f32((h * 6) / 255 - i);
  }
  const pMul = new Float64Array(256);
  const qMul = new Float64Array(1 << 16);
  const tMul = new Float64Array(1 << 16);
  for (let s = 0; s < 256; s++) {
    const fs = f32(s / 255);
    pMul[s] = 1 - fs;
    for (let h = 0; h < 256; h++) {
      qMul[(s << 8) | h] = 1 - f32(fs * frac[h]!);
      tMul[(s << 8) | h] = 1 - fs * (1 - frac[h]!);
    }
  }
  return { hue, sat, sector, pMul, qMul, tMul };
}

/**
 * torchvision `adjust_hue` on a PIL image: RGB -> PIL's 8-bit HSV, H += int(hue * 255) modulo 256,
 * HSV -> RGB. Not lossless even for hue 0: H and S are quantised to 8 bits (greys and primaries are
 * exact).
 */
export function adjustHue(src: Uint8Array, w: number, h: number, hue: number, out: Uint8Array = src): Uint8Array {
  if (!(hue >= -0.5 && hue <= 0.5)) throw new RangeError(`adjustHue: hue factor ${hue} is not in [-0.5, 0.5]`);
  const shift = Math.trunc(hue * 255) & 255;
  const t = (hsvTables ??= buildHsvTables());
  const { hue: hueOf, sat: satOf, sector: sectorOf, pMul, qMul, tMul } = t;
  const n = w * h * 3;
  for (let p = 0; p < n; p += 3) {
    const r = src[p]!;
    const g = src[p + 1]!;
    const b = src[p + 2]!;
    let v: number;
    let key: number; // case << 16 | d (cr added below)
    let cr: number;
    if (r >= g && r >= b) {
      v = r;
      if (g <= b) {
        cr = r - g;
        key = (0 << 16) | (r - b);
      } else {
        cr = r - b;
        key = (1 << 16) | (r - g);
      }
    } else if (g >= b) {
      v = g;
      if (r <= b) {
        cr = g - r;
        key = (2 << 16) | (g - b);
      } else {
        cr = g - b;
        key = (3 << 16) | (g - r);
      }
    } else {
      v = b;
      if (r <= g) {
        cr = b - r;
        key = (4 << 16) | (b - g);
      } else {
        cr = b - g;
        key = (5 << 16) | (b - r);
      }
    }
    const us = cr === 0 ? 0 : satOf[(cr << 8) | v]!;
    if (us === 0) {
      // grey (or S rounded to 0): V everywhere, whatever H becomes
      out[p] = v;
      out[p + 1] = v;
      out[p + 2] = v;
      continue;
    }
    const hh = (hueOf[key | (cr << 8)]! + shift) & 255;
    const at = (us << 8) | hh;
    const pv = Math.round(v * pMul[us]!);
    const qv = Math.round(v * qMul[at]!);
    const tv = Math.round(v * tMul[at]!);
    switch (sectorOf[hh]) {
      case 0:
        out[p] = v;
        out[p + 1] = tv;
        out[p + 2] = pv;
        break;
      case 1:
        out[p] = qv;
        out[p + 1] = v;
        out[p + 2] = pv;
        break;
      case 2:
        out[p] = pv;
        out[p + 1] = v;
        out[p + 2] = tv;
        break;
      case 3:
        out[p] = pv;
        out[p + 1] = qv;
        out[p + 2] = v;
        break;
      case 4:
        out[p] = tv;
        out[p + 1] = pv;
        out[p + 2] = v;
        break;
      default:
        out[p] = v;
        out[p + 1] = pv;
        out[p + 2] = qv;
        break;
    }
  }
  return out;
}

/**
 * Applies given jitter factors in the given order (the deterministic half of `colorJitter`). Reads
 * `image`, writes `out` (default: in place); null factors are skipped.
 */
export function applyColorJitter(image: Uint8Array, w: number, h: number, factors: JitterFactors, out: Uint8Array = image): Uint8Array {
  checkLength('colorJitter image', image, w * h * 3);
  checkLength('colorJitter output', out, w * h * 3);
  let src = image;
  for (const op of factors.order) {
    const f = factors[op];
    if (f === null) continue;
    if (op === 'brightness') adjustBrightness(src, w, h, f, out);
    else if (op === 'contrast') adjustContrast(src, w, h, f, out);
    else if (op === 'saturation') adjustSaturation(src, w, h, f, out);
    else adjustHue(src, w, h, f, out);
    src = out;
  }
  if (src !== out) out.set(image.subarray(0, w * h * 3));
  return out;
}

/**
 * Draws torchvision ColorJitter parameters: the op order (randperm(4), drawn first), then brightness,
 * contrast, saturation factors ~ U[max(0, 1-x), 1+x] and hue ~ U[-hue, hue], each only when its
 * parameter is non-zero.
 */
export function drawColorJitter(params: JitterParams, rng: Rng): JitterFactors {
  if (!(params.hue >= 0 && params.hue <= 0.5)) throw new RangeError(`colorJitter: hue must be in [0, 0.5], got ${params.hue}`);
  for (const k of ['brightness', 'contrast', 'saturation'] as const) {
    if (!(params[k] >= 0)) throw new RangeError(`colorJitter: ${k} must be >= 0, got ${params[k]}`);
  }
  const order = rng.shuffle([...JITTER_OPS]);
  const factor = (x: number): number | null => (x > 0 ? rng.uniform(Math.max(0, 1 - x), 1 + x) : null);
  const brightness = factor(params.brightness);
  const contrast = factor(params.contrast);
  const saturation = factor(params.saturation);
  const hue = params.hue > 0 ? rng.uniform(-params.hue, params.hue) : null;
  return { brightness, contrast, saturation, hue, order };
}

/** torchvision ColorJitter on a uint8 RGB image (REFERENCE 2, 6.3). Writes `out` (default in place). */
export function colorJitter(
  image: Uint8Array,
  w: number,
  h: number,
  params: JitterParams,
  rng: Rng,
  out: Uint8Array = image,
): JitterFactors {
  const factors = drawColorJitter(params, rng);
  applyColorJitter(image, w, h, factors, out);
  return factors;
}

// ---------------------------------------------------------------------------------------------------
// ColorJitter compiled for the pixels a crop reads
//
// The four ops are pointwise except contrast, which blends with the integer mean grey level of the
// whole image as it is when contrast runs. `compileJitter` gets that mean exactly with one luma-only pass
// over the whole image through the ops drawn before contrast (none when contrast comes first or is
// off), turning every op into a pointwise step; `resizeBicubicWindow` then runs the steps on the source
// rows it reads, and only on the columns it reads. Given that source rectangle, the mean pass also keeps
// the rectangle's pixels as they are before contrast ("staged"), so the ops before contrast run once
// there, not twice. Brightness and contrast are 256-entry tables (runs of them compose into one), a
// table after saturation folds into saturation's (L, v) table, and each step runs over one row segment
// at a time so the pixels stay in L1 between steps. Every step is the same integer function as the op it
// replaces (`adjustBrightness`, ..., `adjustHue`), so the result is byte-identical to jittering the
// whole image first; the tests check that.

/** One pointwise step of a compiled jitter. */
export type JitterStep =
  /** v -> table[v] on each channel (brightness, contrast, or runs of them composed). */
  | { readonly kind: 'table'; readonly table: Uint8Array }
  /** v -> table[L << 8 | v] with L the pixel's luma (saturation, maybe with tables composed after it). */
  | { readonly kind: 'saturation'; readonly table: Uint8Array }
  /** `adjustHue` with H shifted by `shift` (mod 256). */
  | { readonly kind: 'hue'; readonly shift: number };

/** A rectangle of source pixels. */
export interface SourceRect {
  x: number;
  y: number;
  width: number;
  height: number;
}

/** Pixels of a source rectangle with the ops before contrast applied, and the steps that finish them. */
export interface StagedRegion {
  readonly rect: SourceRect;
  /** RGB rows of rect.width pixels (a per-thread buffer, valid while its program is the last staged one). */
  readonly data: Uint8Array;
  readonly steps: readonly JitterStep[];
}

/** ColorJitter factors bound to one image (its contrast mean), as pointwise steps. */
export interface JitterProgram {
  readonly width: number;
  readonly height: number;
  /** The whole chain, applied to source pixels. */
  readonly steps: readonly JitterStep[];
  /** The integer mean grey level contrast blends with, or null when contrast is off. */
  readonly contrastMean: number | null;
  /** The kept rectangle, when one was asked for and some op runs before contrast. */
  readonly staged: StagedRegion | null;
}

function blendTable(base: number, alpha: number): Uint8Array {
  const t = new Uint8Array(256);
  blendRow(t, 0, base, alpha);
  return t;
}

/** Appends a per-value table, composing it into the previous table or saturation step. */
function pushTable(steps: JitterStep[], table: Uint8Array): void {
  const last = steps[steps.length - 1];
  if (last?.kind === 'table' || last?.kind === 'saturation') composeInto(last.table, table);
  else steps.push({ kind: 'table', table });
}

/** t[i] = table[t[i]] for every entry of t. */
function composeInto(t: Uint8Array, table: Uint8Array): void {
  for (let i = 0; i < t.length; i++) t[i] = table[t[i]!]!;
}

function saturationTable(factor: number): Uint8Array {
  const alpha = f32(factor);
  const t = new Uint8Array(65536);
  for (let l = 0; l < 256; l++) blendRow(t, l << 8, l, alpha);
  return t;
}

/** t[at + v] = blendValue(base, v, alpha) for v = 0..255. */
function blendRow(t: Uint8Array, at: number, base: number, alpha: number): void {
  for (let v = 0; v < 256; v++) t[at + v] = blendValue(base, v, alpha);
}

// The staging buffer is per thread; `stageOwner` says which program's pixels it holds.
let stageScratch: Uint8Array = new Uint8Array(0);
let stageOwner: JitterProgram | null = null;

/**
 * Binds drawn jitter factors to `image` (w x h RGB): computes contrast's mean over the whole image as
 * it is when contrast runs, and returns the ops as pointwise steps for `resizeBicubicWindow`. With
 * `keep` (the source rectangle the resize will read, see `bicubicSourceRect`) the mean pass stages that
 * rectangle, so the ops before contrast are not run on it again.
 */
export function compileJitter(
  image: Uint8Array,
  w: number,
  h: number,
  factors: JitterFactors,
  keep: SourceRect | null = null,
): JitterProgram {
  checkSize('compileJitter image', w, h);
  checkLength('compileJitter image', image, w * h * 3);
  if (keep && !(keep.x >= 0 && keep.y >= 0 && keep.width > 0 && keep.height > 0 && keep.x + keep.width <= w && keep.y + keep.height <= h)) {
    throw new RangeError(
      `compileJitter: keep rectangle ${keep.width}x${keep.height} at (${keep.x}, ${keep.y}) is not inside the ${w}x${h} image`,
    );
  }
  const steps: JitterStep[] = [];
  let contrastMean: number | null = null;
  // After contrast, when staging: the steps that finish the staged pixels (own tables: pushTable
  // composes in place).
  let rest: JitterStep[] | null = null;
  let stagedRect: SourceRect | null = null;
  const add = (list: JitterStep[], op: JitterOp, f: number, table: Uint8Array | null): void => {
    if (op === 'saturation') list.push({ kind: 'saturation', table: table! });
    else if (op === 'hue') list.push({ kind: 'hue', shift: Math.trunc(f * 255) & 255 });
    else pushTable(list, table!);
  };
  for (const op of factors.order) {
    const f = factors[op];
    if (f === null) continue;
    if (op === 'hue' && !(f >= -0.5 && f <= 0.5)) throw new RangeError(`compileJitter: hue factor ${f} is not in [-0.5, 0.5]`);
    let table: Uint8Array | null = null;
    if (op === 'contrast') {
      if (keep && steps.length > 0) {
        const n = keep.width * keep.height * 3;
        if (stageScratch.length < n) stageScratch = new Uint8Array(Math.ceil(n * 1.25));
        contrastMean = meanLumaStaging(image, w, h, steps, keep, stageScratch);
        stagedRect = { ...keep };
        rest = [];
      } else {
        contrastMean = meanLumaThrough(image, 0, w * h * 3, steps);
      }
      table = blendTable(contrastMean, f32(f));
    } else if (op === 'brightness') {
      table = blendTable(0, f32(f));
    } else if (op === 'saturation') {
      table = saturationTable(f);
    }
    if (rest) add(rest, op, f, table && table.slice());
    add(steps, op, f, table);
  }
  if (!rest || !stagedRect) return { width: w, height: h, steps, contrastMean, staged: null };
  const program: JitterProgram = {
    width: w,
    height: h,
    steps,
    contrastMean,
    staged: { rect: stagedRect, data: stageScratch, steps: rest },
  };
  stageOwner = program;
  return program;
}

/** The program's staged region if its pixels are still in the staging buffer, else null. */
function liveStage(program: JitterProgram): StagedRegion | null {
  return program.staged && stageOwner === program && program.staged.data === stageScratch ? program.staged : null;
}

/** `applyColorJitter` through a compiled program, on the whole image (block-wise). */
export function applyJitterProgram(image: Uint8Array, program: JitterProgram, out: Uint8Array = image): Uint8Array {
  const n = program.width * program.height * 3;
  checkLength('applyJitterProgram image', image, n);
  checkLength('applyJitterProgram output', out, n);
  for (let s = 0; s < n; s += BLOCK) runJitterSteps(program.steps, image, s, out, s, Math.min(BLOCK, n - s));
  return out;
}

/** Bytes per block of the whole-image passes (4096 pixels: the block and the tables stay in L1/L2). */
const BLOCK = 4096 * 3;
let blockScratch: Uint8Array = new Uint8Array(BLOCK);

/**
 * Integer mean luma (`meanLuma`) of the image after `steps`: `lumaThrough` over all of it.
 */
function meanLumaThrough(image: Uint8Array, s: number, len: number, steps: readonly JitterStep[]): number {
  return Math.trunc(lumaThrough(steps, image, s, len) / (len / 3) + 0.5);
}

/**
 * `meanLumaThrough` that also writes the pixels of `rect` after `steps` into `stage` (rows of
 * rect.width pixels): outside the rectangle luma only, inside the steps' output is kept and summed.
 */
function meanLumaStaging(
  image: Uint8Array,
  w: number,
  h: number,
  steps: readonly JitterStep[],
  rect: SourceRect,
  stage: Uint8Array,
): number {
  const row = w * 3;
  const left = rect.x * 3;
  const mid = rect.width * 3;
  const right = row - left - mid;
  let sum = lumaThrough(steps, image, 0, rect.y * row);
  for (let y = rect.y; y < rect.y + rect.height; y++) {
    const at = y * row;
    const d = (y - rect.y) * mid;
    sum += lumaThrough(steps, image, at, left);
    runJitterSteps(steps, image, at + left, stage, d, mid);
    sum += lumaSum(stage, d, mid);
    sum += lumaThrough(steps, image, at + left + mid, right);
  }
  sum += lumaThrough(steps, image, (rect.y + rect.height) * row, (h - rect.y - rect.height) * row);
  return Math.trunc(sum / (w * h) + 0.5);
}

/**
 * Sum of the luma of `len` bytes of `image` from byte s after `steps`, without storing the result:
 * block by block, all steps but the last into a scratch block, the last one fused with the sum.
 */
function lumaThrough(steps: readonly JitterStep[], image: Uint8Array, s: number, len: number): number {
  if (steps.length === 0) return lumaSum(image, s, len);
  const last = steps[steps.length - 1]!;
  const head = steps.length - 1;
  const block = blockScratch;
  let sum = 0;
  for (let from = s, end = s + len; from < end; from += BLOCK) {
    const n = Math.min(BLOCK, end - from);
    let src = image;
    let at = from;
    if (head > 0) {
      runJitterSteps(steps, image, from, block, 0, n, head);
      src = block;
      at = 0;
    }
    if (last.kind === 'table') sum += tableLuma(src, at, n, last.table);
    else if (last.kind === 'saturation') sum += saturationLuma(src, at, n, last.table);
    else sum += hueLuma(src, at, n, last.shift);
  }
  return sum;
}

// PIL's luma weights (`luma`), inlined in the loops below; by channel offset for the hue step.
const LR = 19595;
const LG = 38470;
const LB = 7471;
const PLACE_WEIGHTS = Int32Array.of(LR, LG, LB);

function lumaSum(src: Uint8Array, s: number, len: number): number {
  let sum = 0;
  for (let i = s, end = s + len; i < end; i += 3) sum += (src[i]! * LR + src[i + 1]! * LG + src[i + 2]! * LB + 0x8000) >> 16;
  return sum;
}

function tableLuma(src: Uint8Array, s: number, len: number, table: Uint8Array): number {
  let sum = 0;
  for (let i = s, end = s + len; i < end; i += 3) {
    sum += (table[src[i]!]! * LR + table[src[i + 1]!]! * LG + table[src[i + 2]!]! * LB + 0x8000) >> 16;
  }
  return sum;
}

function saturationLuma(src: Uint8Array, s: number, len: number, table: Uint8Array): number {
  let sum = 0;
  for (let i = s, end = s + len; i < end; i += 3) {
    const r = src[i]!;
    const g = src[i + 1]!;
    const b = src[i + 2]!;
    const l = ((r * LR + g * LG + b * LB + 0x8000) >> 16) << 8;
    sum += (table[l | r]! * LR + table[l | g]! * LG + table[l | b]! * LB + 0x8000) >> 16;
  }
  return sum;
}

/**
 * Runs the first `count` steps (default all) on `len` bytes (whole pixels) of `src` from byte s into
 * `dst` from byte d: the first step reads src, the others work in place on dst.
 */
export function runJitterSteps(
  steps: readonly JitterStep[],
  src: Uint8Array,
  s: number,
  dst: Uint8Array,
  d: number,
  len: number,
  count = steps.length,
): void {
  if (count === 0) {
    dst.set(src.subarray(s, s + len), d);
    return;
  }
  for (let k = 0; k < count; k++) {
    const step = steps[k]!;
    const from = k === 0 ? src : dst;
    const at = k === 0 ? s : d;
    if (step.kind === 'table') tableRun(from, at, dst, d, len, step.table);
    else if (step.kind === 'saturation') saturationRun(from, at, dst, d, len, step.table);
    else hueRun(from, at, dst, d, len, step.shift);
  }
}

function tableRun(src: Uint8Array, s: number, dst: Uint8Array, d: number, len: number, table: Uint8Array): void {
  for (let i = s, o = d, end = s + len; i < end; i += 3, o += 3) {
    dst[o] = table[src[i]!]!;
    dst[o + 1] = table[src[i + 1]!]!;
    dst[o + 2] = table[src[i + 2]!]!;
  }
}

function saturationRun(src: Uint8Array, s: number, dst: Uint8Array, d: number, len: number, table: Uint8Array): void {
  for (let i = s, o = d, end = s + len; i < end; i += 3, o += 3) {
    const r = src[i]!;
    const g = src[i + 1]!;
    const b = src[i + 2]!;
    const l = ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) << 8;
    dst[o] = table[l | r]!;
    dst[o + 1] = table[l | g]!;
    dst[o + 2] = table[l | b]!;
  }
}

/**
 * Tables of the fast hue step (same values as `HsvTables`, arranged for fewer lookups and no branch on
 * the sector): H by the max channel (r, g, b in C's test order) and the max-minus-channel differences of
 * the other two, `hue[max << 16 | d1 << 8 | d2]`; for H's sector, the byte offsets of V, of the one of q
 * or t the sector uses (m), and of p, packed as `v | m << 2 | p << 4`; and m's multiplier by (S, H).
 */
interface FastHueTables {
  hue: Uint8Array;
  place: Uint8Array;
  mMul: Float64Array;
}

let fastHueTables: FastHueTables | null = null;

function buildFastHueTables(): FastHueTables {
  const hue = new Uint8Array(3 << 16);
  for (let a = 0; a < 256; a++) {
    for (let b = 0; b < 256; b++) {
      const cr = a > b ? a : b;
      if (cr === 0) continue; // grey: S = 0, H unused
      const at = (a << 8) | b;
      hue[at] = pilHue(0, a, b, cr, 0);
      hue[(1 << 16) | at] = pilHue(a, 0, b, cr, 1);
      hue[(2 << 16) | at] = pilHue(a, b, 0, cr, 2);
    }
  }
  // hsv2rgb: sector 0 (v, t, p), 1 (q, v, p), 2 (p, v, t), 3 (p, q, v), 4 (t, p, v), 5 (v, p, q).
  const PLACES = [
    0 | (1 << 2) | (2 << 4),
    1 | (0 << 2) | (2 << 4),
    1 | (2 << 2) | (0 << 4),
    2 | (1 << 2) | (0 << 4),
    2 | (0 << 2) | (1 << 4),
    0 | (2 << 2) | (1 << 4),
  ];
  const { sector, qMul, tMul } = (hsvTables ??= buildHsvTables());
  const place = new Uint8Array(256);
  const mMul = new Float64Array(1 << 16);
  for (let hh = 0; hh < 256; hh++) {
    const odd = sector[hh]! & 1; // odd sectors use q, even ones t
    place[hh] = PLACES[sector[hh]!]!;
    for (let s = 0; s < 256; s++) mMul[(s << 8) | hh] = odd ? qMul[(s << 8) | hh]! : tMul[(s << 8) | hh]!;
  }
  return { hue, place, mMul };
}

/**
 * `adjustHue` on a range with H shifted by `shift`: the same table values, fewer lookups. A grey pixel
 * (or one whose S truncates to 0) needs no branch: S = 0 makes both multipliers exactly 1, so p = m = v.
 */
function hueRun(src: Uint8Array, s: number, dst: Uint8Array, d: number, len: number, shift: number): void {
  const { hue, place, mMul } = (fastHueTables ??= buildFastHueTables());
  const { sat, pMul } = hsvTables!;
  for (let i = 0; i < len; i += 3) {
    const r = src[s + i]!;
    const g = src[s + i + 1]!;
    const b = src[s + i + 2]!;
    let v: number;
    let mn: number;
    let key: number;
    if (r >= g && r >= b) {
      v = r;
      mn = g < b ? g : b;
      key = ((r - g) << 8) | (r - b);
    } else if (g >= b) {
      v = g;
      mn = r < b ? r : b;
      key = (1 << 16) | ((g - r) << 8) | (g - b);
    } else {
      v = b;
      mn = r < g ? r : g;
      key = (2 << 16) | ((b - r) << 8) | (b - g);
    }
    const us = sat[((v - mn) << 8) | v]!;
    const hh = (hue[key]! + shift) & 255;
    const at = place[hh]!;
    const o = d + i;
    dst[o + (at & 3)] = v;
    // round(x) as (x + 0.5) | 0: equal for every V and multiplier in the tables (x >= 0, and never the
    // one double below 0.5 where they differ; the tests check all of them), and far cheaper in V8.
    dst[o + ((at >> 2) & 3)] = (v * mMul[(us << 8) | hh]! + 0.5) | 0;
    dst[o + (at >> 4)] = (v * pMul[us]! + 0.5) | 0;
  }
}

/**
 * Luma of `hueRun`'s output summed over a range, without storing it (the contrast mean pass). The pixel
 * decomposition repeats `hueRun`'s on purpose: shared, it would return three values per pixel from a call
 * in the hottest loop of the worker.
 */
function hueLuma(src: Uint8Array, s: number, len: number, shift: number): number {
  const { hue, place, mMul } = (fastHueTables ??= buildFastHueTables());
  const { sat, pMul } = hsvTables!;
  const weight = PLACE_WEIGHTS;
  let sum = 0;
  for (let i = s, end = s + len; i < end; i += 3) {
    const r = src[i]!;
    const g = src[i + 1]!;
    const b = src[i + 2]!;
    let v: number;
    let mn: number;
    let key: number;
    if (r >= g && r >= b) {
      v = r;
      mn = g < b ? g : b;
      key = ((r - g) << 8) | (r - b);
    } else if (g >= b) {
      v = g;
      mn = r < b ? r : b;
      key = (1 << 16) | ((g - r) << 8) | (g - b);
    } else {
      v = b;
      mn = r < g ? r : g;
      key = (2 << 16) | ((b - r) << 8) | (b - g);
    }
    const us = sat[((v - mn) << 8) | v]!;
    const hh = (hue[key]! + shift) & 255;
    const at = place[hh]!;
    const m = (v * mMul[(us << 8) | hh]! + 0.5) | 0;
    const p = (v * pMul[us]! + 0.5) | 0;
    sum += (v * weight[at & 3]! + m * weight[(at >> 2) & 3]! + p * weight[at >> 4]! + 0x8000) >> 16;
  }
  return sum;
}

// ---------------------------------------------------------------------------------------------------
// Normalisation

export const IMAGENET_MEAN: readonly [number, number, number] = [0.485, 0.456, 0.406];
export const IMAGENET_STD: readonly [number, number, number] = [0.229, 0.224, 0.225];

let normLut = new Float32Array(768);
let normKey = '';

/**
 * ToTensor + Normalize (REFERENCE 6.3): out[offset + i] = (v / 255 - mean[c]) / std[c] in float32 (the
 * same float32 steps as torch), HWC order, i.e. one NHWC sample at element `offset`. With `mirror` each
 * row is written left-right mirrored (a horizontal flip fused into this pass, saving one over the image).
 */
export function normalizeInto(
  image: Uint8Array,
  w: number,
  h: number,
  out: Float32Array,
  offset: number,
  mean: readonly number[] = IMAGENET_MEAN,
  std: readonly number[] = IMAGENET_STD,
  mirror = false,
): void {
  const n = w * h * 3;
  checkLength('normalizeInto image', image, n);
  if (!(Number.isInteger(offset) && offset >= 0 && offset + n <= out.length)) {
    throw new RangeError(`normalizeInto: ${w}x${h}x3 values at offset ${offset} do not fit a buffer of ${out.length}`);
  }
  const key = `${mean.join()}|${std.join()}`;
  if (key !== normKey) {
    normLut = new Float32Array(768);
    for (let c = 0; c < 3; c++) {
      for (let v = 0; v < 256; v++) normLut[c * 256 + v] = f32(f32(f32(v / 255) - f32(mean[c]!)) / f32(std[c]!));
    }
    normKey = key;
  }
  const rowLen = w * 3;
  for (let y = 0; y < h; y++) {
    if (mirror) normalizeRunMirrored(image, (y + 1) * rowLen - 3, out, offset + y * rowLen, w, normLut);
    else normalizeRun(image, y * rowLen, out, offset + y * rowLen, w, normLut);
  }
}

// The loops live in small functions called once per row: V8 optimises them once, instead of compiling a
// long loop on-stack (OSR) again at every call (measured: one TurboFan compile per sample, ~4 ms each).
function normalizeRun(image: Uint8Array, p: number, out: Float32Array, o: number, count: number, lut: Float32Array): void {
  for (const end = o + count * 3; o < end; p += 3, o += 3) {
    out[o] = lut[image[p]!]!;
    out[o + 1] = lut[256 + image[p + 1]!]!;
    out[o + 2] = lut[512 + image[p + 2]!]!;
  }
}

/** `normalizeRun` reading pixels backwards from the one at byte `p` (a mirrored row). */
function normalizeRunMirrored(image: Uint8Array, p: number, out: Float32Array, o: number, count: number, lut: Float32Array): void {
  for (const end = o + count * 3; o < end; p -= 3, o += 3) {
    out[o] = lut[image[p]!]!;
    out[o + 1] = lut[256 + image[p + 1]!]!;
    out[o + 2] = lut[512 + image[p + 2]!]!;
  }
}

// ---------------------------------------------------------------------------------------------------
// Composed per-sample transform

/** One phase's train transform (REFERENCE 6.3); sizes are [height, width]. */
export interface AugmentSpec {
  /** ColorJitter (source-side datasets only); null/absent = off. */
  jitter?: JitterParams | null;
  /** Resize to a fixed size; takes precedence over scale/crop. */
  resize?: readonly [number, number] | null;
  /** RandomScale range, relative to the input image. */
  scale?: readonly [number, number] | null;
  /** RandomCrop size (pads image 0 / label 255 when the scaled image is smaller). */
  crop?: readonly [number, number] | null;
  /** RandomHorizontalFlip probability (0/absent = off, no draw). */
  flipProb?: number;
  /** With `resize`: false keeps the label at native resolution (the test transform). Default true. */
  resizeLabel?: boolean;
}

/** ColorJitter of the authors' training transforms (REFERENCE 6.3). */
export const JITTER: Readonly<JitterParams> = { brightness: 0.5, contrast: 0.5, saturation: 0.5, hue: 0.2 };

/** The input sizes [h, w] of a run, and how self-training crops (REFERENCE 6.3: scale 0.5-1.5, jitter on). */
export interface PhaseSpecSizes {
  source: readonly [number, number];
  target: readonly [number, number];
  eval: readonly [number, number];
  ssl?: { scale: readonly [number, number]; jitter: boolean };
}

/**
 * The per-phase augmentation specs of REFERENCE 6.3 at a run's sizes: the one place they are written
 * (the recipe calls this with its config; `AUGMENT_PRESETS` is it at the reference resolutions).
 */
export function augmentSpecs(size: PhaseSpecSizes) {
  const ssl = size.ssl ?? { scale: [0.5, 1.5] as const, jitter: true };
  return {
    /** Warm-up / CL source (GTA5): jitter + resize. */
    warmupSource: { jitter: JITTER, resize: size.source },
    /** Warm-up / CL target (Cityscapes): resize only. */
    warmupTarget: { resize: size.target },
    /** Prototype initialisation over the source set: resize only. */
    prototypeInit: { resize: size.source },
    /** Threshold / pseudo-label pass over the target set: resize only. */
    threshold: { resize: size.target },
    /** SSL self-training on the target with pseudo-labels: jitter + random scale + crop at the target size + flip 0.5. */
    sslTarget: { ...(ssl.jitter ? { jitter: JITTER } : {}), scale: ssl.scale, crop: size.target, flipProb: 0.5 },
    /** Evaluation (REFERENCE 7): image resized, label kept at native resolution. */
    evaluation: { resize: size.eval, resizeLabel: false },
  } satisfies Record<string, AugmentSpec>;
}

/**
 * The specs at the reference resolutions (GTA5 1914x1052 -> 1280x720, Cityscapes 2048x1024). Callers
 * running at reduced resolution derive theirs with `augmentSpecs` or `scaleAugmentSpec`.
 */
export const AUGMENT_PRESETS = augmentSpecs({ source: [720, 1280], target: [512, 1024], eval: [512, 1024] });

export type AugmentPresetName = keyof typeof AUGMENT_PRESETS;

/** A spec with its resize and crop sizes multiplied by `factor` (rounded, at least 1). */
export function scaleAugmentSpec(spec: AugmentSpec, factor: number): AugmentSpec {
  const size = (s: readonly [number, number] | null | undefined): [number, number] | null | undefined =>
    s ? [Math.max(1, Math.round(s[0] * factor)), Math.max(1, Math.round(s[1] * factor))] : s;
  return { ...spec, resize: size(spec.resize), crop: size(spec.crop) };
}

export interface AugmentInput {
  image: Uint8Array;
  label: Uint8Array | null;
  width: number;
  height: number;
}

/** Batch buffers (NHWC float images, per-sample labels) and the sample's index in them. */
export interface AugmentOutput {
  images: Float32Array;
  labels?: Uint8Array | Int32Array | null;
  index: number;
}

/** What was done to one sample (for tests and logs). */
export interface AugmentInfo {
  width: number;
  height: number;
  labelWidth: number;
  labelHeight: number;
  /** Random scale (1 when none); the crop offsets are in the scaled image, negative = padding. */
  scale: number;
  scaledWidth: number;
  scaledHeight: number;
  cropX: number;
  cropY: number;
  flipped: boolean;
  jitter: JitterFactors | null;
}

/** Output size (h, w) of a spec for an input of w x h, or null when it depends on the random scale. */
export function augmentOutputSize(spec: AugmentSpec, w: number, h: number): readonly [number, number] | null {
  if (spec.resize) return spec.resize;
  if (spec.crop) return spec.crop;
  if (spec.scale && !(spec.scale[0] === 1 && spec.scale[1] === 1)) return null;
  return [h, w];
}

let imageScratch: Uint8Array = new Uint8Array(0);
let labelScratch: Uint8Array = new Uint8Array(0);

function grow(buf: Uint8Array, n: number): Uint8Array {
  return buf.length >= n ? buf : new Uint8Array(Math.ceil(n * 1.25));
}

/**
 * The train transform of REFERENCE 6.3 for one sample: [ColorJitter] -> [Resize] or [RandomScale ->
 * RandomCrop] -> [HorizontalFlip] -> ToTensor + Normalize, written into the batch buffers at sample
 * `out.index` (images at index*H*W*3, labels at index*labelH*labelW). The input is not modified. A null
 * input label leaves `out.labels` untouched.
 */
export function augmentSample(input: AugmentInput, spec: AugmentSpec, rng: Rng, out: AugmentOutput): AugmentInfo {
  const { width: w, height: h, label } = input;
  checkSize('augmentSample input', w, h);
  checkLength('augmentSample image', input.image, w * h * 3);
  if (label) checkLength('augmentSample label', label, w * h);

  // 1. Draws, in the reference's order: ColorJitter, then the scale and crop offsets.
  const jitter = spec.jitter ? drawColorJitter(spec.jitter, rng) : null;
  let ow: number;
  let oh: number;
  let placement: ScaleCropPlacement;
  if (spec.resize) {
    [oh, ow] = spec.resize;
    checkSize('augmentSample resize', ow, oh);
    placement = { scale: 1, scaledWidth: ow, scaledHeight: oh, cropX: 0, cropY: 0 };
  } else {
    const scaleRange = spec.scale ?? [1, 1];
    if (spec.crop) {
      placement = drawScaleCrop(w, h, { scaleRange, crop: spec.crop }, rng);
    } else if (!(scaleRange[0] === 1 && scaleRange[1] === 1)) {
      // RandomScale alone: the output is the whole scaled image (its size varies per sample).
      const scale = scaleRange[0] + (scaleRange[1] - scaleRange[0]) * rng.next();
      placement = { scale, scaledWidth: Math.floor(w * scale), scaledHeight: Math.floor(h * scale), cropX: 0, cropY: 0 };
      checkSize(`augmentSample scale ${scale}`, placement.scaledWidth, placement.scaledHeight);
    } else {
      placement = { scale: 1, scaledWidth: w, scaledHeight: h, cropX: 0, cropY: 0 };
    }
    [oh, ow] = spec.crop ?? [placement.scaledHeight, placement.scaledWidth];
  }

  // 2. Bind the jitter to this image (contrast's whole-image mean), staging the source pixels the
  // resize will read; the resize applies it to those pixels only.
  const src = input.image;
  let program: JitterProgram | null = null;
  if (jitter) {
    const v = visibleWindow(placement.scaledWidth, placement.scaledHeight, placement.cropX, placement.cropY, ow, oh);
    const keep = v ? bicubicSourceRect(w, h, placement.scaledWidth, placement.scaledHeight, v.x, v.y, v.width, v.height) : null;
    program = compileJitter(src, w, h, jitter, keep);
  }

  // 3. Resize, or RandomScale -> RandomCrop (only the crop window is resampled).
  let labelW: number;
  let labelH: number;
  let outLabel: Uint8Array | null = null;
  imageScratch = grow(imageScratch, ow * oh * 3);
  if (spec.resize) {
    resizeBicubicWindow(src, w, h, ow, oh, 0, 0, ow, oh, imageScratch, ow, 0, program);
    const resizeLabel = spec.resizeLabel ?? true;
    [labelW, labelH] = resizeLabel ? [ow, oh] : [w, h];
    if (label) {
      labelScratch = grow(labelScratch, labelW * labelH);
      if (resizeLabel) resizeNearestWindow(label, w, h, ow, oh, 1, 0, 0, ow, oh, labelScratch);
      else labelScratch.set(label.subarray(0, w * h));
      outLabel = labelScratch;
    }
  } else {
    [labelW, labelH] = [ow, oh];
    if (label) labelScratch = grow(labelScratch, ow * oh);
    const r = scaleAndCrop(
      src,
      label,
      w,
      h,
      placement.scaledWidth,
      placement.scaledHeight,
      placement.cropX,
      placement.cropY,
      ow,
      oh,
      { image: imageScratch, label: labelScratch },
      program,
    );
    outLabel = r.label;
  }

  // 4. Horizontal flip (the draw happens only when the transform is on, as in the reference list); the
  // image is mirrored while it is normalised.
  const p = spec.flipProb ?? 0;
  const flipped = p > 0 && rng.next() < p;
  if (flipped && outLabel) flipRows(outLabel, labelW, labelH, 1);

  // 5. Normalise into the batch; labels copied as train IDs.
  normalizeInto(imageScratch, ow, oh, out.images, out.index * ow * oh * 3, IMAGENET_MEAN, IMAGENET_STD, flipped);
  if (outLabel && out.labels) {
    const n = labelW * labelH;
    const at = out.index * n;
    if (at + n > out.labels.length) {
      throw new RangeError(`augmentSample: label ${labelW}x${labelH} of sample ${out.index} does not fit a buffer of ${out.labels.length}`);
    }
    out.labels.set(outLabel.subarray(0, n), at);
  }
  return {
    width: ow,
    height: oh,
    labelWidth: labelW,
    labelHeight: labelH,
    scale: placement.scale,
    scaledWidth: placement.scaledWidth,
    scaledHeight: placement.scaledHeight,
    cropX: placement.cropX,
    cropY: placement.cropY,
    flipped,
    jitter,
  };
}

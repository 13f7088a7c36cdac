/**
 * The strong augmentation of online self-training (DACS, Tranheden et al. 2021; DAFormer, Hoyer et al.
 * 2022): the student trains on perturbed mixed images while the teacher labels the plain target, so the
 * student learns to agree with the teacher through colour and blur changes rather than to copy it on the
 * same pixels. Per image, independently:
 *
 * - colour jitter with probability `jitterProb` (DAFormer: applied when a uniform draw exceeds 0.2, i.e.
 *   0.8), strength `strength` (0.2): brightness, contrast and saturation factors uniform in
 *   [1 - s, 1 + s], a hue shift uniform in [-s, s] turns; applied in that order, clipped to [0, 1] after
 *   each, as torchvision's ColorJitter does. Contrast blends with the image's mean luma, saturation with
 *   each pixel's luma (ITU-R 601 weights); the hue shift rotates the chroma plane of YIQ (a linear
 *   stand-in for the HSV hue rotation, exact on grey, which it leaves grey);
 * - Gaussian blur with probability `blurProb` (0.5), sigma uniform in [0.15, 1.15], an odd kernel of
 *   about a tenth of the image's height (width), reflect padding.
 *
 * Pure: the draws (`drawStrongAugment`, from a seeded Rng) come in; images are NHWC, normalised with
 * `norm` (the decode stage's ImageNet mean/std), and come back normalised the same way. No gradient flows through
 * (an input transform).
 */
import * as tf from '@tensorflow/tfjs';

export interface StrongDraw {
  /** Colour jitter factors, or null when this image is not jittered. */
  jitter: { brightness: number; contrast: number; saturation: number; hue: number } | null;
  /** Gaussian blur sigma in pixels, or null when this image is not blurred. */
  blurSigma: number | null;
}

export interface StrongAugmentOptions {
  strength: number;
  jitterProb: number;
  blurProb: number;
}

export const STRONG_AUGMENT_DEFAULTS: StrongAugmentOptions = { strength: 0.2, jitterProb: 0.8, blurProb: 0.5 };

/** One draw per image, in image order; the number of uniforms taken per image is fixed (6). */
export function drawStrongAugment(
  n: number,
  rng: { uniform(lo: number, hi: number): number },
  opts: StrongAugmentOptions = STRONG_AUGMENT_DEFAULTS,
): StrongDraw[] {
  const s = opts.strength;
  return Array.from({ length: n }, () => {
    const jitterOn = rng.uniform(0, 1) < opts.jitterProb;
    const f = [rng.uniform(1 - s, 1 + s), rng.uniform(1 - s, 1 + s), rng.uniform(1 - s, 1 + s), rng.uniform(-s, s)] as const;
    const blurOn = rng.uniform(0, 1) < opts.blurProb;
    const sigma = rng.uniform(0.15, 1.15);
    return {
      jitter: jitterOn ? { brightness: f[0], contrast: f[1], saturation: f[2], hue: f[3] } : null,
      blurSigma: blurOn ? sigma : null,
    };
  });
}

/** Odd Gaussian kernel length for an image side: the odd number at or just below ceil(0.1 * side), >= 1. */
export function blurKernelSize(side: number): number {
  const c = Math.max(1, Math.ceil(0.1 * side));
  return c % 2 === 1 ? c : c - 1;
}

/** Normalised 1-D Gaussian weights of odd length k. */
export function gaussianKernel(k: number, sigma: number): Float32Array {
  const r = (k - 1) / 2;
  const w = Float32Array.from({ length: k }, (_, i) => Math.exp(-((i - r) ** 2) / (2 * sigma * sigma)));
  const sum = w.reduce((a, b) => a + b, 0);
  return w.map((v) => v / sum);
}

const LUMA = [0.299, 0.587, 0.114] as const;
/** RGB -> YIQ and back (FCC); the hue shift rotates (I, Q). */
const RGB_TO_YIQ = [
  [0.299, 0.587, 0.114],
  [0.595716, -0.274453, -0.321263],
  [0.211456, -0.522591, 0.311135],
];

function invert3(m: number[][]): number[][] {
  const [a, b, c] = m[0]!;
  const [d, e, f] = m[1]!;
  const [g, h, i] = m[2]!;
  const A = e! * i! - f! * h!;
  const B = -(d! * i! - f! * g!);
  const C = d! * h! - e! * g!;
  const det = a! * A + b! * B + c! * C;
  return [
    [A / det, -(b! * i! - c! * h!) / det, (b! * f! - c! * e!) / det],
    [B / det, (a! * i! - c! * g!) / det, -(a! * f! - c! * d!) / det],
    [C / det, -(a! * h! - b! * g!) / det, (a! * e! - b! * d!) / det],
  ];
}
const YIQ_TO_RGB = invert3(RGB_TO_YIQ);

/** The 3x3 RGB matrix of a hue shift of `turns` (fractions of a full turn): YIQ_TO_RGB . R(theta) . RGB_TO_YIQ. */
export function hueMatrix(turns: number): number[][] {
  const t = 2 * Math.PI * turns;
  const rot = [
    [1, 0, 0],
    [0, Math.cos(t), -Math.sin(t)],
    [0, Math.sin(t), Math.cos(t)],
  ];
  const mul = (x: number[][], y: number[][]) => x.map((row) => y[0]!.map((_, j) => row.reduce((s, v, k) => s + v * y[k]![j]!, 0)));
  return mul(YIQ_TO_RGB, mul(rot, RGB_TO_YIQ));
}

/** Colour jitter of one [H, W, 3] image in [0, 1]. */
function jitterImage(x: tf.Tensor3D, j: NonNullable<StrongDraw['jitter']>): tf.Tensor3D {
  const clip = (t: tf.Tensor) => tf.clipByValue(t, 0, 1);
  const luma = (t: tf.Tensor) => tf.sum(tf.mul(t, tf.tensor1d([...LUMA])), -1, true);
  let y: tf.Tensor = clip(tf.mul(x, j.brightness));
  const meanLuma = tf.mean(luma(y));
  y = clip(tf.add(tf.mul(tf.sub(y, meanLuma), j.contrast), meanLuma));
  const l = luma(y);
  y = clip(tf.add(tf.mul(tf.sub(y, l), j.saturation), l));
  // pixel (row vector) times M^T: out_c = sum_k M[c][k] in_k
  const m = hueMatrix(j.hue);
  y = clip(tf.matMul(y.reshape([-1, 3]), tf.tensor2d(m).transpose()).reshape(x.shape));
  return y as tf.Tensor3D;
}

/** Separable Gaussian blur of one [H, W, 3] image, reflect padding. */
function blurImage(x: tf.Tensor3D, sigma: number): tf.Tensor3D {
  const [h, w] = x.shape;
  const kh = blurKernelSize(h);
  const kw = blurKernelSize(w);
  let y = x.expandDims(0) as tf.Tensor4D;
  if (kh > 1) {
    const r = (kh - 1) / 2;
    const k = tf.tensor4d(gaussianKernel(kh, sigma), [kh, 1, 1, 1]).tile([1, 1, 3, 1]) as tf.Tensor4D;
    y = tf.depthwiseConv2d(
      tf.mirrorPad(
        y,
        [
          [0, 0],
          [r, r],
          [0, 0],
          [0, 0],
        ],
        'reflect',
      ),
      k,
      1,
      'valid',
    );
  }
  if (kw > 1) {
    const r = (kw - 1) / 2;
    const k = tf.tensor4d(gaussianKernel(kw, sigma), [1, kw, 1, 1]).tile([1, 1, 3, 1]) as tf.Tensor4D;
    y = tf.depthwiseConv2d(
      tf.mirrorPad(
        y,
        [
          [0, 0],
          [0, 0],
          [r, r],
          [0, 0],
        ],
        'reflect',
      ),
      k,
      1,
      'valid',
    );
  }
  return y.squeeze([0]) as tf.Tensor3D;
}

/** Applies `draws[i]` to image i of an NHWC batch normalised by `norm`; returns a new batch normalised alike. */
export function strongAugment(
  images: tf.Tensor4D,
  draws: readonly StrongDraw[],
  norm: { mean: readonly number[]; std: readonly number[] },
): tf.Tensor4D {
  const [n, , , c] = images.shape;
  if (c !== 3) throw new Error(`strongAugment: images must have 3 channels, got ${c}`);
  if (draws.length !== n) throw new Error(`strongAugment: ${draws.length} draws for ${n} images`);
  return tf.tidy(() => {
    const mean = tf.tensor1d([...norm.mean]);
    const std = tf.tensor1d([...norm.std]);
    const out = tf.unstack(images).map((img, i) => {
      const d = draws[i]!;
      if (!d.jitter && d.blurSigma === null) return img;
      let x = tf.add(tf.mul(img, std), mean) as tf.Tensor3D;
      if (d.jitter) x = jitterImage(x, d.jitter);
      if (d.blurSigma !== null) x = blurImage(x, d.blurSigma);
      return tf.div(tf.sub(x, mean), std);
    });
    return tf.stack(out) as tf.Tensor4D;
  });
}

/**
 * Losses: segmentation cross-entropy, the pixel-to-prototype contrastive loss and the adversarial BCE.
 *
 * - `segCrossEntropy`: softmax CE of logits / temperature, mean over non-255 pixels (the authors divide
 *   source logits by 1.8, REFERENCE 8.6). Upsampling to label size is the caller's job.
 * - `contrastiveLoss`: REFERENCE 4.1 (`PixelCLLoss`): f̂ = f / max(‖f‖₂, 1e-12) per pixel,
 *   z = f̂·Pᵀ / τ (τ = 100 in the authors' code, P not re-normalised), CE against the mask, mean over
 *   non-255 pixels. Gradient reaches the features only, never the prototypes.
 * - `bceWithLogits`: the discriminator loss of the warm-up (REFERENCE 3.4), against a constant 0/1 label.
 *
 * Both CE losses return 0 (not NaN, unlike torch, REFERENCE 8.20) when no pixel is valid. Mask values
 * are not range-checked here (no device sync in the hot loop): anything outside 0..K-1 counts as
 * ignored; use `validateMask` where masks enter the system.
 */
import * as tf from '@tensorflow/tfjs';
import { crossEntropyGradWasm } from './cross-entropy-wasm.ts';
import { hostTensor, hostView, onHostBackend } from './host-memory.ts';
import { maskOneHot } from './masks.ts';
import { shapeStr } from './shape.ts';

function checkRank(t: tf.Tensor, rank: number, fn: string, name: string, layout: string): void {
  if (t.rank !== rank) throw new Error(`${fn}: ${name} must be rank ${rank} ${layout}, got shape ${shapeStr(t.shape)}`);
}

function checkMask(mask: tf.Tensor, ref: tf.Tensor, fn: string, maskName: string, refName: string): void {
  checkRank(mask, 3, fn, maskName, '[B,h,w]');
  if (mask.dtype !== 'int32') throw new Error(`${fn}: ${maskName} must be int32, got ${mask.dtype}`);
  if (mask.shape.some((d, i) => d !== ref.shape[i])) {
    throw new Error(`${fn}: ${maskName} ${shapeStr(mask.shape)} does not match ${refName} ${shapeStr(ref.shape)}`);
  }
}

/**
 * Identity whose gradient is zero: the value is used as a constant (tfjs has no `stopGradient`).
 * Used for the prototypes in the contrastive loss and the features in the prototype update.
 */
export function stopGradient<T extends tf.Tensor>(x: T): T {
  const op = tf.customGrad((...inputs: Array<tf.Tensor | tf.GradSaveFunc>) => ({
    value: (inputs[0] as tf.Tensor).clone(),
    gradFunc: (dy: tf.Tensor) => tf.zerosLike(dy),
  }));
  return op(x) as T;
}

/**
 * A copy with no gradient-tape history, through host memory: for small tensors whose *values* feed
 * integer ops inside a loss (the argmax of the source logits in the agreement filter, REFERENCE 4.2).
 * tfjs would otherwise try to differentiate ArgMax/Equal on the way to the loss and fail.
 */
export function detach<T extends tf.Tensor>(x: T): T {
  return tf.tensor(x.dataSync(), x.shape, x.dtype) as T;
}

/**
 * Per-pixel L2 normalisation over the last (channel) axis: f / max(‖f‖₂, 1e-12), as torch's
 * `F.normalize` (REFERENCE 4.1 step 1). Computed as f / sqrt(max(Σf², 1e-24)) so that an all-zero
 * feature (common after ReLU) has a zero, not NaN, gradient.
 */
export function normalizeFeatures<T extends tf.Tensor>(features: T): T {
  return tf.tidy(() => features.div(tf.sqrt(tf.maximum(features.square().sum(-1, true), 1e-24))) as T);
}

/**
 * Mean of −log softmax(logits)[label] over the pixels whose label is in 0..K-1 (0 if there are none),
 * each times its weight when given. logits [N,K] float, labels [N] int32 (anything outside 0..K-1 is
 * ignored), weights [N] constants (no gradient reaches them).
 *
 * On the host backends (wasm, cpu) one op computes value and gradient from one softmax: the tensor
 * formula below costs two exponentials per logit (log-softmax forward, its gradient) and a one-hot
 * product; this one exp (the backend's Softmax kernel), then a loop over host memory. Measured at a
 * training step's size ([32768, 19], wasm): 11.35 -> 4.08 ms forward + backward.
 */
function maskedCrossEntropy(logits: tf.Tensor2D, labels: tf.Tensor1D, weights?: tf.Tensor1D): tf.Scalar {
  if (hostCrossEntropy && onHostBackend()) return hostMaskedCrossEntropy(logits, labels, weights);
  return tf.tidy(() => {
    const onehot = maskOneHot(labels, logits.shape[1]) as tf.Tensor2D;
    const perPixel = tf.logSoftmax(logits).neg().mul(onehot);
    const nll = (weights ? perPixel.mul(weights.expandDims(1)) : perPixel).sum(); // +0, not -0, when nothing is valid
    const valid = onehot.sum();
    return nll.div(tf.maximum(valid, 1)) as tf.Scalar;
  });
}

let hostCrossEntropy = true;

/** Tests only: false makes the CE losses use the tensor formula on every backend. */
export function setHostCrossEntropy(enabled: boolean): void {
  hostCrossEntropy = enabled;
}

/** Below this a softmax entry is recomputed as exp(log-softmax) from the logits (float32 underflow). */
const TINY = 1e-30;

/**
 * `maskedCrossEntropy` as one op over host memory. Value: Σ w_i (lse_i − z_{i,y_i}) / max(valid, 1),
 * accumulated in float64; lse_i − z_{i,y_i} = −log p_{i,y_i} from the Softmax kernel's p, or, where
 * p_{i,y_i} is below TINY (a float32 softmax underflows long before a log-softmax does), from the row's
 * logits. Gradient: dy · w_i (p_i − onehot(y_i)) / max(valid, 1) on valid rows, 0 on the others.
 */
function hostMaskedCrossEntropy(logits: tf.Tensor2D, labels: tf.Tensor1D, weights?: tf.Tensor1D): tf.Scalar {
  const [n, k] = logits.shape;
  const op = tf.customGrad((...inputs: Array<tf.Tensor | tf.GradSaveFunc>) => {
    const z = inputs[0] as tf.Tensor2D;
    const save = inputs[1] as tf.GradSaveFunc;
    const probs = tf.softmax(z);
    // the backward reads the softmax, labels and weights where they are (host memory, no copies)
    save(weights ? [probs, labels, weights] : [probs, labels]);
    let valid = 0;
    let nll = 0;
    {
      // views: no backend allocation until the loop ends (z's copy, where needed, is a JS array)
      const p = hostView(probs);
      const y = hostView<Int32Array>(labels);
      const w = weights ? hostView(weights) : undefined;
      let zs: Float32Array | undefined;
      for (let i = 0; i < n; i++) {
        const c = y[i]!;
        if (!(c >= 0 && c < k)) continue;
        valid++;
        const py = p[i * k + c]!;
        let loss: number;
        if (py >= TINY) loss = -Math.log(py);
        else {
          zs ??= Float32Array.from(hostView(z));
          let m = -Infinity;
          for (let j = i * k; j < (i + 1) * k; j++) m = Math.max(m, zs[j]!);
          let sum = 0;
          for (let j = i * k; j < (i + 1) * k; j++) sum += Math.exp(zs[j]! - m);
          loss = m + Math.log(sum) - zs[i * k + c]!;
        }
        nll += w ? w[i]! * loss : loss;
      }
    }
    const denom = Math.max(valid, 1);
    return {
      value: tf.scalar(nll / denom),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const scale = dy.dataSync()[0]! / denom;
        return hostTensor<tf.Rank.R2>([n, k], (g) => {
          const p = hostView(saved[0]!);
          const y = hostView<Int32Array>(saved[1]!);
          const w = weights ? hostView(saved[2]!) : undefined;
          if (crossEntropyGradWasm(p, y, w, k, scale, g)) return;
          for (let i = 0; i < n; i++) {
            const c = y[i]!;
            const row = i * k;
            if (!(c >= 0 && c < k)) {
              for (let j = row; j < row + k; j++) g[j] = 0;
              continue;
            }
            const s = w ? w[i]! * scale : scale;
            for (let j = row; j < row + k; j++) g[j] = p[j]! * s;
            g[row + c]! -= s;
          }
        });
      },
    };
  });
  return op(logits) as tf.Scalar;
}

export interface SegCrossEntropyOptions {
  /** Logits are divided by this before the softmax. Default 1 (authors: 1.8 on source logits). */
  temperature?: number;
  /** Per-pixel weights [B,h,w] of the cross-entropy (the mean-teacher confidence weight); default 1. */
  pixelWeights?: tf.Tensor3D;
}

/**
 * Paper Eq. 7 (L_seg), and Eq. 9 (L_ssl) with pseudo-labels: softmax cross-entropy of logits [B,h,w,K] /
 * temperature against int32 labels [B,h,w]; mean over the pixels whose label is not 255 (each times its
 * `pixelWeights` entry when given); 0 if none. Differentiable w.r.t. logits.
 */
export function segCrossEntropy(logits: tf.Tensor4D, labels: tf.Tensor3D, opts: SegCrossEntropyOptions = {}): tf.Scalar {
  const fn = 'segCrossEntropy';
  checkRank(logits, 4, fn, 'logits', '[B,h,w,K]');
  checkMask(labels, logits, fn, 'labels', 'logits');
  const temperature = opts.temperature ?? 1;
  if (!(temperature > 0)) throw new Error(`${fn}: temperature must be > 0, got ${temperature}`);
  const k = logits.shape[3];
  return tf.tidy(() => {
    const z = logits.reshape([-1, k]) as tf.Tensor2D;
    const scaled = temperature === 1 ? z : (z.div(temperature) as tf.Tensor2D);
    if (opts.pixelWeights && shapeStr(opts.pixelWeights.shape) !== shapeStr(labels.shape)) {
      throw new Error(`${fn}: pixelWeights ${shapeStr(opts.pixelWeights.shape)} do not match labels ${shapeStr(labels.shape)}`);
    }
    return maskedCrossEntropy(scaled, labels.flatten(), opts.pixelWeights?.flatten() as tf.Tensor1D | undefined);
  });
}

export interface ContrastiveLossOptions {
  /** Logits are f̂·Pᵀ divided by this. Default 100, the authors' value (REFERENCE 4.1). */
  temperature?: number;
}

/**
 * Pixel-to-prototype contrastive loss (REFERENCE 4.1): paper Eq. 1 (the InfoNCE term l(u, v+, {v-}))
 * summed as Eq. 4 (source, L_cl^s) or Eq. 6 (target, L_cl^t) over the masked pixels: features [B,h,w,C] are
 * L2-normalised per pixel, logits = f̂·Pᵀ / temperature with prototypes [K,C] (row = class, used as
 * constants), cross-entropy against mask [B,h,w], mean over non-255 pixels; 0 if none. With τ = 100
 * the value sits near ln K per domain (2·ln K for source + target).
 */
export function contrastiveLoss(
  features: tf.Tensor4D,
  mask: tf.Tensor3D,
  prototypes: tf.Tensor2D,
  opts: ContrastiveLossOptions = {},
): tf.Scalar {
  const fn = 'contrastiveLoss';
  checkRank(features, 4, fn, 'features', '[B,h,w,C]');
  checkMask(mask, features, fn, 'mask', 'features');
  checkRank(prototypes, 2, fn, 'prototypes', '[K,C]');
  const c = features.shape[3];
  if (prototypes.shape[1] !== c) {
    throw new Error(
      `${fn}: prototypes ${shapeStr(prototypes.shape)} have ${prototypes.shape[1]} channels but features ${shapeStr(features.shape)} have ${c}`,
    );
  }
  const temperature = opts.temperature ?? 100;
  if (!(temperature > 0)) throw new Error(`${fn}: temperature must be > 0, got ${temperature}`);
  return tf.tidy(() => {
    const f = normalizeFeatures(features.reshape([-1, c]) as tf.Tensor2D);
    // Transpose explicitly: tfjs-wasm's matMul with transposeB is several times slower.
    const logits = tf.matMul(f, stopGradient(prototypes).transpose()).div(temperature) as tf.Tensor2D;
    return maskedCrossEntropy(logits, mask.flatten());
  });
}

/**
 * Mean binary cross-entropy of `logits` (any shape) against the constant label `target` (0 or 1), in
 * the stable form max(x,0) − x·t + log(1 + exp(−|x|)) (torch's BCEWithLogitsLoss).
 */
export function bceWithLogits(logits: tf.Tensor, target: number): tf.Scalar {
  if (target !== 0 && target !== 1) throw new Error(`bceWithLogits: target must be 0 or 1, got ${target}`);
  if (logits.size === 0) throw new Error(`bceWithLogits: logits are empty (shape ${shapeStr(logits.shape)})`);
  return tf.tidy(() => {
    const x = tf.cast(logits, 'float32');
    const pos = tf.relu(x);
    const soft = tf.log1p(tf.exp(tf.abs(x).neg()));
    const loss = target === 1 ? pos.sub(x).add(soft) : pos.add(soft);
    return loss.mean() as tf.Scalar;
  });
}

/**
 * Building blocks shared by the backbones, the ASPP classifier and the discriminator: a convolution
 * (HWIO weight, optional bias, PyTorch padding, atrous via `conv2d`) and batch normalisation in the two
 * modes SPCL uses (REFERENCE 3.1):
 * - 'frozen': FrozenBatchNorm of the authors' code, y = x * w / sqrt(var) + (b - mean * w / sqrt(var)),
 *   no epsilon, all four tensors fixed buffers (warm-up, contrastive training);
 * - 'trainable': ordinary BatchNorm (eps 1e-5, momentum 0.1, unbiased running variance), batch
 *   statistics in training mode (self-training phase). A training-mode forward may leave the running
 *   statistics alone (`track` false): a source batch normalised by its own statistics while the running
 *   ones follow the target domain only (`model.bnStats: 'target'`, the recipe's choice for nets from scratch).
 */
import * as tf from '@tensorflow/tfjs';
import { conv2d, type ConvOptions } from '../conv.ts';
import { ParamStore, type Initializer, type ParamGroup } from './params.ts';
import { hostTensors, hostView, onHostBackend } from '../host-memory.ts';
import { hostBatchNorm, hostBatchStats, type HostBatchStats } from './batch-norm-host.ts';
import { FrozenBatchNorm } from './frozen-batch-norm.ts';

export type BnMode = 'frozen' | 'trainable';
export type Layer = (x: tf.Tensor4D) => tf.Tensor4D;

export interface ConvSpec extends ConvOptions {
  cin: number;
  cout: number;
  kernel: number;
  bias?: boolean;
  init: Initializer;
  biasInit?: Initializer;
}

export function convLayer(store: ParamStore, name: string, group: ParamGroup, spec: ConvSpec): Layer {
  const w = store.add(`${name}.weight`, [spec.kernel, spec.kernel, spec.cin, spec.cout], group, 'weight', spec.init);
  const b = spec.bias ? store.add(`${name}.bias`, [spec.cout], group, 'bias', spec.biasInit ?? { kind: 'const', value: 0 }) : null;
  const opts: ConvOptions = { stride: spec.stride, dilation: spec.dilation, pad: spec.pad };
  return (x) => {
    const y = conv2d(x, w as tf.Tensor4D, opts);
    return b ? (tf.add(y, b) as tf.Tensor4D) : y;
  };
}

export interface BatchNormState {
  mode: BnMode;
  training: boolean;
  /** In training mode, whether this forward updates the running statistics (PyTorch: always). */
  track: boolean;
  /**
   * Data-parallel replicas (src/parallel): the element-wise sum of a vector over every replica of the
   * step. When set, batch statistics (and their gradient) are those of the whole batch across replicas,
   * not of this replica's shard (synchronised BN); unset, a single process's BN.
   */
  sum?: CrossReplicaSum | null;
}

/** Sum of one vector per replica, the same result in every replica (src/parallel/collective.ts). */
export type CrossReplicaSum = (values: Float32Array) => Float32Array;

export const BN_EPS = 1e-5;
export const BN_MOMENTUM = 0.1;

let hostBatchNormEnabled = true;

/** Tests only: false makes trainable BN use the tensor formula on every backend (the host loops otherwise, wasm and cpu). */
export function setHostBatchNorm(enabled: boolean): void {
  hostBatchNormEnabled = enabled;
}

/** Batch norm whose behaviour follows a shared, mutable `state` (the model's BN switch). */
export function batchNormLayer(store: ParamStore, name: string, group: ParamGroup, channels: number, state: BatchNormState): Layer {
  const gamma = store.add(`${name}.weight`, [channels], group, 'bn-affine', { kind: 'const', value: 1 });
  const beta = store.add(`${name}.bias`, [channels], group, 'bn-affine', { kind: 'const', value: 0 });
  const mean = store.add(`${name}.running_mean`, [channels], group, 'bn-stat', { kind: 'const', value: 0 });
  const variance = store.add(`${name}.running_var`, [channels], group, 'bn-stat', { kind: 'const', value: 1 });
  const frozen = new FrozenBatchNorm({ gamma, beta, mean, variance });
  return (x) => {
    // Frozen: an affine map from fixed buffers (gamma/beta are non-trainable in this mode).
    if (state.mode === 'frozen') return frozen.apply(x);
    if (!state.training) {
      return tf.batchNorm4d(x, mean as tf.Tensor1D, variance as tf.Tensor1D, beta as tf.Tensor1D, gamma as tf.Tensor1D, BN_EPS);
    }
    if (hostBatchNormEnabled && onHostBackend()) {
      const stats = hostBatchStats(x, state.sum ?? null);
      if (state.track) {
        if (hostRunningStats) trackRunningHost(mean, variance, stats);
        else
          tf.tidy(() =>
            trackRunning(
              mean,
              variance,
              tf.tensor1d(Float32Array.from(stats.mean)),
              tf.tensor1d(Float32Array.from(stats.variance)),
              stats.count,
            ),
          );
      }
      return hostBatchNorm(x, stats, gamma as tf.Tensor1D, beta as tf.Tensor1D, BN_EPS, state.sum ?? null);
    }
    const synced = state.sum ? syncedMoments(x, state.sum) : null;
    const moments = synced ?? tf.moments(x, [0, 1, 2]);
    const n = synced?.count ?? x.shape[0] * x.shape[1] * x.shape[2];
    if (state.track) tf.tidy(() => trackRunning(mean, variance, moments.mean, moments.variance, n));
    const m = synced ?? { mean: moments.mean as tf.Tensor1D, variance: moments.variance as tf.Tensor1D, count: n };
    return explicitBatchNorm(x, m, gamma as tf.Tensor1D, beta as tf.Tensor1D, state.sum ?? null);
  };
}

/**
 * Running statistics as PyTorch: momentum 0.1, the unbiased batch variance (`batchVariance` is biased, over
 * `n` pixels). Assignments are not recorded on the tape: no gradient flows through them.
 */
function trackRunning(mean: tf.Variable, variance: tf.Variable, batchMean: tf.Tensor, batchVariance: tf.Tensor, n: number): void {
  const unbiased = tf.mul(batchVariance, n / Math.max(1, n - 1));
  mean.assign(tf.add(tf.mul(mean, 1 - BN_MOMENTUM), tf.mul(batchMean, BN_MOMENTUM)));
  variance.assign(tf.add(tf.mul(variance, 1 - BN_MOMENTUM), tf.mul(unbiased, BN_MOMENTUM)));
}

let hostRunningStats = true;

/** Tests only: false updates the running statistics with tensor ops on the host backends too. */
export function setHostRunningStats(enabled: boolean): void {
  hostRunningStats = enabled;
}

/**
 * `trackRunning` on the host backends as one loop per layer: its six kernels cost their dispatch on
 * vectors of a layer's channels (~3 ms a step over the small DeepLab's two passes). The same float32
 * operations, each rounded as its kernel rounds it (the batch statistics rounded to float32 first, as
 * `tf.tensor1d` does): the same bits.
 */
function trackRunningHost(mean: tf.Variable, variance: tf.Variable, stats: HostBatchStats): void {
  const f32 = Math.fround;
  const [keep, rate, unbias] = [f32(1 - BN_MOMENTUM), f32(BN_MOMENTUM), f32(stats.count / Math.max(1, stats.count - 1))];
  const [m, v] = hostTensors([mean.shape, variance.shape], ([mOut, vOut]) => {
    const [rm, rv] = [hostView(mean), hostView(variance)];
    for (let k = 0; k < rm.length; k++) {
      mOut![k] = f32(rm[k]! * keep) + f32(f32(stats.mean[k]!) * rate);
      vOut![k] = f32(rv[k]! * keep) + f32(f32(f32(stats.variance[k]!) * unbias) * rate);
    }
  });
  mean.assign(m as tf.Tensor1D);
  variance.assign(v as tf.Tensor1D);
  tf.dispose([m!, v!]);
}

interface SyncedMoments {
  mean: tf.Tensor1D;
  variance: tf.Tensor1D;
  /** Pixels of the whole batch (every replica's). */
  count: number;
}

/**
 * Mean and biased variance per channel over every replica's pixels, in two passes as tf.moments (squared
 * deviations from the global mean, not E[x^2] - E[x]^2). Constants for the tape: their dependence on x
 * is in `explicitBatchNorm`'s gradient.
 */
function syncedMoments(x: tf.Tensor4D, sum: CrossReplicaSum): SyncedMoments {
  const c = x.shape[3];
  const local = new Float32Array(c + 1);
  local.set(tf.tidy(() => tf.sum(x, [0, 1, 2])).dataSync() as Float32Array);
  local[c] = x.shape[0] * x.shape[1] * x.shape[2];
  const total = sum(local);
  const count = total[c]!;
  const mean = tf.tensor1d(total.subarray(0, c).map((v) => v / count));
  const squares = tf.tidy(() => tf.sum(tf.square(tf.sub(x, mean)), [0, 1, 2])).dataSync() as Float32Array;
  const variance = tf.tensor1d(sum(squares).map((v) => v / count));
  return { mean, variance, count };
}

/**
 * Batch norm in training mode by the batch's statistics `m` (constants here), with its gradient as one
 * formula instead of tfjs's autodiff through `moments` (measured on wasm, small DeepLab, batch 4:
 * 118-120 ms per warm-up step against 195-200 ms, the same math): x^ the normalised input, N the batch's
 * pixels, dx = gamma / sigma * (dy - sum(dy) / N - x^ * sum(dy * x^) / N). With `sum` (data-parallel
 * replicas) the two sums are over every replica's pixels; d gamma and d beta are this replica's sums
 * (the replicas' gradients are added afterwards). Without it, nothing leaves the device.
 */
function explicitBatchNorm(
  x: tf.Tensor4D,
  m: SyncedMoments,
  gamma: tf.Tensor1D,
  beta: tf.Tensor1D,
  sum: CrossReplicaSum | null,
): tf.Tensor4D {
  const c = x.shape[3];
  // tfjs passes the inputs and then `save` as one rest list
  const f = tf.customGrad(((xs: tf.Tensor, g: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
    const invStd = tf.rsqrt(tf.add(m.variance, BN_EPS));
    const xhat = tf.mul(tf.sub(xs, m.mean), invStd);
    save([xhat, invStd, g]);
    return {
      value: tf.add(tf.mul(xhat, g), b),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [xh, inv, gm] = saved as [tf.Tensor, tf.Tensor, tf.Tensor];
        const dBeta = tf.sum(dy, [0, 1, 2]);
        const dGamma = tf.sum(tf.mul(dy, xh), [0, 1, 2]);
        let meanDy: tf.Tensor;
        let meanDyXhat: tf.Tensor;
        if (sum) {
          const local = new Float32Array(2 * c);
          local.set(dBeta.dataSync() as Float32Array, 0);
          local.set(dGamma.dataSync() as Float32Array, c);
          const total = sum(local);
          meanDy = tf.tensor1d(total.subarray(0, c).map((v) => v / m.count));
          meanDyXhat = tf.tensor1d(total.subarray(c).map((v) => v / m.count));
        } else {
          meanDy = tf.div(dBeta, m.count);
          meanDyXhat = tf.div(dGamma, m.count);
        }
        const dx = tf.mul(tf.mul(gm, inv), tf.sub(tf.sub(dy, meanDy), tf.mul(xh, meanDyXhat)));
        return [dx, dGamma, dBeta];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return f(x, gamma, beta) as tf.Tensor4D;
}

export function relu(x: tf.Tensor4D): tf.Tensor4D {
  return tf.relu(x);
}

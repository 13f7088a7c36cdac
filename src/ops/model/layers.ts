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
}

export const BN_EPS = 1e-5;
export const BN_MOMENTUM = 0.1;

/** Batch norm whose behaviour follows a shared, mutable `state` (the model's BN switch). */
export function batchNormLayer(store: ParamStore, name: string, group: ParamGroup, channels: number, state: BatchNormState): Layer {
  const gamma = store.add(`${name}.weight`, [channels], group, 'bn-affine', { kind: 'const', value: 1 });
  const beta = store.add(`${name}.bias`, [channels], group, 'bn-affine', { kind: 'const', value: 0 });
  const mean = store.add(`${name}.running_mean`, [channels], group, 'bn-stat', { kind: 'const', value: 0 });
  const variance = store.add(`${name}.running_var`, [channels], group, 'bn-stat', { kind: 'const', value: 1 });
  return (x) => {
    if (state.mode === 'frozen') {
      // Frozen: an affine map from fixed buffers (gamma/beta are non-trainable in this mode).
      const scale = tf.mul(gamma, tf.rsqrt(variance));
      const shift = tf.sub(beta, tf.mul(mean, scale));
      return tf.add(tf.mul(x, scale), shift) as tf.Tensor4D;
    }
    if (!state.training) {
      return tf.batchNorm4d(x, mean as tf.Tensor1D, variance as tf.Tensor1D, beta as tf.Tensor1D, gamma as tf.Tensor1D, BN_EPS);
    }
    const moments = tf.moments(x, [0, 1, 2]);
    const n = x.shape[0] * x.shape[1] * x.shape[2];
    // Running statistics as PyTorch: momentum 0.1, unbiased batch variance.
    if (state.track)
      tf.tidy(() => {
        // Assignments are not recorded on the tape: no gradient flows through the running statistics.
        const unbiased = tf.mul(moments.variance, n / Math.max(1, n - 1));
        mean.assign(tf.add(tf.mul(mean, 1 - BN_MOMENTUM), tf.mul(moments.mean, BN_MOMENTUM)));
        variance.assign(tf.add(tf.mul(variance, 1 - BN_MOMENTUM), tf.mul(unbiased, BN_MOMENTUM)));
      });
    return tf.batchNorm4d(
      x,
      moments.mean as tf.Tensor1D,
      moments.variance as tf.Tensor1D,
      beta as tf.Tensor1D,
      gamma as tf.Tensor1D,
      BN_EPS,
    );
  };
}

export function relu(x: tf.Tensor4D): tf.Tensor4D {
  return tf.relu(x);
}

/**
 * DeepLab-v2 ASPP classifier (REFERENCE 3.2): four parallel 3x3 convs C -> K with dilation = padding in
 * {6, 12, 18, 24}, with bias, outputs summed (no BN, ReLU, dropout or pooling branch). Weights
 * N(0, 0.01); biases PyTorch's default U(+-1/sqrt(9C)). Names `classifier.conv2d_list.{i}.{weight,bias}`.
 */
import * as tf from '@tensorflow/tfjs';
import { convLayer, type Layer } from './layers.ts';
import { torchDefaultBound, type ParamStore } from './params.ts';

export const ASPP_DILATIONS = [6, 12, 18, 24] as const;

export function asppClassifier(store: ParamStore, channels: number, numClasses: number): Layer {
  const branches = ASPP_DILATIONS.map((d, i) =>
    convLayer(store, `classifier.conv2d_list.${i}`, 'classifier', {
      cin: channels,
      cout: numClasses,
      kernel: 3,
      dilation: d,
      pad: d,
      bias: true,
      init: { kind: 'normal', std: 0.01 },
      biasInit: { kind: 'uniform', bound: torchDefaultBound(channels * 9) },
    }),
  );
  return (x) => tf.addN(branches.map((branch) => branch(x))) as tf.Tensor4D;
}

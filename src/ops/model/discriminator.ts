/**
 * Output-space discriminator of the warm-up phase (REFERENCE 3.4, AdaptSegNet's FCDiscriminator):
 * input a K-channel softmax map at full input resolution; five 4x4 stride-2 pad-1 convs
 * K -> 64 -> 128 -> 256 -> 512 -> 1 with bias, LeakyReLU(0.2) after the first four, no normalisation.
 * Output: patch logits (e.g. 16x32 for a 512x1024 input). Names `conv1..conv4`, `classifier`.
 */
import * as tf from '@tensorflow/tfjs';
import { convLayer, type Layer } from './layers.ts';
import { ParamStore, torchDefaultBound } from './params.ts';

export interface DiscriminatorConfig {
  numClasses: number;
  /** Width of the first conv (64 in the paper). */
  ndf?: number;
  seed?: number;
}

export interface Discriminator {
  readonly store: ParamStore;
  forward(probs: tf.Tensor4D): tf.Tensor4D;
  dispose(): void;
}

export function discriminator(cfg: DiscriminatorConfig): Discriminator {
  const ndf = cfg.ndf ?? 64;
  const store = new ParamStore(cfg.seed ?? 0);
  const widths = [cfg.numClasses, ndf, ndf * 2, ndf * 4, ndf * 8, 1];
  const names = ['conv1', 'conv2', 'conv3', 'conv4', 'classifier'];
  const convs: Layer[] = names.map((name, i) => {
    const cin = widths[i]!;
    const bound = torchDefaultBound(cin * 16);
    return convLayer(store, name, 'discriminator', {
      cin,
      cout: widths[i + 1]!,
      kernel: 4,
      stride: 2,
      pad: 1,
      bias: true,
      init: { kind: 'uniform', bound },
      biasInit: { kind: 'uniform', bound },
    });
  });
  return {
    store,
    forward: (probs) => {
      if (probs.rank !== 4 || probs.shape[3] !== cfg.numClasses) {
        throw new Error(`discriminator: expected softmax maps [B,H,W,${cfg.numClasses}], got shape [${probs.shape}]`);
      }
      return convs.reduce((y, conv, i) => (i < convs.length - 1 ? tf.leakyRelu(conv(y), 0.2) : conv(y)), probs);
    },
    dispose: () => store.dispose(),
  };
}

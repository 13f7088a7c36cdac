/**
 * DeepLab-v2 VGG-16 encoder (REFERENCE 3.3): torchvision VGG-16 `features` without pool4 and pool5
 * (pools 1-3 keep output stride 8), conv5_x at dilation 2, then fc6 (3x3, 512->1024, dilation 4) and fc7
 * (3x3, 1024->1024, dilation 4), each followed by ReLU. Output = fc7 after ReLU, 1024 channels.
 * Names follow torchvision (`backbone.features.{index}`), fc6/fc7 under `backbone.`.
 */
import * as tf from '@tensorflow/tfjs';
import { convLayer, relu, type Layer } from './layers.ts';
import { torchDefaultBound, type ParamStore } from './params.ts';
import type { Encoder } from './resnet.ts';

/** [torchvision features index, out channels, dilation]; 'M' = 2x2/2 max-pool. */
const FEATURES: readonly ([number, number, number] | 'M')[] = [
  [0, 64, 1],
  [2, 64, 1],
  'M',
  [5, 128, 1],
  [7, 128, 1],
  'M',
  [10, 256, 1],
  [12, 256, 1],
  [14, 256, 1],
  'M',
  [17, 512, 1],
  [19, 512, 1],
  [21, 512, 1],
  [24, 512, 2],
  [26, 512, 2],
  [28, 512, 2],
];

export interface VggConfig {
  /** Divides every width (1 = VGG-16); tests use narrower nets through the same code path. */
  widthDivisor: number;
}

export function vgg16Encoder(store: ParamStore, cfg: VggConfig = { widthDivisor: 1 }): Encoder {
  const g = 'backbone' as const;
  const layers: Layer[] = [];
  let cin = 3;
  for (const item of FEATURES) {
    if (item === 'M') {
      layers.push((x) => tf.maxPool(x, 2, 2, 'valid'));
      continue;
    }
    const [index, width, dilation] = item;
    const cout = Math.max(1, Math.round(width / cfg.widthDivisor));
    const bound = torchDefaultBound(cin * 9);
    const conv = convLayer(store, `backbone.features.${index}`, g, {
      cin,
      cout,
      kernel: 3,
      dilation,
      pad: dilation,
      bias: true,
      init: { kind: 'uniform', bound },
      biasInit: { kind: 'uniform', bound },
    });
    layers.push((x) => relu(conv(x)));
    cin = cout;
  }
  const fcWidth = Math.max(1, Math.round(1024 / cfg.widthDivisor));
  for (const name of ['fc6', 'fc7']) {
    const bound = torchDefaultBound(cin * 9);
    const conv = convLayer(store, `backbone.${name}`, g, {
      cin,
      cout: fcWidth,
      kernel: 3,
      dilation: 4,
      pad: 4,
      bias: true,
      init: { kind: 'uniform', bound },
      biasInit: { kind: 'uniform', bound },
    });
    layers.push((x) => relu(conv(x)));
    cin = fcWidth;
  }
  return {
    outChannels: fcWidth,
    forward: (x) => layers.reduce((y, layer) => layer(y), x),
  };
}

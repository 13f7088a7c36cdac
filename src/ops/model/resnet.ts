/**
 * torchvision ResNet (v1.5: stride on the 3x3 conv) as the DeepLab-v2 encoder at output stride 8
 * (REFERENCE 3.1): layer3 and layer4 replace their stride by dilation (torchvision's
 * replace_stride_with_dilation = [False, True, True]), so layer3's first block has dilation 1 and the
 * rest 2, layer4's first block has dilation 2 and the rest 4. 3x3 padding = dilation, all convs bias-free.
 * Parameter names are torchvision's, under `backbone.`.
 */
import * as tf from '@tensorflow/tfjs';
import { batchNormLayer, convLayer, relu, type BatchNormState, type Layer } from './layers.ts';
import type { ParamStore } from './params.ts';

export interface ResNetConfig {
  /** Bottleneck blocks per layer, e.g. [3, 4, 23, 3] for ResNet-101. */
  blocks: readonly [number, number, number, number];
  /** Stem width (64 in torchvision). */
  stemWidth: number;
  /** Bottleneck widths of layer1..4 (64, 128, 256, 512 in torchvision); outputs are 4x these. */
  planes: readonly [number, number, number, number];
}

export const RESNET101: ResNetConfig = { blocks: [3, 4, 23, 3], stemWidth: 64, planes: [64, 128, 256, 512] };
export const RESNET50: ResNetConfig = { blocks: [3, 4, 6, 3], stemWidth: 64, planes: [64, 128, 256, 512] };
/** CPU-sized: same code path, one narrow block per layer (256 output channels). */
export const RESNET_SMALL: ResNetConfig = { blocks: [1, 1, 1, 1], stemWidth: 16, planes: [8, 16, 32, 64] };

const EXPANSION = 4;

/** torchvision's kaiming_normal_(mode='fan_out', nonlinearity='relu'). */
function kaiming(cout: number, k: number) {
  return { kind: 'normal' as const, std: Math.sqrt(2 / (cout * k * k)) };
}

interface BlockSpec {
  cin: number;
  planes: number;
  stride: number;
  dilation: number;
  downsample: boolean;
}

function bottleneck(store: ParamStore, name: string, s: BlockSpec, bn: BatchNormState): Layer {
  const out = s.planes * EXPANSION;
  const g = 'backbone' as const;
  const conv1 = convLayer(store, `${name}.conv1`, g, { cin: s.cin, cout: s.planes, kernel: 1, init: kaiming(s.planes, 1) });
  const bn1 = batchNormLayer(store, `${name}.bn1`, g, s.planes, bn);
  const conv2 = convLayer(store, `${name}.conv2`, g, {
    cin: s.planes,
    cout: s.planes,
    kernel: 3,
    stride: s.stride,
    dilation: s.dilation,
    pad: s.dilation,
    init: kaiming(s.planes, 3),
  });
  const bn2 = batchNormLayer(store, `${name}.bn2`, g, s.planes, bn);
  const conv3 = convLayer(store, `${name}.conv3`, g, { cin: s.planes, cout: out, kernel: 1, init: kaiming(out, 1) });
  const bn3 = batchNormLayer(store, `${name}.bn3`, g, out, bn);
  let shortcut: Layer = (x) => x;
  if (s.downsample) {
    const dconv = convLayer(store, `${name}.downsample.0`, g, {
      cin: s.cin,
      cout: out,
      kernel: 1,
      stride: s.stride,
      init: kaiming(out, 1),
    });
    const dbn = batchNormLayer(store, `${name}.downsample.1`, g, out, bn);
    shortcut = (x) => dbn(dconv(x));
  }
  return (x) => {
    const y = bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x))))))));
    return relu(tf.add(y, shortcut(x)));
  };
}

export interface Encoder {
  forward: Layer;
  /** Channels of the encoder output (2048 for ResNet-50/101). */
  outChannels: number;
}

export function resnetEncoder(store: ParamStore, cfg: ResNetConfig, bn: BatchNormState): Encoder {
  const g = 'backbone' as const;
  const stemConv = convLayer(store, 'backbone.conv1', g, {
    cin: 3,
    cout: cfg.stemWidth,
    kernel: 7,
    stride: 2,
    pad: 3,
    init: kaiming(cfg.stemWidth, 7),
  });
  const stemBn = batchNormLayer(store, 'backbone.bn1', g, cfg.stemWidth, bn);
  // layer: [stride, dilation of the first block, dilation of the others]
  const geometry: readonly [number, number, number][] = [
    [1, 1, 1],
    [2, 1, 1],
    [1, 1, 2],
    [1, 2, 4],
  ];
  const blocks: Layer[] = [];
  let cin = cfg.stemWidth;
  for (let l = 0; l < 4; l++) {
    const [stride, firstDilation, dilation] = geometry[l]!;
    const planes = cfg.planes[l]!;
    for (let i = 0; i < cfg.blocks[l]!; i++) {
      const first = i === 0;
      blocks.push(
        bottleneck(
          store,
          `backbone.layer${l + 1}.${i}`,
          {
            cin,
            planes,
            stride: first ? stride : 1,
            dilation: first ? firstDilation : dilation,
            downsample: first && (stride !== 1 || cin !== planes * EXPANSION),
          },
          bn,
        ),
      );
      cin = planes * EXPANSION;
    }
  }
  return {
    outChannels: cin,
    forward: (x) => {
      // maxpool 3x3/2 pad 1: tfjs pads max-pool windows with -inf like PyTorch.
      let y = tf.maxPool(relu(stemBn(stemConv(x))), 3, 2, 1);
      for (const block of blocks) y = block(y);
      return y;
    },
  };
}

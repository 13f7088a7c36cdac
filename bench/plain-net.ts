/**
 * The plain convolution net of the step benchmark (issue 14): six 3x3 convolutions with ReLU, three of
 * stride 2 (channels 32, 32, 64, 64, 128, 128; padding 1, no dilation), a 1x1 classifier, bilinear
 * upsampling (align_corners) and CE. PyTorch 1.13's CPU dilated convolution is its slow path, so a
 * benchmark of the DeepLab alone flatters us; this net has no dilated convolution at all. bench/step_torch.py
 * builds the same net (`--net plain`).
 */
import * as tf from '@tensorflow/tfjs';
import { conv2d } from '../src/ops/conv.ts';
import { ParamStore, torchDefaultBound, type Param } from '../src/ops/model/params.ts';

/** (in, out, stride) of the six 3x3 convolutions. */
export const PLAIN_CONVS: readonly (readonly [number, number, number])[] = [
  [3, 32, 2],
  [32, 32, 1],
  [32, 64, 2],
  [64, 64, 1],
  [64, 128, 2],
  [128, 128, 1],
];

export interface PlainNet {
  params: Param[];
  /** Logits at stride 8. */
  forward(x: tf.Tensor4D): tf.Tensor4D;
  dispose(): void;
}

export function plainNet(classes: number, seed = 0): PlainNet {
  const store = new ParamStore(seed);
  const layers = PLAIN_CONVS.map(([cin, cout, stride], i) => {
    const bound = torchDefaultBound(cin * 9);
    const w = store.add(`conv${i}.weight`, [3, 3, cin, cout], 'backbone', 'weight', { kind: 'uniform', bound });
    const b = store.add(`conv${i}.bias`, [cout], 'backbone', 'bias', { kind: 'uniform', bound });
    return { w, b, stride };
  });
  const cin = PLAIN_CONVS.at(-1)![1];
  const bound = torchDefaultBound(cin);
  const cw = store.add('classifier.weight', [1, 1, cin, classes], 'classifier', 'weight', { kind: 'uniform', bound });
  const cb = store.add('classifier.bias', [classes], 'classifier', 'bias', { kind: 'uniform', bound });
  return {
    params: store.trainable(false),
    forward: (x) =>
      tf.tidy(() => {
        let y = x;
        for (const l of layers) y = tf.relu(tf.add(conv2d(y, l.w as tf.Tensor4D, { stride: l.stride, pad: 1 }), l.b)) as tf.Tensor4D;
        return tf.add(conv2d(y, cw as tf.Tensor4D), cb) as tf.Tensor4D;
      }),
    dispose: () => store.dispose(),
  };
}

/**
 * Output-space discriminator of the warm-up phase (REFERENCE 3.4, AdaptSegNet's FCDiscriminator):
 * input a K-channel softmax map at full input resolution; five 4x4 stride-2 pad-1 convs
 * K -> 64 -> 128 -> 256 -> 512 -> 1 with bias, LeakyReLU(0.2) after the first four, no normalisation.
 * Output: patch logits (e.g. 16x32 for a 512x1024 input). Names `conv1..conv4`, `classifier`.
 *
 * The warm-up runs D on the target prediction twice with the same weights: for the adversarial term
 * (gradient w.r.t. D's input) and for D's own update (gradient w.r.t. D's weights). `trace` keeps that
 * forward's activations, and `inputGradient` / `weightGradients` are the two backward passes from them,
 * with the very ops and kernels tfjs's autodiff runs for `forward` (the same bits), so one forward
 * serves both.
 */
import * as tf from '@tensorflow/tfjs';
import { convOutSize } from '../conv.ts';
import { leakyReluGrad } from '../relu-grad-wasm.ts';
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
  /** `forward` keeping its activations (the caller disposes them: `disposeTrace`); no gradient tape. */
  trace(probs: tf.Tensor4D): DiscriminatorTrace;
  /** d loss / d input of the traced forward, from `dLogits` = d loss / d patch logits (D's weights held fixed). */
  inputGradient(t: DiscriminatorTrace, dLogits: tf.Tensor4D): tf.Tensor4D;
  /** d loss / d weight for every variable of D (by its store name), from `dLogits` as above. */
  weightGradients(t: DiscriminatorTrace, dLogits: tf.Tensor4D): Map<string, tf.Tensor>;
  dispose(): void;
}

/** A forward's activations: what its backward passes read. */
export interface DiscriminatorTrace {
  /** Input of each conv (`inputs[0]`: the softmax map traced). */
  inputs: tf.Tensor4D[];
  /** Output of conv1..conv4 (bias added) before its LeakyReLU. */
  pre: tf.Tensor4D[];
  /** The patch logits. */
  logits: tf.Tensor4D;
}

/** Frees a trace's activations except its input (the caller's). */
export function disposeTrace(t: DiscriminatorTrace): void {
  tf.dispose([...t.inputs.slice(1), ...t.pre, t.logits]);
}

const SLOPE = 0.2;
/** Every conv of D: 4x4, stride 2, padding 1. */
const KERNEL = 4;
const STRIDE = 2;
const PAD = 1;
/** The attributes tf.conv2d gives those convs' gradient kernels (what `backward` passes them too). */
const GEOMETRY = { strides: [STRIDE, STRIDE] as [number, number], pad: explicitPadding(PAD), dataFormat: 'NHWC' as const };

function explicitPadding(p: number): tf.backend_util.ExplicitPadding {
  return [
    [0, 0],
    [p, p],
    [p, p],
    [0, 0],
  ];
}

/** Channels in and out of D's convs: K, ndf, 2 ndf, 4 ndf, 8 ndf, 1. */
function discriminatorWidths(numClasses: number, ndf: number): number[] {
  return [numClasses, ndf, ndf * 2, ndf * 4, ndf * 8, 1];
}

/**
 * Multiply-adds of each of D's five convs in one forward pass over `n` softmax maps of h x w (the bias
 * adds not counted): output pixels x output channels x 16 taps x input channels. Each conv's input
 * gradient and weight gradient take as many again.
 */
export function discriminatorMultiplyAdds(numClasses: number, ndf: number, [n, h, w]: readonly [number, number, number]): number[] {
  const widths = discriminatorWidths(numClasses, ndf);
  return discriminatorMaps([h, w]).map(([ho, wo], i) => n * ho * wo * widths[i + 1]! * KERNEL * KERNEL * widths[i]!);
}

/**
 * The output size of each of D's five convs on an h x w input (4x4, stride 2, pad 1: floor(side / 2) each
 * time), 0 once a side is used up: the last is D's patch map, at least 1x1 only from 32x32 on.
 */
export function discriminatorMaps([h, w]: readonly [number, number]): [number, number][] {
  let [ho, wo] = [h, w];
  return Array.from({ length: 5 }, () => {
    ho = Math.max(convOutSize(ho, KERNEL, STRIDE, 1, 2 * PAD), 0);
    wo = Math.max(convOutSize(wo, KERNEL, STRIDE, 1, 2 * PAD), 0);
    return [ho, wo] as [number, number];
  });
}

export function discriminator(cfg: DiscriminatorConfig): Discriminator {
  const ndf = cfg.ndf ?? 64;
  const store = new ParamStore(cfg.seed ?? 0);
  const widths = discriminatorWidths(cfg.numClasses, ndf);
  const names = ['conv1', 'conv2', 'conv3', 'conv4', 'classifier'];
  const check = (probs: tf.Tensor4D) => {
    if (probs.rank !== 4 || probs.shape[3] !== cfg.numClasses) {
      throw new Error(`discriminator: expected softmax maps [B,H,W,${cfg.numClasses}], got shape [${probs.shape}]`);
    }
  };
  const convs: Layer[] = names.map((name, i) => {
    const cin = widths[i]!;
    const bound = torchDefaultBound(cin * KERNEL * KERNEL);
    return convLayer(store, name, 'discriminator', {
      cin,
      cout: widths[i + 1]!,
      kernel: KERNEL,
      stride: STRIDE,
      pad: PAD,
      bias: true,
      init: { kind: 'uniform', bound },
      biasInit: { kind: 'uniform', bound },
    });
  });
  /**
   * The backward of a traced forward, op for op what tfjs's gradients of conv2d (Conv2DBackpropInput /
   * Conv2DBackpropFilter kernels), the bias add (sum over the broadcast axes) and LeakyReLU
   * (where(x > 0, dy, dy * slope): `leakyReluGrad`, the registered gradient's function) compute.
   * `weights`: collect the weights' gradients; `input`: carry
   * the gradient down to D's input.
   */
  const backward = (t: DiscriminatorTrace, dLogits: tf.Tensor4D, weights: boolean, input: boolean) =>
    tf.tidy(() => {
      const grads: Record<string, tf.Tensor> = {};
      let dy: tf.Tensor4D = dLogits;
      for (let i = names.length - 1; i >= 0; i--) {
        const w = store.get(`${names[i]}.weight`);
        const x = t.inputs[i]!;
        if (weights) {
          grads[`${names[i]}.bias`] = tf.reshape(tf.sum(dy, [0, 1, 2]), [widths[i + 1]!]);
          grads[`${names[i]}.weight`] = tf
            .engine()
            .runKernel('Conv2DBackpropFilter', { x, dy }, { ...GEOMETRY, filterShape: w.shape }) as tf.Tensor;
        }
        if (i === 0 && !input) break;
        const dx = tf.engine().runKernel('Conv2DBackpropInput', { dy, filter: w }, { ...GEOMETRY, inputShape: x.shape }) as tf.Tensor4D;
        dy = i === 0 ? dx : (leakyReluGrad(dx, t.pre[i - 1]!, SLOPE) as tf.Tensor4D);
      }
      return { grads, dx: input ? dy : undefined };
    });
  return {
    store,
    forward: (probs) => {
      check(probs);
      return convs.reduce((y, conv, i) => (i < convs.length - 1 ? tf.leakyRelu(conv(y), SLOPE) : conv(y)), probs);
    },
    trace: (probs) => {
      check(probs);
      const t: DiscriminatorTrace = { inputs: [probs], pre: [], logits: probs };
      tf.tidy(() => {
        let y = probs;
        convs.forEach((conv, i) => {
          const z = tf.keep(conv(y));
          if (i === convs.length - 1) {
            t.logits = z;
            return;
          }
          t.pre.push(z);
          y = tf.keep(tf.leakyRelu(z, SLOPE));
          t.inputs.push(y);
        });
      });
      return t;
    },
    inputGradient: (t, dLogits) => backward(t, dLogits, false, true).dx as tf.Tensor4D,
    weightGradients: (t, dLogits) => new Map(Object.entries(backward(t, dLogits, true, false).grads)),
    dispose: () => store.dispose(),
  };
}

/**
 * Makes the tfjs wasm backend trainable for conv nets.
 *
 * wasm ships no `Conv2DBackpropFilter` (so no conv net trains on it) and a naive
 * `Conv2DBackpropInput` that was over half of a training step's time (DESIGN.md). Both are registered
 * here from `convFilterGrad` / `convInputGrad`, which use only forward Conv2D (XNNPACK), MatMul, Pad,
 * Reverse, Transpose and Slice, all of them native wasm kernels.
 *
 * A kernel may return a Tensor instead of a TensorInfo (tfjs-node's kernels do); ops run inside a
 * kernel are not recorded on the gradient tape (kernelDepth > 0), and `tf.tidy` frees intermediates.
 */
import * as tf from '@tensorflow/tfjs';
import { convFilterGrad, convInputGrad, type ConvGeometry } from './conv.ts';

type Shape4 = [number, number, number, number];

interface BackpropAttrs {
  strides: number | [number, number];
  pad: 'valid' | 'same' | number | tf.backend_util.ExplicitPadding;
  dataFormat: 'NHWC' | 'NCHW';
  dimRoundingMode?: 'floor' | 'round' | 'ceil';
}

function geometry(xShape: Shape4, filterShape: Shape4, attrs: BackpropAttrs, kernel: string): ConvGeometry {
  if (attrs.dataFormat !== 'NHWC') throw new Error(`${kernel} (wasm): only NHWC is supported, got ${attrs.dataFormat}`);
  const info = tf.backend_util.computeConv2DInfo(
    xShape,
    filterShape,
    attrs.strides,
    1,
    attrs.pad,
    attrs.dimRoundingMode,
    false,
    'channelsLast',
  );
  const p = info.padInfo;
  return { strides: [info.strideHeight, info.strideWidth], dilations: [1, 1], pad: [p.top, p.bottom, p.left, p.right] };
}

/**
 * Wraps a kernel input as a Tensor that ops can take. The engine does not add a backend reference for
 * such a wrapper, but disposing it drops one, so take one first: the caller's tensor stays alive.
 */
function asTensor(info: tf.TensorInfo): tf.Tensor4D {
  const engine = tf.engine();
  engine.backend.incRef(info.dataId);
  return engine.makeTensorFromTensorInfo(info) as tf.Tensor4D;
}

let registered = false;

/** Registers the conv gradient kernels for wasm. Idempotent. Call after the wasm backend is imported. */
export function registerWasmTrainingKernels(): void {
  if (registered) return;
  registered = true;
  if (tf.getKernel('Conv2DBackpropInput', 'wasm')) tf.unregisterKernel('Conv2DBackpropInput', 'wasm');
  if (tf.getKernel('Conv2DBackpropFilter', 'wasm')) tf.unregisterKernel('Conv2DBackpropFilter', 'wasm');

  tf.registerKernel({
    kernelName: 'Conv2DBackpropFilter',
    backendName: 'wasm',
    kernelFunc: ({ inputs, attrs }) => {
      const a = attrs as unknown as BackpropAttrs & { filterShape: Shape4 };
      return tf.tidy(() => {
        const x = asTensor(inputs.x!);
        const dy = asTensor(inputs.dy!);
        const g = geometry(x.shape, a.filterShape, a, 'Conv2DBackpropFilter');
        return convFilterGrad(x, dy, a.filterShape, g);
      });
    },
  });

  tf.registerKernel({
    kernelName: 'Conv2DBackpropInput',
    backendName: 'wasm',
    kernelFunc: ({ inputs, attrs }) => {
      const a = attrs as unknown as BackpropAttrs & { inputShape: Shape4 };
      return tf.tidy(() => {
        const dy = asTensor(inputs.dy!);
        const filter = asTensor(inputs.filter!);
        const g = geometry(a.inputShape, filter.shape, a, 'Conv2DBackpropInput');
        return convInputGrad(dy, filter, a.inputShape, g);
      });
    },
  });
}

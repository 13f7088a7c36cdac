/**
 * The gradient of ReLU on the wasm backend as one wasm SIMD pass (src/ops/wasm/relu-grad.wat) on
 * tfjs-wasm's own memory. tfjs-core's gradient, mul(dy, cast(step(x), 'float32')), is three kernels and
 * three passes over the activations (Step, a float32 Cast that copies, Multiply: ~3 ms of a 100 ms step of
 * the small DeepLab, batch 8, 64x128); the module computes the same products in one: the same bits
 * (test/ops/relu-grad-wasm.test.ts compares every element, NaN, infinities and signed zeros included).
 * Other backends, other dtypes and the switch off keep tfjs's formula.
 */
import * as tf from '@tensorflow/tfjs';
import { backendModule } from './backend-memory.ts';
import { hostTensor, hostView } from './host-memory.ts';

type Run = (dy: number, x: number, n: number, out: number) => void;

let enabled = true;

/** Tests and benchmarks only: false leaves the gradient to tfjs's three kernels. */
export function setReluGradWasm(on: boolean): void {
  enabled = on;
}

/**
 * dL/dx of relu(x) from its output gradient `dy` by the module, or null (tfjs's formula applies): not the
 * wasm backend, not float32, shapes that differ, or disabled.
 */
export function reluGradWasm(dy: tf.Tensor, x: tf.Tensor): tf.Tensor | null {
  if (!enabled || dy.dtype !== 'float32' || x.dtype !== 'float32') return null;
  if (!tf.util.arraysEqual(dy.shape, x.shape)) return null;
  const run = backendModule('relu-grad')?.exports.run as Run | undefined;
  if (!run) return null;
  return hostTensor(x.shape, (out) => {
    // views inside `fill`: the output exists, nothing allocates after it
    run(hostView(dy).byteOffset, hostView(x).byteOffset, x.size, out.byteOffset);
  });
}

/** tfjs-core's gradient of Relu (its Relu_grad.js). */
function stockReluGrad(dy: tf.Tensor, x: tf.Tensor): tf.Tensor {
  return tf.mul(dy, tf.cast(tf.step(x), 'float32'));
}

/**
 * Registers Relu's gradient with the module on wasm and tfjs's formula elsewhere, over tfjs-core's (the
 * gradient registry is global; the formula is the same on every backend). Idempotent.
 */
export function registerReluGradient(): void {
  tf.registerGradient({
    kernelName: 'Relu',
    inputsToSave: ['x'],
    gradFunc: (dy, saved) => {
      const [x] = saved as [tf.Tensor];
      const g = dy as tf.Tensor;
      return { x: () => reluGradWasm(g, x) ?? stockReluGrad(g, x) };
    },
  });
}

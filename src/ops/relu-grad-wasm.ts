/**
 * The gradients of ReLU and LeakyReLU on the wasm backend as one wasm SIMD pass each
 * (src/ops/wasm/relu-grad.wat) on tfjs-wasm's own memory. tfjs-core's ReLU gradient, mul(dy, cast(step(x),
 * 'float32')), is three kernels and three passes over the activations (Step, a float32 Cast that copies,
 * Multiply: ~3 ms of a 100 ms step of the small DeepLab, batch 8, 64x128); its LeakyReLU gradient,
 * where(greater(x, 0), dy, mul(dy, alpha)), three more (Greater, Multiply, Select: the discriminator's, ~30
 * ms of a 750 ms step at the paper's width). The module computes the same values in one pass: the same bits
 * (test/ops/relu-grad-wasm.test.ts compares every element, NaN, infinities and signed zeros included).
 * Other backends, other dtypes and the switch off keep tfjs's formulas.
 */
import * as tf from '@tensorflow/tfjs';
import { backendModule } from './backend-memory.ts';
import { hostTensor, hostView } from './host-memory.ts';

/** An export of relu-grad.wat: (dy, x, n, out, ...its own parameters), offsets in bytes. */
type Pass = (dy: number, x: number, n: number, out: number, ...more: number[]) => void;

let enabled = true;

/** Tests and benchmarks only: false leaves the gradients to tfjs's three kernels each. */
export function setReluGradWasm(on: boolean): void {
  enabled = on;
}

/**
 * The module's export `name` over dy and x into a new tensor of x's shape, or null (tfjs's formula
 * applies): not the wasm backend, not float32, shapes that differ, or disabled.
 */
function gradPass(name: 'run' | 'leaky', dy: tf.Tensor, x: tf.Tensor, ...more: number[]): tf.Tensor | null {
  if (!enabled || dy.dtype !== 'float32' || x.dtype !== 'float32') return null;
  if (!tf.util.arraysEqual(dy.shape, x.shape)) return null;
  const pass = backendModule('relu-grad')?.exports[name] as Pass | undefined;
  if (!pass) return null;
  return hostTensor(x.shape, (out) => {
    // views inside `fill`: the output exists, nothing allocates after it
    pass(hostView(dy).byteOffset, hostView(x).byteOffset, x.size, out.byteOffset, ...more);
  });
}

/** dL/dx of relu(x) from its output gradient `dy` by the module, or null (`gradPass`). */
export function reluGradWasm(dy: tf.Tensor, x: tf.Tensor): tf.Tensor | null {
  return gradPass('run', dy, x);
}

/**
 * dL/dx of leakyRelu(x, alpha) from `dy` by the module, or null (`gradPass`). alpha travels as f32: the
 * float32 scalar that tf.mul(dy, alpha) multiplies by.
 */
export function leakyReluGradWasm(dy: tf.Tensor, x: tf.Tensor, alpha: number): tf.Tensor | null {
  return gradPass('leaky', dy, x, alpha);
}

/** tfjs-core's gradient of LeakyRelu (its LeakyRelu_grad.js). */
function stockLeakyReluGrad(dy: tf.Tensor, x: tf.Tensor, alpha: number): tf.Tensor {
  return tf.where(tf.greater(x, 0), dy, tf.mul(dy, alpha));
}

/**
 * dL/dx of leakyRelu(x, alpha) from `dy`: the module on wasm, tfjs's formula elsewhere. What the registered
 * LeakyRelu gradient runs, for code that takes a backward pass by hand (the discriminator's trace).
 */
export function leakyReluGrad(dy: tf.Tensor, x: tf.Tensor, alpha: number): tf.Tensor {
  return leakyReluGradWasm(dy, x, alpha) ?? stockLeakyReluGrad(dy, x, alpha);
}

/** tfjs-core's gradient of Relu (its Relu_grad.js). */
function stockReluGrad(dy: tf.Tensor, x: tf.Tensor): tf.Tensor {
  return tf.mul(dy, tf.cast(tf.step(x), 'float32'));
}

/**
 * Registers Relu's and LeakyRelu's gradients with the module on wasm and tfjs's formulas elsewhere, over
 * tfjs-core's (the gradient registry is global; the formulas are the same on every backend). Idempotent.
 */
export function registerReluGradients(): void {
  tf.registerGradient({
    kernelName: 'Relu',
    inputsToSave: ['x'],
    gradFunc: (dy, saved) => {
      const [x] = saved as [tf.Tensor];
      const g = dy as tf.Tensor;
      return { x: () => reluGradWasm(g, x) ?? stockReluGrad(g, x) };
    },
  });
  tf.registerGradient({
    kernelName: 'LeakyRelu',
    inputsToSave: ['x'],
    gradFunc: (dy, saved, attrs) => {
      const [x] = saved as [tf.Tensor];
      const { alpha } = attrs as unknown as { alpha: number };
      const g = dy as tf.Tensor;
      return { x: () => leakyReluGrad(g, x, alpha) };
    },
  });
}

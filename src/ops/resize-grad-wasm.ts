/**
 * The gradient of `tf.image.resizeBilinear` (kernel ResizeBilinearGrad) on the wasm backend as wasm SIMD
 * (src/ops/wasm/resize-grad.wat) on tfjs-wasm's own memory: dy is read and dx written in place. Every
 * training step upsamples its logits to the labels' size, so this gradient runs once a batch per loss:
 * tfjs-wasm's C++ kernel spends ~4 ns a dy element on it (5.8 ms at 8 x 72 x 128 x 19). Ours takes four
 * channels a step with the stock kernel's mixed float32 / float64 arithmetic, in its order: the same bits
 * (test/ops/resize-grad-wasm.test.ts compares every element against the stock kernel).
 */
import type * as tf from '@tensorflow/tfjs';
import { backendModule } from './backend-memory.ts';
import type { WasmHeap } from './host-memory.ts';

type Run = (dy: number, dx: number, batch: number, H: number, W: number, h: number, w: number, c: number, align: number) => void;

let enabled = true;

/** Tests and benchmarks only: false leaves the gradient to tfjs-wasm's own kernel. */
export function setResizeGradWasm(on: boolean): void {
  enabled = on;
}

/**
 * ResizeBilinearGrad for float32 `images` and `dy` of rank 4 on the wasm backend, or null (the stock
 * kernel runs): other dtypes, the module unavailable, or disabled.
 */
export function resizeBilinearGradWasm(args: {
  inputs: tf.NamedTensorInfoMap;
  backend: unknown;
  attrs?: tf.NamedAttrMap;
}): tf.TensorInfo | null {
  const { images, dy } = args.inputs as { images: tf.TensorInfo; dy: tf.TensorInfo };
  if (!enabled || images.dtype !== 'float32' || dy.dtype !== 'float32') return null;
  if (images.shape.length !== 4 || dy.shape.length !== 4) return null;
  const run = backendModule('resize-grad')?.exports.run as Run | undefined;
  if (!run) return null;
  const [batch, h, w, c] = images.shape as [number, number, number, number];
  const [, H, W] = dy.shape as [number, number, number, number];
  const { alignCorners } = args.attrs as unknown as { alignCorners: boolean };
  const backend = args.backend as WasmHeap;
  const out = backend.makeOutput(images.shape as number[], 'float32');
  // views after the allocation (it may grow the heap, which detaches older views)
  const g = backend.typedArrayFromHeap(dy);
  const dx = backend.typedArrayFromHeap(out);
  run(g.byteOffset, dx.byteOffset, batch, H, W, h, w, c, alignCorners ? 1 : 0);
  return out;
}

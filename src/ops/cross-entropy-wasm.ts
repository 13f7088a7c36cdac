/**
 * The gradient loop of losses.ts's host cross-entropy op as wasm SIMD (src/ops/wasm/cross-entropy.wat) on
 * tfjs-wasm's own memory: the softmax, labels and weights are read and the gradient written in place. The
 * JS loop spent ~3 ns an element on it (3.5 ms at 8 x 64 x 128 pixels x 19 classes, each training loss
 * once a step); the module takes four elements a step with the loop's float64 operations: the same bits
 * (test/ops/cross-entropy-wasm.test.ts compares every element).
 */
import { backendModule } from './backend-memory.ts';

type Grad = (p: number, y: number, w: number, weighted: number, n: number, k: number, scale: number, g: number) => void;

let enabled = true;

/** Tests and benchmarks only: false keeps the JS loop on wasm too. */
export function setCrossEntropyWasm(on: boolean): void {
  enabled = on;
}

/**
 * g[i, :] = w[i] scale p[i, :] minus w[i] scale at the label (scale alone without weights), zeros where
 * the label is outside 0..k-1, for views of the wasm backend's heap; false (nothing written) when the
 * arrays are not on that heap (cpu backend), the module is unavailable or disabled: the caller's loop runs.
 */
export function crossEntropyGradWasm(
  p: Float32Array,
  y: Int32Array,
  w: Float32Array | undefined,
  k: number,
  scale: number,
  g: Float32Array,
): boolean {
  if (!enabled) return false;
  const m = backendModule('cross-entropy');
  if (!m) return false;
  if (!m.holds(p.buffer) || !m.holds(y.buffer) || !m.holds(g.buffer) || (w && !m.holds(w.buffer))) return false;
  (m.exports.grad as Grad)(p.byteOffset, y.byteOffset, w ? w.byteOffset : 0, w ? 1 : 0, y.length, k, scale, g.byteOffset);
  return true;
}

/**
 * Two per-channel loops of a training step as wasm SIMD (src/ops/wasm/channel-ops.wat) on tfjs-wasm's own
 * memory, each the float32 adds of the kernel it replaces, in its order: the same bits
 * (test/ops/channel-ops-wasm.test.ts compares every element).
 * - A bias broadcast over NHWC rows (tfjs-wasm's Add with a [c] operand walks both operands by index,
 *   ~1.3 ns an element: 0.67 ms for the plain net's [8, 32, 64, 32] + [32]): `addBiasWasm`, registered over
 *   the Add kernel for that case.
 * - Its gradient, a sum over the leading axes (wasm-kernels.ts's `sumLeadingAxes`, a JS loop at ~1.7 ns an
 *   element: 0.88 ms for the same map): `sumRowsWasm`.
 */
import type * as tf from '@tensorflow/tfjs';
import { backendModule } from './backend-memory.ts';
import { rowTileLength, type WasmHeap } from './host-memory.ts';

type SumRows = (x: number, rows: number, c: number, tile: number, acc: number) => void;
type AddRows = (x: number, rows: number, c: number, b: number, out: number) => void;

let enabled = true;

/** Tests and benchmarks only: false leaves both to the stock Add kernel and sumLeadingAxes's JS loop. */
export function setChannelOpsWasm(on: boolean): void {
  enabled = on;
}

/**
 * acc[k] += x[r, k] over x's rows in order (one float32 sum per channel), for views `x` ([rows, c]) and `acc`
 * ([c]) of the wasm backend's heap; false (nothing written) where the module does not run: not those views,
 * the module unavailable, disabled.
 */
export function sumRowsWasm(x: Float32Array, c: number, acc: Float32Array): boolean {
  if (!enabled || c === 0) return false;
  const m = backendModule('channel-ops');
  if (!m || !m.holds(x.buffer) || !m.holds(acc.buffer)) return false;
  (m.exports.sum_rows as SumRows)(x.byteOffset, x.length / c, c, rowTileLength(c) / c, acc.byteOffset);
  return true;
}

/**
 * The Add kernel on wasm for a float32 `a` of any rank plus a float32 bias `b` of its last dimension's size
 * (shape [c] or [1, ..., 1, c], no more dimensions than `a`): a + b broadcast over a's rows, a's shape. Null
 * for every other Add (the stock kernel runs).
 */
export function addBiasWasm(args: { inputs: tf.NamedTensorInfoMap; backend: unknown }): tf.TensorInfo | null {
  const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
  if (!enabled || a.dtype !== 'float32' || b.dtype !== 'float32') return null;
  const c = a.shape[a.shape.length - 1];
  if (c === undefined || c === 0 || b.shape.length > a.shape.length || b.shape.at(-1) !== c) return null;
  if (b.shape.slice(0, -1).some((d) => d !== 1)) return null;
  const m = backendModule('channel-ops');
  if (!m) return null;
  const backend = args.backend as WasmHeap;
  const out = backend.makeOutput(a.shape as number[], 'float32');
  // views after the allocation (it may grow the heap, which detaches older views)
  const [x, bias, o] = [backend.typedArrayFromHeap(a), backend.typedArrayFromHeap(b), backend.typedArrayFromHeap(out)];
  (m.exports.add_rows as AddRows)(x.byteOffset, x.length / c, c, bias.byteOffset, o.byteOffset);
  return out;
}

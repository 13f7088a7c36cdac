/**
 * Tensor data in host memory without copies, for the loops that replace chains of element-wise kernels on
 * the host backends (wasm: the module's heap; cpu: JS typed arrays).
 *
 * Why not `dataSync()` and `tf.tensor(array)`: on wasm both copy, and every step then allocates tens of
 * MB of typed arrays outside the JS heap. V8 answers that external memory with full garbage collections
 * (measured: 156 mark-compacts in 100 data-parallel warm-up steps against 49), and with replicas meeting
 * at a barrier in every batch-norm layer, one thread's pause stalls all of them.
 *
 * A wasm view is valid until the next allocation on the backend (a growing heap detaches it): take views
 * after creating outputs, inside `hostTensor`'s `fill`.
 */
import * as tf from '@tensorflow/tfjs';

/** What the host loops need of tfjs-backend-wasm's backend: its heap views and output allocation. */
export interface WasmHeap {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(t: tf.TensorInfo): Float32Array | Int32Array;
}

/** Whether the current backend keeps tensor data in host memory (wasm, cpu). */
export function onHostBackend(): boolean {
  const name = tf.getBackend();
  return name === 'wasm' || name === 'cpu';
}

/**
 * `t`'s data, not a copy (read only: other tensors may share it). wasm: a view of the heap, valid until
 * the next allocation; cpu: the backend's own array. Host backends only.
 */
export function hostView<T extends Float32Array | Int32Array = Float32Array>(t: tf.Tensor): T {
  if (tf.getBackend() === 'wasm') return (tf.backend() as unknown as WasmHeap).typedArrayFromHeap(t) as T;
  return t.dataSync() as T;
}

/**
 * A float32 tensor's values: on the host backends its own memory (`hostView`: no copy, read it before the
 * next allocation), elsewhere a copy (`dataSync`).
 */
export function floatValues(t: tf.Tensor): Float32Array {
  return onHostBackend() ? hostView(t) : (t.dataSync() as Float32Array);
}

/**
 * A new float32 tensor of `shape`; `fill` writes its values into `out` (zeros on cpu, undefined on wasm:
 * write every element). Take views of other tensors inside `fill`. Host backends only.
 */
export function hostTensor<R extends tf.Rank>(shape: number[], fill: (out: Float32Array) => void): tf.Tensor<R> {
  return hostTensors([shape], ([out]) => fill(out!))[0] as tf.Tensor<R>;
}

/**
 * New float32 tensors of `shapes`, written by one loop: `fill` gets their arrays in order (as in
 * `hostTensor`: every element to be written, views of other tensors taken inside `fill`, after every
 * output exists). Host backends only.
 */
export function hostTensors(shapes: number[][], fill: (outs: Float32Array[]) => void): tf.Tensor[] {
  if (tf.getBackend() === 'wasm') {
    const heap = tf.backend() as unknown as WasmHeap;
    const infos = shapes.map((shape) => heap.makeOutput(shape, 'float32'));
    fill(infos.map((info) => heap.typedArrayFromHeap(info) as Float32Array));
    // a fresh output holds one backend reference: the tensor owns it
    return infos.map((info) => tf.engine().makeTensorFromTensorInfo(info));
  }
  const outs = shapes.map((shape) => new Float32Array(shape.reduce((a, b) => a * b, 1)));
  fill(outs);
  return outs.map((out, i) => tf.tensor(out, shapes[i], 'float32'));
}

/**
 * Elements in a tile of an NHWC tensor's rows for the host loops that go channel by channel: whole rows
 * of `channels`, ~4096 values (16 KB of float32, so a tile stays in the first-level cache while a loop
 * walks it once per group of channels), at least one row.
 */
export function rowTileLength(channels: number): number {
  return Math.max(1, Math.floor(4096 / channels)) * channels;
}

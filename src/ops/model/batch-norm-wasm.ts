/**
 * The batch-norm loops of batch-norm-host.ts as wasm SIMD (src/ops/wasm/batch-norm.wat) on tfjs-wasm's
 * own memory: the module is instantiated on the backend's WebAssembly.Memory (the one-thread build's
 * unshared memory, the threaded build's shared one), so x, dy and the outputs are read and written in
 * place, no copies. Two f64 lanes, four channels a step, the same float64 operations per channel in the
 * same row order as the JS loops: the same bits (test/ops/batch-norm-host.test.ts compares every element).
 * Channel counts that are not a multiple of 4, and the cpu backend, keep the JS loops. Frozen batch norm's
 * two float32 passes (frozen-batch-norm.ts: y = x * scale + shift, dx = dy * scale) are in the same module.
 */
import { backendModule, wasmBackendHeap, type WasmMemory } from '../backend-memory.ts';
import { rowTileLength } from '../host-memory.ts';
import type { InputGradientTerms } from './batch-norm-host.ts';

type I = number;
interface Exports {
  sums(x: I, rows: I, c: I, tile: I, acc: I): void;
  squares(x: I, rows: I, c: I, tile: I, mean: I, acc: I): void;
  scale_shift(x: I, rows: I, c: I, tile: I, scale: I, shift: I, out: I): void;
  grad_sums(dy: I, x: I, rows: I, c: I, tile: I, mean: I, sdy: I, sdx: I): void;
  input_grad(dy: I, x: I, rows: I, c: I, tile: I, terms: I, out: I): void;
  affine_f32(x: I, rows: I, c: I, scale: I, shift: I, out: I): void;
  scale_f32(dy: I, rows: I, c: I, scale: I, out: I): void;
}

interface Instance {
  memory: WasmMemory;
  /** Whether a buffer is that memory's (`BackendHeap.holds`). */
  holds(buffer: ArrayBufferLike): boolean;
  run: Exports;
  /** Byte offset of the f64 scratch in the backend's heap for the per-channel terms (4 x MAX_CHANNELS). */
  scratch: number;
}

let instance: Instance | null = null;
let enabled = true;

/** Tests only: false keeps the JS loops on wasm too. */
export function setBatchNormWasm(on: boolean): void {
  enabled = on;
}

/** Most channels the scratch holds (per-channel terms: 4 arrays of f64); wider layers keep the JS loops. */
const MAX_CHANNELS = 8192;

/**
 * Instantiates the module on the current wasm backend's memory and allocates its scratch in the backend's
 * heap (once per memory). `selectBackend` calls it when it starts wasm: an allocation may grow the heap,
 * which detaches the host views callers hold, so it never happens inside a layer's loops.
 */
export function prepareBatchNormWasm(): void {
  const heap = wasmBackendHeap();
  if (!heap || instance?.memory === heap.memory) return;
  const { exports } = backendModule('batch-norm')!;
  const bytes = 4 * MAX_CHANNELS * 8;
  const raw = heap.malloc(bytes + 16);
  if (!raw) throw new Error(`batch norm (wasm): the backend's heap has no room for ${bytes} bytes of scratch`);
  // 16-byte aligned: f64 arrays (Float64Array views need 8) read as f64x2 lanes
  instance = { memory: heap.memory, holds: heap.holds, run: exports as unknown as Exports, scratch: Math.ceil(raw / 16) * 16 };
}

/**
 * The wasm loops for a tensor whose host view is `view` (`hostView` on the wasm backend) with `c` channels,
 * or null (cpu backend, module not prepared on this backend, channels not a multiple of 4 or over
 * MAX_CHANNELS, disabled): the caller runs its JS loops.
 */
export function wasmLoopsFor(view: Float32Array, c: number): WasmLoops | null {
  if (!enabled || c % 4 !== 0 || c === 0 || c > MAX_CHANNELS || !instance) return null;
  if (!instance.holds(view.buffer)) return null;
  return new WasmLoops(instance, c);
}

/** One layer's calls (nothing in them allocates on the backend: the callers' views stay valid). */
export class WasmLoops {
  private readonly k: Instance;
  private readonly c: number;
  private readonly tile: number;
  constructor(k: Instance, c: number) {
    this.k = k;
    this.c = c;
    this.tile = rowTileLength(c) / c;
  }

  /** acc[k] += x[row, k] over the rows in order. */
  sums(x: Float32Array, acc: Float64Array): void {
    const [px, rows] = [x.byteOffset, x.length / this.c];
    const s = this.scratch([acc]);
    this.k.run.sums(px, rows, this.c, this.tile, s);
    this.read(s, [acc]);
  }

  /** acc[k] += (x[row, k] - mean[k])^2 over the rows in order. */
  squares(x: Float32Array, mean: Float64Array, acc: Float64Array): void {
    const [px, rows] = [x.byteOffset, x.length / this.c];
    const s = this.scratch([mean, acc]);
    this.k.run.squares(px, rows, this.c, this.tile, s, s + 8 * this.c);
    this.read(s + 8 * this.c, [acc]);
  }

  /** out[row, k] = x[row, k] * scale[k] + shift[k]. */
  scaleShift(x: Float32Array, scale: Float64Array, shift: Float64Array, out: Float32Array): void {
    const [px, po, rows] = [x.byteOffset, out.byteOffset, x.length / this.c];
    const s = this.scratch([scale, shift]);
    this.k.run.scale_shift(px, rows, this.c, this.tile, s, s + 8 * this.c, po);
  }

  /** sdy[k] += dy[row, k]; sdx[k] += dy[row, k] * (x[row, k] - mean[k]), over the rows in order. */
  gradSums(dy: Float32Array, x: Float32Array, mean: Float64Array, sdy: Float64Array, sdx: Float64Array): void {
    const [pd, px, rows] = [dy.byteOffset, x.byteOffset, dy.length / this.c];
    const s = this.scratch([mean, sdy, sdx]);
    this.k.run.grad_sums(pd, px, rows, this.c, this.tile, s, s + 8 * this.c, s + 16 * this.c);
    this.read(s + 8 * this.c, [sdy, sdx]);
  }

  /** out[row, k] = a[k] dy[row, k] + bx[k] (x[row, k] - mean[k]) + c0[k]. */
  inputGrad(dy: Float32Array, x: Float32Array, t: InputGradientTerms, out: Float32Array): void {
    const [pd, px, po, rows] = [dy.byteOffset, x.byteOffset, out.byteOffset, dy.length / this.c];
    const s = this.scratch([t.a, t.bx, t.c0, t.mean]);
    this.k.run.input_grad(pd, px, rows, this.c, this.tile, s, po);
  }

  /** Frozen batch norm: out[row, k] = x[row, k] * scale[k] + shift[k], float32 (the product rounded, then the sum). */
  affine32(x: Float32Array, scale: Float32Array, shift: Float32Array, out: Float32Array): void {
    const s = this.scratch([scale, shift]);
    this.k.run.affine_f32(x.byteOffset, x.length / this.c, this.c, s, s + 4 * this.c, out.byteOffset);
  }

  /** Frozen batch norm's input gradient: out[row, k] = dy[row, k] * scale[k], float32. */
  scale32(dy: Float32Array, scale: Float32Array, out: Float32Array): void {
    const s = this.scratch([scale]);
    this.k.run.scale_f32(dy.byteOffset, dy.length / this.c, this.c, s, out.byteOffset);
  }

  /** Writes `arrays` (c values each, all float64 or all float32) one after the other into the scratch; its byte offset. */
  private scratch(arrays: Float64Array[] | Float32Array[]): number {
    const [buffer, n] = [this.k.memory.buffer, arrays.length * this.c];
    const f = arrays[0] instanceof Float32Array ? new Float32Array(buffer, this.k.scratch, n) : new Float64Array(buffer, this.k.scratch, n);
    arrays.forEach((a, i) => f.set(a, i * this.c));
    return this.k.scratch;
  }

  /** Copies `arrays.length` arrays of c floats from the heap at `at` back into `arrays`. */
  private read(at: number, arrays: Float64Array[]): void {
    const f = new Float64Array(this.k.memory.buffer, at, arrays.length * this.c);
    arrays.forEach((a, i) => a.set(f.subarray(i * this.c, (i + 1) * this.c)));
  }
}

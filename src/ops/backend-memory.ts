/**
 * tfjs-wasm's own WebAssembly.Memory, for our wasm kernels (src/ops/wasm/*.wat) that work on tensors in
 * place: a kernel instantiated on it reads and writes tensor data at the offsets of their host views
 * (`hostView(t).byteOffset`), no copies. The one-thread build's memory is unshared, the threaded build's
 * shared; a module's memory import must match, so each kernel ships both variants (`<name>.wasm` imports a
 * shared memory, `<name>-unshared.wasm` an unshared one; `npm run build:wasm` assembles both).
 */
import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs';

export interface WasmMemory {
  readonly buffer: ArrayBuffer | SharedArrayBuffer;
}

interface WasmApi {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (m: object, imports: object) => { exports: Record<string, unknown> };
}
const wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

/** What this file uses of tfjs-backend-wasm's Emscripten module. */
interface EmscriptenModule {
  /** The threaded build's memory (shared). */
  wasmMemory?: WasmMemory;
  /** The one-thread build's exports (its memory). */
  asm?: { memory?: WasmMemory };
  _malloc?: (bytes: number) => number;
  /** The byte view tfjs-wasm's `typedArrayFromHeap` (our `hostView`) makes its views on. */
  HEAPU8?: { buffer: ArrayBufferLike };
}

export interface BackendHeap {
  memory: WasmMemory;
  shared: boolean;
  /** Allocates in the backend's heap (may grow it: views taken before are detached). Byte offset, 0 = none. */
  malloc(bytes: number): number;
  /**
   * Whether `buffer` is this memory's: `memory.buffer` or the buffer of tfjs-wasm's heap views. A shared
   * memory hands out more than one SharedArrayBuffer object for itself: right after a kernel thread grew
   * it, the main thread's heap views and `memory.buffer` were seen on different objects (2 of ~850 batch-norm
   * calls in 10 steps at two kernel threads), so identity with one of them alone is not enough.
   */
  holds(buffer: ArrayBufferLike): boolean;
}

/** The current backend's heap when it is tfjs-wasm (and its memory can be found), else null. */
export function wasmBackendHeap(): BackendHeap | null {
  if (tf.getBackend() !== 'wasm') return null;
  const module = (tf.backend() as unknown as { wasm?: EmscriptenModule }).wasm;
  const memory = module?.wasmMemory ?? module?.asm?.memory;
  const malloc = module?._malloc;
  if (!memory || typeof malloc !== 'function') return null;
  const shared = typeof SharedArrayBuffer !== 'undefined' && memory.buffer instanceof SharedArrayBuffer;
  return {
    memory,
    shared,
    malloc: (bytes) => malloc(bytes),
    holds: (buffer) => buffer === memory.buffer || buffer === module?.HEAPU8?.buffer,
  };
}

/** Instantiates src/ops/wasm/<name>.wasm (or its unshared variant) on `heap`'s memory: its exports. */
function instantiateOn(heap: BackendHeap, name: string): Record<string, unknown> {
  const file = heap.shared ? `${name}.wasm` : `${name}-unshared.wasm`;
  const bytes = readFileSync(new URL(`./wasm/${file}`, import.meta.url));
  return new wasm.Instance(new wasm.Module(bytes), { env: { memory: heap.memory } }).exports;
}

export interface BackendModule {
  memory: WasmMemory;
  exports: Record<string, unknown>;
  /** Whether `buffer` is the memory the module works on (`BackendHeap.holds`). */
  holds(buffer: ArrayBufferLike): boolean;
}

const modules = new Map<string, BackendModule>();

/**
 * src/ops/wasm/<name>.wasm instantiated on the current backend's heap (once per module and memory; nothing
 * allocated, so callers' views stay valid), or null when the backend is not tfjs-wasm.
 */
export function backendModule(name: string): BackendModule | null {
  const heap = wasmBackendHeap();
  if (!heap) return null;
  let m = modules.get(name);
  if (m?.memory !== heap.memory) {
    m = { memory: heap.memory, exports: instantiateOn(heap, name), holds: heap.holds };
    modules.set(name, m);
  }
  return m;
}

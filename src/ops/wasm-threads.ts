/**
 * tfjs-wasm's multi-threaded build under Node: the kernels XNNPACK runs (convolutions, matmuls, most
 * element-wise ops) split over a pool of threads inside one backend, so one training step uses every
 * core with the same arithmetic as one thread.
 *
 * tfjs-backend-wasm 4.22 ships the build (`tfjs-backend-wasm-threaded-simd.wasm`, Emscripten pthreads)
 * but reports no thread support in Node (its flag WASM_HAS_MULTITHREAD_SUPPORT is false when IS_NODE:
 * tensorflow/tfjs#3830), and three things stop it from starting there as it is:
 * - each pthread worker is created from a `blob:` URL of the worker script, which Node's Worker cannot
 *   load: here a `Worker` class given to the Emscripten glue (which looks `Worker` up globally) runs
 *   that script as an eval'd CommonJS worker instead;
 * - the worker then loads the Emscripten module from a Blob of the factory's source, which refers to
 *   names of the bundle it was cut from (`require$$0`, `commonjsGlobal`, ...): the worker script defines
 *   them and evaluates the factory's source taken from the installed bundle itself;
 * - the pool size is capped by `emscripten_num_logical_cores() / 2`, which assumes two hyperthreads per
 *   core (on this 2-core VM: one thread): `os.cpus()` reports twice the requested threads while the
 *   backend initialises.
 * The pool's workers are unreferenced, so they do not keep a finished process alive.
 *
 * The results do not depend on the thread count: XNNPACK splits the outputs, not the sums (the tests
 * compare training steps at 1 and 2 threads bit for bit).
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import { Worker as NodeWorker } from 'node:worker_threads';
import * as tf from '@tensorflow/tfjs';

/** The start and the end of the threaded Emscripten factory inside the node bundle of tfjs-backend-wasm 4.22. */
const FACTORY_START = '(function (module, exports) {\n    var WasmBackendModuleThreadedSimd = (function () {';
const FACTORY_END = '    module.exports = WasmBackendModuleThreadedSimd;\n}';
const WORKER_CONTENTS = /\nvar wasmWorkerContents = ("(?:[^"\\]|\\.)*");\n/;

interface WasmModule {
  setThreadsCount(n: number): void;
  getThreadsCount(): number;
}

/** What `prepareWasmThreads` did, for `finishWasmThreads`. */
export interface WasmThreadsSetup {
  threads: number;
  restore: () => void;
}

let installedWorker = false;

/** The worker script of the pthreads, runnable as an eval'd CommonJS worker in Node. */
function workerScript(bundle: string, text: string): string {
  const contents = WORKER_CONTENTS.exec(text);
  const start = text.indexOf(FACTORY_START);
  const end = start < 0 ? -1 : text.indexOf(FACTORY_END, start);
  if (!contents || end < 0)
    throw new Error(
      `${bundle} is not laid out as the tfjs-backend-wasm 4.22 bundle this shim reads (no pthread worker script or threaded factory)`,
    );
  // As tfjs does before making its Blob: the script's own string literals hold "\n" escapes.
  const worker = (JSON.parse(contents[1]!) as string).replace(/\n/g, '\\n');
  const names = JSON.stringify({ bundle, start, end: end + FACTORY_END.length });
  return `"use strict";
globalThis.require$$0 = require('fs'); globalThis.require$$1 = require('path');
globalThis.require$$3 = require('perf_hooks'); globalThis.require$$4 = require('os');
globalThis.commonjsGlobal = globalThis;
globalThis.__filename = ${JSON.stringify(bundle)}; globalThis.__dirname = require('path').dirname(${JSON.stringify(bundle)});
${worker}
;(function () {
  const fs = require('fs');
  const at = ${names};
  const FACTORY = 'tfjs-wasm-threaded-factory';
  URL.createObjectURL = () => FACTORY;
  URL.revokeObjectURL = () => {};
  const load = globalThis.importScripts;
  globalThis.importScripts = (f) => {
    if (f !== FACTORY) return load(f);
    const source = fs.readFileSync(at.bundle, 'utf8').slice(at.start, at.end) + ')';
    const mod = { exports: {} };
    (0, eval)(source)(mod, mod.exports);
    globalThis.WasmBackendModuleThreadedSimd = mod.exports;
  };
})();
`;
}

/**
 * Makes the wasm backend initialise with `threads` kernel threads; call it before the backend is first
 * set, and `finishWasmThreads` after. Throws, naming the reason, where that cannot be done.
 */
export async function prepareWasmThreads(threads: number): Promise<WasmThreadsSetup> {
  if (!Number.isInteger(threads) || threads < 2 || threads > 64)
    throw new Error(`wasm threads: expected an integer in 2..64, got ${threads}`);
  if (typeof SharedArrayBuffer === 'undefined') throw new Error('wasm threads: this Node has no SharedArrayBuffer');
  const require = createRequire(import.meta.url);
  const bundle = require.resolve('@tensorflow/tfjs-backend-wasm');
  const wasm = (await import('@tensorflow/tfjs-backend-wasm')) as unknown as WasmModule;
  if (wasmStarted()) throw new Error('wasm threads: the wasm backend is already initialised (set the threads before the backend)');
  if (!installedWorker) {
    const script = workerScript(bundle, readFileSync(bundle, 'utf8'));
    class PthreadWorker extends NodeWorker {
      private readonly pthread: boolean;
      constructor(file: string | URL, options?: object) {
        const pthread = typeof file === 'string' && file.startsWith('blob:nodedata:');
        super(pthread ? script : file, pthread ? { eval: true } : options);
        this.pthread = pthread;
        if (pthread) this.unref();
      }
      // The glue references a worker while its thread runs; the pool's threads run for the process's life.
      override ref(): void {
        if (!this.pthread) super.ref();
      }
    }
    // The glue assigns `Worker = require('worker_threads').Worker` on load; keep ours.
    Object.defineProperty(globalThis, 'Worker', { configurable: true, get: () => PthreadWorker, set: () => {} });
    installedWorker = true;
  }
  tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', true);
  wasm.setThreadsCount(threads);
  const cpus = os.cpus;
  const reported = Math.max(cpus().length, 2 * threads);
  os.cpus = () => {
    const real = cpus();
    return Array.from({ length: reported }, (_, i) => real[i % real.length]!);
  };
  return { threads, restore: () => (os.cpus = cpus) };
}

/** Whether the wasm backend has been initialised in this thread (its kernel threads are then fixed). */
export function wasmStarted(): boolean {
  return Boolean((tf.engine() as unknown as { registry: Record<string, unknown> }).registry.wasm);
}

/** After the backend is ready: how its kernel threads came out, for the backend's log line. */
export async function finishWasmThreads(setup: WasmThreadsSetup): Promise<string> {
  setup.restore();
  const got = await wasmThreadCount();
  return got === setup.threads
    ? `${got} kernel threads`
    : `${got} kernel threads (${setup.threads} asked; the build's pool did not start them)`;
}

/** Kernel threads of the wasm backend (1 before it is ready or when single-threaded). */
export async function wasmThreadCount(): Promise<number> {
  const wasm = (await import('@tensorflow/tfjs-backend-wasm')) as unknown as WasmModule;
  try {
    return Math.max(1, wasm.getThreadsCount());
  } catch {
    return 1; // not initialised
  }
}

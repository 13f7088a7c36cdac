/**
 * Backend selection: `tensorflow` (tfjs-node-gpu, else tfjs-node) -> `wasm` -> `cpu` for 'auto'.
 *
 * tfjs-node-gpu is an optional dependency: its install downloads libtensorflow and fails on machines
 * without that download, so importing it may throw; 'auto' then falls back, an explicit request fails
 * with instructions. The wasm backend gets the conv gradient kernels it lacks (`wasm-kernels.ts`).
 */
import * as tf from '@tensorflow/tfjs';
import { registerCpuKernelFixes } from './cpu-kernels.ts';
import { registerWasmTrainingKernels } from './wasm-kernels.ts';
import { prepareBatchNormWasm } from './model/batch-norm-wasm.ts';
import { useFilterGradHelpers } from './filter-grad-kernel.ts';
import { finishWasmThreads, prepareWasmThreads, wasmStarted, wasmThreadCount, type WasmThreadsSetup } from './wasm-threads.ts';

export type BackendRequest = 'auto' | 'tensorflow' | 'wasm' | 'cpu';
export type BackendName = 'tensorflow' | 'wasm' | 'cpu';
export const BACKEND_REQUESTS: readonly BackendRequest[] = ['auto', 'tensorflow', 'wasm', 'cpu'];

export interface SelectBackendOptions {
  /** Where the choice is logged. Default: stderr. Pass `() => {}` to silence. */
  log?: (line: string) => void;
  /**
   * Kernel threads of the wasm backend (its multi-threaded build, `wasm-threads.ts`): the same results
   * as one thread, faster where cores are free. Default 1. Set before the wasm backend first starts in
   * this thread; where the build cannot start, the backend runs on one thread and the reason is logged.
   */
  wasmThreads?: number;
}

/** How long the threaded wasm build may take to start its pool before the run stops. */
const WASM_THREADS_START_MS = 60_000;

async function tryTensorflow(): Promise<string | null> {
  const reasons: string[] = [];
  for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
    try {
      await import(pkg);
      if (tf.findBackend('tensorflow')) return null;
      reasons.push(`${pkg} loaded but registered no 'tensorflow' backend`);
    } catch (err) {
      const e = err as Error & { code?: string };
      reasons.push(e.code === 'ERR_MODULE_NOT_FOUND' ? `${pkg} is not installed` : `${pkg}: ${e.message.split('\n')[0]}`);
    }
  }
  return reasons.join('; ');
}

async function tryWasm(): Promise<string | null> {
  try {
    await import('@tensorflow/tfjs-backend-wasm');
    registerWasmTrainingKernels();
    return null;
  } catch (err) {
    return `@tensorflow/tfjs-backend-wasm: ${(err as Error).message.split('\n')[0]}`;
  }
}

const HOW_TO_INSTALL: Record<BackendName, string> = {
  tensorflow:
    'install it with `npm install @tensorflow/tfjs-node-gpu` on a machine with CUDA 11.2 + cuDNN 8.1 and network ' +
    'access (its install script downloads libtensorflow), or `npm install @tensorflow/tfjs-node` for CPU',
  wasm: 'reinstall dependencies with `npm install` (the package @tensorflow/tfjs-backend-wasm is missing or broken)',
  cpu: 'reinstall dependencies with `npm install` (@tensorflow/tfjs is missing or broken)',
};

/**
 * Sets the tfjs backend and returns its name. 'auto' prefers tensorflow, then wasm, then cpu; an
 * explicit request that cannot be met throws an error saying why and how to install it.
 */
export async function selectBackend(request: BackendRequest = 'auto', opts: SelectBackendOptions = {}): Promise<BackendName> {
  const log = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  if (!BACKEND_REQUESTS.includes(request)) {
    throw new Error(`backend: unknown backend '${String(request)}', expected one of ${BACKEND_REQUESTS.join(', ')}`);
  }
  // tfjs-backend-cpu prints a "use tfjs-node" banner on first use in Node; we log our own choice instead.
  tf.env().set('PROD', true);
  registerCpuKernelFixes();
  const asked = opts.wasmThreads ?? 1;
  if (!Number.isInteger(asked) || asked < 1) throw new Error(`backend: wasmThreads must be an integer >= 1, got ${asked}`);
  const order: BackendName[] = request === 'auto' ? ['tensorflow', 'wasm', 'cpu'] : [request];
  const skipped: string[] = [];
  for (const name of order) {
    const failure = name === 'tensorflow' ? await tryTensorflow() : name === 'wasm' ? await tryWasm() : null;
    const running = name === 'wasm' && wasmStarted();
    const threads = failure === null && name === 'wasm' && !running ? await wasmThreadsFor(asked, log) : null;
    if (failure === null && (await startBackend(name, threads))) {
      await tf.ready();
      const why = skipped.length ? ` (skipped: ${skipped.join(' | ')})` : '';
      const had = running ? await wasmThreadCount() : asked;
      const count = threads
        ? `, ${await finishWasmThreads(threads)}`
        : had !== asked
          ? `, ${had} kernel threads (started earlier in this process; ${asked} asked)`
          : '';
      // our filter-gradient kernel takes as many threads as the wasm backend's kernels (their pool
      // idles while it runs); none on the other backends
      await useFilterGradHelpers(name === 'wasm' ? (await wasmThreadCount()) - 1 : 0);
      if (name === 'wasm') prepareBatchNormWasm();
      log(`backend: ${name}${request === 'auto' ? ' (auto)' : ''}${count}${why}`);
      return name;
    }
    const reason = failure ?? `tf.setBackend('${name}') failed`;
    if (request !== 'auto') {
      throw new Error(`backend '${name}' is unavailable: ${reason}. To use it, ${HOW_TO_INSTALL[name]}.`);
    }
    skipped.push(`${name}: ${reason}`);
  }
  throw new Error(`backend: no tfjs backend could be initialised (${skipped.join(' | ')})`);
}

/** The threaded build's set-up for `threads` (> 1), or null: one thread (asked, or it cannot be had; logged). */
async function wasmThreadsFor(threads: number, log: (line: string) => void): Promise<WasmThreadsSetup | null> {
  if (threads === 1) return null;
  try {
    return await prepareWasmThreads(threads);
  } catch (err) {
    log(`backend: wasm on one kernel thread, not ${threads}: ${(err as Error).message}`);
    return null;
  }
}

async function startBackend(name: BackendName, threads: WasmThreadsSetup | null): Promise<boolean> {
  if (!threads) return tf.setBackend(name);
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new Error(
            `backend: the wasm backend's ${threads.threads} kernel threads did not start in ${WASM_THREADS_START_MS / 1000} s; run with one (wasmThreads 1)`,
          ),
        ),
      WASM_THREADS_START_MS,
    );
  });
  try {
    return await Promise.race([tf.setBackend(name), late]);
  } finally {
    clearTimeout(timer);
    threads.restore();
  }
}

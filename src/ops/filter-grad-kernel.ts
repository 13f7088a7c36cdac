/**
 * dL/dW of a 2-D convolution as one pass over the input and the output gradient in NHWC, on the host
 * backends (wasm, cpu): our own wasm SIMD kernel (src/ops/wasm/filter-grad.wat), no transposes (x and dy
 * are copied into its memory, their channels padded with zeros to its 4-in, 8-out register tile). The
 * stock path (`convFilterGrad`'s forward conv with the batch as channels) transposes x and dy, and
 * tfjs-wasm's Conv2D transposes and packs its "filter", the whole [Ho, Wo, N, Cout] gradient, again on
 * every call: ~17 ms of a plain-net step on one core, and its convolution itself runs memory-bound.
 *
 * For every tap (i, j) and image b one call adds dW[i][j][ci][co] += x[b, y*sh + i*dh - top, xo*sw + j*dw
 * - left, ci] * dy[b, y, xo, co] over the output pixels (y, xo) whose input pixel for that tap lies inside
 * the image (padding contributes zeros: those pixels are left out, a rectangle of rows and columns). Every
 * element of dW is a float32 sum in the order (b, y, xo): the same bits on every run, thread count and
 * machine (separate multiply and add: no fused multiply-add).
 *
 * When the wasm backend runs more than one kernel thread (src/ops/wasm-threads.ts), its pool sits idle
 * while this kernel runs, so the kernel takes as many threads too: helpers (filter-grad-helper.ts) on the
 * same shared memory each run a share of the call's jobs (filter-grad-jobs.ts: disjoint parts of dW,
 * each element's terms in the same order), the same bits as one thread.
 */
import { readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import * as tf from '@tensorflow/tfjs';
import type { ConvGeometry } from './conv.ts';
import { errorSlots, readErrorSlot } from './error-slots.ts';
import { CONTROL, jobCount, runJobs, shareStart, writeCall, type FilterGradCall, type KernelRun } from './filter-grad-jobs.ts';
import type { HelperInit } from './filter-grad-helper.ts';
import { hostTensor, hostView } from './host-memory.ts';

/** What this file uses of the WebAssembly global (not in the project's ES-only `lib`). */
interface WasmMemory {
  readonly buffer: ArrayBuffer;
  grow(pages: number): number;
}
interface WasmApi {
  Memory: new (d: { initial: number; maximum: number; shared: boolean }) => WasmMemory;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (m: object, imports: object) => { exports: Record<string, unknown> };
}
const wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

interface Kernel {
  run: KernelRun;
  module: object;
  memory: WasmMemory;
}

const PAGE = 65_536;
/** The kernel memory's most pages (4 GiB: a shared memory declares its maximum). */
const MAX_PAGES = 65_536;
let kernel: Kernel | null = null;

/** The module, instantiated once per thread on a shared memory (the helpers run on the same memory). */
function instance(): Kernel {
  if (!kernel) {
    const bytes = readFileSync(new URL('./wasm/filter-grad.wasm', import.meta.url));
    const memory = new wasm.Memory({ initial: 16, maximum: MAX_PAGES, shared: true });
    const module = new wasm.Module(bytes);
    const { exports } = new wasm.Instance(module, { env: { memory } });
    kernel = { run: exports.run as KernelRun, module, memory };
  }
  return kernel;
}

/** The helper threads and their control words (`useFilterGradHelpers`). */
interface Helpers {
  workers: Worker[];
  fromMacs: number;
  words: Int32Array;
  errors: SharedArrayBuffer;
  seq: number;
}
let helpers: Helpers | null = null;

/**
 * Multiply-adds (padded channels counted) below which a call runs on the caller alone by default. Beside
 * the backend's pool, whose threads spin for a while after each of its kernels, a woken helper waits
 * ~0.5-1 ms for a core: measured in 2-kernel-thread steps (64x128, batch 8), every DeepLab call (1-57 M,
 * 0.1-4 ms) was as slow or slower with a helper, the plain net's 75 M and 151 M calls 0.70-0.75x.
 */
const HELP_FROM_MACS = 64_000_000;
/** How long a call waits for a helper's share before it gives up on the helpers (they do not die silently). */
const HELPER_TIMEOUT_MS = 60_000;

/**
 * Runs the kernel on `count` helper threads beside this one from the next call on (0: none; the threads
 * end), for calls of at least `fromMacs` multiply-adds. Resolves when every helper is ready. The wasm
 * backend calls it with its kernel threads - 1.
 */
export async function useFilterGradHelpers(count: number, fromMacs = HELP_FROM_MACS): Promise<void> {
  if (!Number.isInteger(count) || count < 0 || count > 63)
    throw new Error(`filter-grad kernel: helpers must be an integer in 0..63, got ${count}`);
  if (!(fromMacs >= 0)) throw new Error(`filter-grad kernel: fromMacs must be a number >= 0, got ${fromMacs}`);
  if (helpers && helpers.workers.length === count) {
    helpers.fromMacs = fromMacs;
    return;
  }
  if (!helpers && count === 0) return;
  await stopHelpers();
  if (count === 0) return;
  const k = instance();
  const control = new SharedArrayBuffer(CONTROL.words(count) * 4);
  const words = new Int32Array(control);
  const errors = errorSlots(count);
  const workers: Worker[] = [];
  for (let rank = 1; rank <= count; rank++) {
    const init: HelperInit = { rank, module: k.module, memory: k.memory, control, errors };
    const worker = new Worker(new URL('./filter-grad-helper.ts', import.meta.url), { workerData: init });
    worker.unref();
    workers.push(worker);
  }
  const started = Date.now();
  const ready = () => workers.every((_, i) => Atomics.load(words, CONTROL.helper(i + 1).ready) === 1);
  const failed = new Promise<never>((_, reject) =>
    workers.forEach((w, i) =>
      w.once('error', (err) => reject(new Error(`filter-grad kernel: helper ${i + 1} failed to start: ${err.message}`))),
    ),
  );
  failed.catch(() => {});
  try {
    while (!ready()) {
      if (Date.now() - started > HELPER_TIMEOUT_MS)
        throw new Error(`filter-grad kernel: ${count} helper thread(s) not ready in ${HELPER_TIMEOUT_MS / 1000} s`);
      await Promise.race([new Promise((r) => setTimeout(r, 5)), failed]);
    }
  } catch (err) {
    await Promise.all(workers.map((w) => w.terminate()));
    throw err;
  }
  helpers = { workers, fromMacs, words, errors, seq: 0 };
}

/** Helper threads the kernel runs on beside the caller's (0 when it runs alone). */
export function filterGradHelpers(): number {
  return helpers?.workers.length ?? 0;
}

/** Jobs each helper has run so far (rank 1 first): proof that the work was shared. */
export function filterGradHelperJobs(): number[] {
  const h = helpers;
  return h ? h.workers.map((_, i) => Atomics.load(h.words, CONTROL.helper(i + 1).ran)) : [];
}

async function stopHelpers(): Promise<void> {
  const h = helpers;
  helpers = null;
  if (!h) return;
  Atomics.store(h.words, CONTROL.seq, -1);
  Atomics.notify(h.words, CONTROL.seq);
  await Promise.all(h.workers.map((w) => w.terminate()));
}

/** Runs call `c` on this thread and, when it is large enough, the helpers: its share each, all done on return. */
function runCall(k: Kernel, c: FilterGradCall, macs: number): void {
  const jobs = jobCount(c);
  const h = helpers;
  if (!h || macs < h.fromMacs || jobs < 2) {
    runJobs(k.run, c, 0, jobs);
    return;
  }
  const parties = h.workers.length + 1;
  writeCall(h.words, c);
  h.words[CONTROL.jobs] = jobs;
  h.words[CONTROL.parties] = parties;
  const seq = (h.seq = (h.seq % 0x7fff_fffe) + 1);
  Atomics.store(h.words, CONTROL.seq, seq);
  Atomics.notify(h.words, CONTROL.seq);
  let own: unknown = null;
  try {
    runJobs(k.run, c, 0, shareStart(jobs, 1, parties));
  } catch (err) {
    own = err; // the helpers still finish their shares before this call ends
  }
  const failures: string[] = [];
  for (let rank = 1; rank < parties; rank++) {
    const at = CONTROL.helper(rank);
    let done = Atomics.load(h.words, at.done);
    while (done !== seq && Atomics.wait(h.words, at.done, done, HELPER_TIMEOUT_MS) !== 'timed-out') done = Atomics.load(h.words, at.done);
    if (done !== seq) failures.push(`helper ${rank} did not finish its share in ${HELPER_TIMEOUT_MS / 1000} s`);
    else if (Atomics.load(h.words, at.failed)) failures.push(`helper ${rank} failed in its share: ${readErrorSlot(h.errors, rank - 1)}`);
  }
  if (failures.length) {
    // later calls run on this thread alone
    helpers = null;
    void Promise.all(h.workers.map((w) => w.terminate()));
    throw new Error(`filter-grad kernel: ${failures.join('; ')}`);
  }
  if (own) throw own;
}

/** Most floats of x and dy together the kernel copies into its memory (1 GiB; a wasm memory ends at 4). */
const MAX_FLOATS = 2 ** 28;

/** `c` rounded up to a multiple of `m`. */
const roundUp = (c: number, m: number) => Math.ceil(c / m) * m;

/**
 * Whether the kernel takes a layer whose x and dy hold `floats` together (its own memory holds a copy of
 * both, their channels padded to its register tile's 4 in and 8 out).
 */
export function kernelTakes(cin: number, cout: number, floats: number): boolean {
  return floats * Math.max(roundUp(cin, 4) / cin, roundUp(cout, 8) / cout) <= MAX_FLOATS;
}

/**
 * `src` ([pixels, c] float32) into `dst` from `at` as [pixels, cp] (cp >= c), the extra channels zero.
 */
function copyPadded(dst: Float32Array, at: number, src: Float32Array, c: number, cp: number): void {
  if (cp === c) {
    dst.set(src, at);
    return;
  }
  const pixels = src.length / c;
  for (let p = 0; p < pixels; p++) {
    const from = p * c;
    const to = at + p * cp;
    for (let k = 0; k < c; k++) dst[to + k] = src[from + k]!;
    // zeros by hand: a `fill` call per pixel cost 3x this loop (the stem's 3 -> 4 channels, 8 x 64 x 128)
    for (let k = c; k < cp; k++) dst[to + k] = 0;
  }
}

/**
 * dL/dW [kh, kw, cin, cout] of the convolution of x [n, h, w, cin] with geometry `g` whose output gradient
 * is dy [n, ho, wo, cout]. Host backends. Channel counts that are not multiples of 4 (in) and 8 (out) are
 * padded with zeros in the kernel's copies (the padded channels' sums are dropped; the others' are the same).
 */
export function kernelFilterGrad(
  x: tf.Tensor4D,
  dy: tf.Tensor4D,
  filterShape: readonly [number, number, number, number],
  g: ConvGeometry,
): tf.Tensor4D {
  const [n, h, w, c] = x.shape;
  const [, ho, wo, o] = dy.shape;
  const [kh, kw] = filterShape;
  const [cin, cout] = [roundUp(c, 4), roundUp(o, 8)];
  const [sh, sw] = g.strides;
  const [dh, dw] = g.dilations;
  const [top, , left] = g.pad;
  const k = instance();
  const xSize = n * h * w * cin;
  const dySize = n * ho * wo * cout;
  const size = kh * kw * cin * cout;
  const need = (xSize + dySize + size) * 4;
  if (k.memory.buffer.byteLength < need) k.memory.grow(Math.ceil((need - k.memory.buffer.byteLength) / PAGE));
  const f = new Float32Array(k.memory.buffer);
  const [atX, atDy, atOut] = [0, xSize, xSize + dySize];
  copyPadded(f, atX, hostView(x), c, cin);
  copyPadded(f, atDy, hostView(dy), o, cout);
  f.fill(0, atOut, atOut + size);
  const call: FilterGradCall = { n, h, w, cin, ho, wo, cout, kh, kw, sh, sw, dh, dw, top, left, atX, atDy, atOut };
  runCall(k, call, n * ho * wo * kh * kw * cin * cout);
  return hostTensor<tf.Rank.R4>([kh, kw, c, o], (out) => {
    if (c === cin && o === cout) {
      out.set(f.subarray(atOut, atOut + size));
      return;
    }
    // drop the padded channels' rows (input) and columns (output)
    for (let r = 0; r < kh * kw * c; r++) {
      const from = atOut + (Math.floor(r / c) * cin + (r % c)) * cout;
      out.set(f.subarray(from, from + o), r * o);
    }
  });
}

/**
 * A helper thread of our filter-gradient kernel (filter-grad-kernel.ts starts it when the wasm backend
 * runs more than one kernel thread): the same wasm module on the same shared memory, waiting on the
 * control words for a call, running its share of the call's jobs (filter-grad-jobs.ts), then saying
 * so. It never returns to its event loop: it sleeps in `Atomics.wait` between calls (no spinning).
 */
import { workerData } from 'node:worker_threads';
import { writeErrorSlot } from './error-slots.ts';
import { CONTROL, readCall, runJobs, shareStart, type KernelRun } from './filter-grad-jobs.ts';

export interface HelperInit {
  rank: number;
  module: object;
  memory: object;
  control: SharedArrayBuffer;
  /** An error slot per helper (rank 1 first, error-slots.ts): the message of the error a share met. */
  errors: SharedArrayBuffer;
}

interface WasmApi {
  Instance: new (m: object, imports: object) => { exports: Record<string, unknown> };
}

const { rank, module, memory, control, errors } = workerData as HelperInit;
const words = new Int32Array(control);
const mine = CONTROL.helper(rank);
const { Instance } = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;
const run = new Instance(module, { env: { memory } }).exports.run as KernelRun;
Atomics.store(words, mine.ready, 1);
let seen = 0;
for (;;) {
  Atomics.wait(words, CONTROL.seq, seen);
  const seq = Atomics.load(words, CONTROL.seq);
  if (seq < 0) break;
  if (seq === seen) continue;
  seen = seq;
  try {
    const jobs = words[CONTROL.jobs]!;
    const parties = words[CONTROL.parties]!;
    const [from, to] = [shareStart(jobs, rank, parties), shareStart(jobs, rank + 1, parties)];
    runJobs(run, readCall(words), from, to);
    Atomics.add(words, mine.ran, to - from);
  } catch (err) {
    writeErrorSlot(errors, rank - 1, err);
    Atomics.store(words, mine.failed, 1);
  }
  Atomics.store(words, mine.done, seq);
  Atomics.notify(words, mine.done);
}

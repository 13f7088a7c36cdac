/**
 * The benchmark's one-replica step in a worker thread, answering each 'step' message with the step's
 * milliseconds: on a wasm backend with more than one kernel thread (src/ops/wasm-threads.ts: a backend's
 * kernel threads are fixed when it starts, so `bench:step` runs this variant beside its own one-thread
 * backend and asks it for one step at a time, in turn with the others), or, for `--floor`, one of the
 * independent shards that run at once (one kernel thread, its own rows of the batch, no sum).
 */
import { parentPort, workerData } from 'node:worker_threads';
import * as tf from '@tensorflow/tfjs';
import { selectBackend, type BackendName } from '../src/ops/backend.ts';
import { wasmThreadCount } from '../src/ops/wasm-threads.ts';
import { benchBatch, benchNet, benchOptimizer, timedStep } from './step-program.ts';

export interface KernelWorkerInit {
  backend: BackendName;
  kernelThreads: number;
  net: string;
  classes: number;
  bn: 'frozen' | 'trainable';
  batch: number;
  size: [number, number];
}

const init = workerData as KernelWorkerInit;
const port = parentPort!;
await selectBackend(init.backend, { log: () => {}, wasmThreads: init.kernelThreads });
const m = benchNet(init.net, init.classes, init.bn);
const opt = benchOptimizer(m);
const data = benchBatch(init.batch, init.size, init.classes);
port.on('message', (msg: 'step' | 'close') => {
  if (msg === 'close') {
    tf.dispose([data.x, data.labels]);
    opt.dispose();
    m.dispose();
    port.close();
    return;
  }
  port.postMessage(timedStep(m, opt, data));
});
port.postMessage({ ready: init.backend === 'wasm' ? await wasmThreadCount() : 1 });

/**
 * The benchmark's one-replica step on a wasm backend with more than one kernel thread
 * (src/ops/wasm-threads.ts), in a worker thread: a backend's kernel threads are fixed when it starts,
 * so `bench:step` runs this variant beside its own one-thread backend and asks it for one step at a
 * time, in turn with the others. Each 'step' message is answered with the step's milliseconds.
 */
import { parentPort, workerData } from 'node:worker_threads';
import * as tf from '@tensorflow/tfjs';
import { selectBackend } from '../src/ops/backend.ts';
import { wasmThreadCount } from '../src/ops/wasm-threads.ts';
import { gradients } from '../src/ops/optim.ts';
import { benchLoss, benchNet, benchOptimizer } from './step-program.ts';

export interface KernelWorkerInit {
  kernelThreads: number;
  net: string;
  classes: number;
  bn: 'frozen' | 'trainable';
  batch: number;
  size: [number, number];
}

const init = workerData as KernelWorkerInit;
const port = parentPort!;
await selectBackend('wasm', { log: () => {}, wasmThreads: init.kernelThreads });
const m = benchNet(init.net, init.classes, init.bn);
const opt = benchOptimizer(m);
const [h, w] = init.size;
const x = tf.randomNormal([init.batch, h, w, 3], 0, 1, 'float32', 1) as tf.Tensor4D;
const labels = tf.randomUniformInt([init.batch, h, w], 0, init.classes, 2) as tf.Tensor3D;
port.on('message', (msg: 'step' | 'close') => {
  if (msg === 'close') {
    tf.dispose([x, labels]);
    opt.dispose();
    m.dispose();
    port.close();
    return;
  }
  const t0 = performance.now();
  tf.tidy(() => opt.step(gradients(() => benchLoss(m, x, labels), m.params).grads, 1e-3));
  port.postMessage(performance.now() - t0);
});
port.postMessage({ ready: await wasmThreadCount() });

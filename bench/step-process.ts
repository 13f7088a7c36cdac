/**
 * One setting of the step benchmark in a process of its own (`bench:step --isolate`): a training process
 * runs one setting, so its steps share the process with nothing else (no idle models, replicas or kernel
 * threads of the other settings, as in bench:step's in-process rounds). Takes its setting as one JSON
 * argument (`StepProcessSetting`), takes one warm-up step and `steps` timed ones, and prints one JSON
 * line: `{ "kernelThreads": <started>, "ms": [<per step>] }`. Exit 1 with the error on stderr.
 */
import * as tf from '@tensorflow/tfjs';
import { selectBackend, type BackendName } from '../src/ops/backend.ts';
import { wasmThreadCount } from '../src/ops/wasm-threads.ts';
import { gradients } from '../src/ops/optim.ts';
import { DataParallel } from '../src/parallel/data-parallel.ts';
import { benchLoss, benchNet, benchOptimizer } from './step-program.ts';

export interface StepProcessSetting {
  backend: BackendName;
  net: string;
  size: [number, number];
  batch: number;
  classes: number;
  bn: 'frozen' | 'trainable';
  /** Data-parallel replicas (1: the one-thread step). */
  replicas: number;
  /** Kernel threads of every replica's wasm backend. */
  kernelThreads: number;
  steps: number;
}

const s = JSON.parse(process.argv[2] ?? 'null') as StepProcessSetting | null;
if (!s) {
  console.error('usage: node bench/step-process.ts <setting as JSON> (bench:step --isolate starts it)');
  process.exit(2);
}
try {
  await selectBackend(s.backend, { log: () => {}, wasmThreads: s.kernelThreads });
  const m = benchNet(s.net, s.classes, s.bn);
  const opt = benchOptimizer(m);
  const [h, w] = s.size;
  // the same batch as the in-process rounds (bench/step.ts): same seeds
  const x = tf.randomNormal([s.batch, h, w, 3], 0, 1, 'float32', 1) as tf.Tensor4D;
  const labels = tf.randomUniformInt([s.batch, h, w], 0, s.classes, 2) as tf.Tensor3D;
  const host = {
    images: { data: x.dataSync() as Float32Array, shape: x.shape },
    labels: { data: labels.dataSync() as Int32Array, shape: labels.shape },
  };
  const dp =
    s.replicas > 1
      ? await DataParallel.start({
          threads: s.replicas,
          backend: s.backend,
          kernelThreads: s.kernelThreads,
          program: {
            module: new URL('./step-program.ts', import.meta.url).href,
            description: { net: s.net, classes: s.classes, bn: s.bn },
          },
          replica: m,
        })
      : null;
  const step = () => {
    const t0 = performance.now();
    tf.tidy(() => {
      const { grads } = dp ? dp.gradients(host, {}, m.params) : gradients(() => benchLoss(m, x, labels), m.params);
      opt.step(grads, 1e-3);
    });
    return performance.now() - t0;
  };
  step();
  const ms = Array.from({ length: s.steps }, step);
  const kernelThreads = s.backend === 'wasm' ? await wasmThreadCount() : 1;
  await dp?.close();
  console.log(JSON.stringify({ kernelThreads, ms }));
  process.exit(0);
} catch (err) {
  console.error((err as Error).message);
  process.exit(1);
}

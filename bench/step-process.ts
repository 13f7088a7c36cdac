/**
 * One setting of the step benchmark in a process of its own (`bench:step --isolate`): a training process
 * runs one setting, so its steps share the process with nothing else (no idle models, replicas or kernel
 * threads of the other settings, as in bench:step's in-process rounds). Takes its setting as one JSON
 * argument (`StepProcessSetting`), takes one warm-up step and `steps` timed ones, and prints one JSON
 * line: `{ "kernelThreads": <started>, "ms": [<per step>] }`. Exit 1 with the error on stderr.
 */
import { selectBackend, type BackendName } from '../src/ops/backend.ts';
import { wasmThreadCount } from '../src/ops/wasm-threads.ts';
import { DataParallel } from '../src/parallel/data-parallel.ts';
import { benchBatch, benchNet, benchOptimizer, benchProgram, timedStep } from './step-program.ts';

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
  const data = benchBatch(s.batch, s.size, s.classes); // the in-process rounds' batch (bench/step.ts)
  const dp =
    s.replicas > 1
      ? await DataParallel.start({
          threads: s.replicas,
          backend: s.backend,
          kernelThreads: s.kernelThreads,
          program: benchProgram(s.net, s.classes, s.bn),
          replica: m,
        })
      : null;
  timedStep(m, opt, data, dp); // warm-up
  const ms = Array.from({ length: s.steps }, () => timedStep(m, opt, data, dp));
  const kernelThreads = s.backend === 'wasm' ? await wasmThreadCount() : 1;
  await dp?.close();
  console.log(JSON.stringify({ kernelThreads, ms }));
  process.exit(0);
} catch (err) {
  console.error((err as Error).message);
  process.exit(1);
}

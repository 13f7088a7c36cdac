/**
 * A data-parallel replica on a worker thread (src/parallel/data-parallel.ts starts it): its own tfjs
 * backend and model, built by the program's module; each step it takes the main thread's weights from
 * shared memory, runs the program's loss on its shard, writes its gradients and loss terms into its slot,
 * meets the other replicas at a barrier, sums its piece of the gradients (`sumGradientPiece`) and meets
 * them again at the step's end. A failure is written into its error slot and
 * breaks the barrier, so nobody waits for it.
 */
import { parentPort, workerData } from 'node:worker_threads';
import * as tf from '@tensorflow/tfjs';
import { selectBackend, type BackendName } from '../ops/backend.ts';
import { wasmThreadCount } from '../ops/wasm-threads.ts';
import { AllReduce, Barrier } from './collective.ts';
import { checkSameLayout, layoutOf, readVariables } from './layout.ts';
import type { Program, ProgramRef } from './program.ts';
import { runShard, sumGradientPiece, writeError, type SharedAreas, type StepMessage } from './shared-step.ts';

export interface ReplicaInit {
  rank: number;
  parties: number;
  backend: BackendName;
  program: ProgramRef;
  /** The main model's variable names, sorted, and sizes. */
  names: string[];
  sizes: number[];
  areas: SharedAreas;
  /** Kernel threads of this worker's wasm backend. */
  kernelThreads: number;
}

const init = workerData as ReplicaInit;
const port = parentPort!;

async function start() {
  await selectBackend(init.backend, { log: () => {}, wasmThreads: init.kernelThreads });
  const { program } = (await import(init.program.module)) as { program: Program };
  const replica = program.build(init.program.description);
  checkSameLayout(new Map(init.names.map((n, i) => [n, init.sizes[i]!])), replica.variables, `replica ${init.rank}`);
  const layout = layoutOf(replica.variables);
  const barrier = new Barrier(init.areas.barrier, init.parties);
  const reduce = new AllReduce(init.areas.reduce, barrier, init.rank, init.areas.reduceCapacity);
  replica.setCrossReplicaSum?.((v) => reduce.sum(v));
  const weights = new Float32Array(init.areas.weights);
  port.on('message', (msg: StepMessage | { type: 'close' }) => {
    if (msg.type === 'close') {
      replica.dispose();
      port.close();
      return;
    }
    try {
      readVariables(layout, replica.variables, weights);
      reduce.resetCalls();
      const { outputs } = runShard(program, replica, layout, msg, init.rank, init.areas, (v) => reduce.sum(v));
      tf.dispose([...outputs.values()]);
      barrier.wait();
      sumGradientPiece(init.areas, layout, msg.trained, init.rank, init.parties);
      barrier.wait();
    } catch (err) {
      writeError(init.areas, init.rank, err);
      barrier.break();
    }
  });
  const kernelThreads = init.backend === 'wasm' ? await wasmThreadCount() : 1;
  port.postMessage({ type: 'ready', tensors: tf.memory().numTensors, kernelThreads });
}

start().catch((err) => port.postMessage({ type: 'failed', message: (err as Error).stack ?? String(err) }));

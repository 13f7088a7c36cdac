/**
 * Data-parallel training steps over worker threads (issue 14): tfjs-wasm has no threads in Node, so each
 * extra core gets a worker with its own backend and a replica of the model. A step splits the batch
 * along its first axis (replica 0, the main thread, takes the first rows), every replica runs the same
 * program (src/parallel/program.ts) on its shard, batch norm's statistics are those of the whole batch
 * (synchronised through shared memory), and the gradients are summed in rank order into what one
 * process would have computed, up to float rounding (each replica sums a piece of them, so the sum's
 * time does not grow with the thread count). The optimiser, its state, the checkpoints and
 * everything else stay on the main thread: only its weights travel, in shared memory, before each step.
 *
 * The step is synchronous (the workers receive their shard by message, as views of a shared area the
 * main thread copies the batch into, and meet the main thread at a barrier), so the trainer's step
 * contract is unchanged.
 */
import { Worker } from 'node:worker_threads';
import * as tf from '@tensorflow/tfjs';
import type { BackendName } from '../ops/backend.ts';
import { hostTensor } from '../ops/host-memory.ts';
import type { Param } from '../ops/model/params.ts';
import { AllReduce, Barrier, BarrierBroken } from './collective.ts';
import { layoutOf, writeVariables, type Layout } from './layout.ts';
import type { HostTensors, Program, ProgramArgs, ProgramRef, Replica } from './program.ts';
import {
  labelledCounts,
  readError,
  runShard,
  sharedAreas,
  sumGradientPiece,
  MAX_TERMS,
  type SharedAreas,
  type StepMessage,
} from './shared-step.ts';
import type { ReplicaInit } from './replica-worker.ts';

/** Floats per replica in the all-reduce scratch: BN's [sum(dy), sum(dy * x^)] of the widest layer, the prototypes' sums. */
const REDUCE_CAPACITY = 65_536;

export interface DataParallelOptions {
  /** Replicas including the main thread (>= 2; 1 is the single-process path, no DataParallel). */
  threads: number;
  backend: BackendName;
  program: ProgramRef;
  /** The main thread's replica: the model the optimiser updates. */
  replica: Replica;
  /** Kernel threads of each worker's wasm backend (src/ops/wasm-threads.ts; default 1). */
  kernelThreads?: number;
}

/** Rows of each of `parties` shards of `n` rows: as even as possible, the first ones one larger. */
export function shardRows(n: number, parties: number): number[] {
  return Array.from({ length: parties }, (_, r) => Math.floor(n / parties) + (r < n % parties ? 1 : 0));
}

/**
 * `tensors` split along their first axis into `parties` shards (each tensor by its own rows: `shardRows`),
 * copied into `area` when one is given (views of it: the tensors one after another, each in the order of
 * its rows, so `area` needs `bytesOf(tensors)` bytes), else into fresh arrays.
 */
export function splitRows(tensors: HostTensors, parties: number, area?: ArrayBufferLike): HostTensors[] {
  if (area && area.byteLength < bytesOf(tensors))
    throw new Error(`splitRows: the area has ${area.byteLength} bytes, the tensors ${bytesOf(tensors)}`);
  const shards: HostTensors[] = Array.from({ length: parties }, () => ({}));
  let at = 0;
  for (const [name, t] of Object.entries(tensors)) {
    const per = t.data.length / t.shape[0]!;
    let start = 0;
    shardRows(t.shape[0]!, parties).forEach((count, r) => {
      const rows = t.data.subarray(start * per, (start + count) * per);
      let data: Float32Array | Int32Array;
      if (area) {
        data = rows instanceof Int32Array ? new Int32Array(area, at, rows.length) : new Float32Array(area, at, rows.length);
        data.set(rows);
        at += rows.byteLength;
      } else data = rows.slice();
      shards[r]![name] = { data, shape: [count, ...t.shape.slice(1)] };
      start += count;
    });
  }
  return shards;
}

/** Bytes of the tensors' data. */
export function bytesOf(tensors: HostTensors): number {
  return Object.values(tensors).reduce((n, t) => n + t.data.byteLength, 0);
}

export class DataParallel {
  readonly threads: number;
  /** Kernel threads each worker's wasm backend started with (rank 1 first). */
  readonly workerKernelThreads: number[];
  private readonly program: Program;
  private readonly replica: Replica;
  private readonly workers: Worker[];
  private readonly layout: Layout;
  private readonly areas: SharedAreas;
  private readonly barrier: Barrier;
  private readonly reduce: AllReduce;
  private broken: string | null = null;
  /** The step's batch as `splitRows` lays it out (grown when a batch needs more): the workers read their shard in place. */
  private inputs = new SharedArrayBuffer(0);

  private constructor(
    threads: number,
    program: Program,
    replica: Replica,
    workers: Worker[],
    layout: Layout,
    areas: SharedAreas,
    workerKernelThreads: number[],
  ) {
    this.threads = threads;
    this.workerKernelThreads = workerKernelThreads;
    this.program = program;
    this.replica = replica;
    this.workers = workers;
    this.layout = layout;
    this.areas = areas;
    this.barrier = new Barrier(areas.barrier, threads);
    this.reduce = new AllReduce(areas.reduce, this.barrier, 0, areas.reduceCapacity);
  }

  /** Starts `threads - 1` workers (each builds its replica and backend) and waits until all are ready. */
  static async start(opts: DataParallelOptions): Promise<DataParallel> {
    const { threads } = opts;
    if (!Number.isInteger(threads) || threads < 2 || threads > 64)
      throw new Error(`data-parallel: threads must be an integer in 2..64, got ${threads} (1 = no worker threads)`);
    if (opts.backend === 'tensorflow')
      throw new Error("data-parallel: the tensorflow backend keeps its own threads; worker replicas are for 'wasm' and 'cpu'");
    const { program } = (await import(opts.program.module)) as { program: Program };
    if (!program?.loss || !program.build) throw new Error(`data-parallel: ${opts.program.module} exports no 'program' with build and loss`);
    const layout = layoutOf(opts.replica.variables);
    const areas = sharedAreas(threads, layout.total, Barrier.buffer(), AllReduce.buffer(threads, REDUCE_CAPACITY), REDUCE_CAPACITY);
    const workers: Worker[] = [];
    let kernelThreads: number[] = [];
    try {
      for (let rank = 1; rank < threads; rank++) {
        const init: ReplicaInit = {
          rank,
          parties: threads,
          backend: opts.backend,
          program: opts.program,
          names: layout.names,
          sizes: layout.names.map((n) => layout.sizes.get(n)!),
          areas,
          kernelThreads: opts.kernelThreads ?? 1,
        };
        workers.push(new Worker(new URL('./replica-worker.ts', import.meta.url), { workerData: init }));
      }
      kernelThreads = await Promise.all(
        workers.map(
          (w, i) =>
            new Promise<number>((resolve, reject) => {
              const onExit = (code: number) =>
                reject(new Error(`data-parallel: replica ${i + 1} exited with code ${code} before it was ready`));
              w.once('error', reject);
              w.once('exit', onExit);
              w.once('message', (m: { type: string; message?: string; kernelThreads?: number }) => {
                w.off('exit', onExit);
                if (m.type === 'ready') resolve(m.kernelThreads ?? 1);
                else reject(new Error(`data-parallel: replica ${i + 1} failed to start: ${m.message}`));
              });
            }),
        ),
      );
    } catch (err) {
      await Promise.all(workers.map((w) => w.terminate()));
      throw err;
    }
    const dp = new DataParallel(threads, program, opts.replica, workers, layout, areas, kernelThreads);
    opts.replica.setCrossReplicaSum?.((v) => dp.reduce.sum(v));
    return dp;
  }

  /**
   * Loss terms and gradients of one step over `batch`: the sum over the replicas of each shard's part,
   * what the program's loss on the whole batch would give in one process. Gradients are new tensors
   * (the caller disposes them, and the `outputs` the program handed back); the weights do not change
   * here. `whole`: tensors every replica gets unsplit.
   */
  gradients(
    batch: HostTensors,
    args: ProgramArgs,
    params: Param[],
    whole: HostTensors = {},
  ): { losses: Record<string, number>; grads: Map<string, tf.Tensor>; outputs: Map<string, tf.Tensor> } {
    if (this.broken) throw new Error(`data-parallel: a previous step failed (${this.broken}); the run must restart`);
    for (const [name, t] of Object.entries(batch))
      if (t.shape[0]! < this.threads)
        throw new Error(
          `data-parallel: '${name}' has ${t.shape[0]} rows, it cannot be split over ${this.threads} threads (train.threads at most the batch size)`,
        );
    const bytes = bytesOf(batch);
    // the shards travel in shared memory (a message shares it, copies nothing), reused step after step
    if (this.inputs.byteLength < bytes) this.inputs = new SharedArrayBuffer(bytes);
    const shards = splitRows(batch, this.threads, this.inputs);
    const labelled = labelledCounts(shards);
    const trained = params.map((p) => p.name).sort();
    for (const name of trained)
      if (!this.layout.sizes.has(name)) throw new Error(`data-parallel: parameter '${name}' is not a variable of the replicas`);
    writeVariables(this.layout, this.replica.variables, new Float32Array(this.areas.weights));
    this.workers.forEach((w, i) => {
      const msg: StepMessage = { type: 'step', shard: shards[i + 1]!, whole, args, trained, labelled: labelled[i + 1]! };
      w.postMessage(msg);
    });
    let main: { names: string[]; outputs: Map<string, tf.Tensor> };
    try {
      this.reduce.resetCalls();
      main = runShard(
        this.program,
        this.replica,
        this.layout,
        { type: 'step', shard: shards[0]!, whole, args, trained, labelled: labelled[0]! },
        0,
        this.areas,
        (v) => this.reduce.sum(v),
      );
      this.barrier.wait();
      sumGradientPiece(this.areas, this.layout, trained, 0, this.threads);
      this.barrier.wait();
    } catch (err) {
      this.barrier.break();
      const failed = [...Array(this.threads).keys()]
        .slice(1)
        .map((r) => [r, readError(this.areas, r)] as const)
        .filter(([, e]) => e && !e.startsWith('barrier'));
      this.broken = failed.length ? failed.map(([r, e]) => `replica ${r}: ${e}`).join('; ') : (err as Error).message;
      throw err instanceof BarrierBroken && failed.length ? new Error(`data-parallel step failed: ${this.broken}`) : err;
    }
    return { losses: this.sumTerms(main.names), grads: this.summedGrads(trained), outputs: main.outputs };
  }

  /** Each term summed over the replicas in rank order (term names from the main thread's program). */
  private sumTerms(names: string[]): Record<string, number> {
    const slot = (r: number) => new Float64Array(this.areas.terms, r * (MAX_TERMS + 1) * 8, MAX_TERMS + 1);
    const count = slot(0)[0]!;
    let total = 0;
    const terms = new Float64Array(count);
    for (let r = 0; r < this.threads; r++) {
      const s = slot(r);
      total += s[1]!;
      for (let i = 0; i < count; i++) terms[i]! += s[2 + i]!;
    }
    return { total, ...Object.fromEntries(names.map((n, i) => [n, terms[i]!])) };
  }

  /** The gradients summed over the replicas (slot 0 after every replica's `sumGradientPiece`), copied into the backend's memory. */
  private summedGrads(trained: string[]): Map<string, tf.Tensor> {
    const out = new Map<string, tf.Tensor>();
    for (const name of trained) {
      const sum = new Float32Array(this.areas.grads, this.layout.offsets.get(name)! * 4, this.layout.sizes.get(name)!);
      out.set(
        name,
        hostTensor(this.replica.variables.get(name)!.shape, (total) => total.set(sum)),
      );
    }
    return out;
  }

  async close(): Promise<void> {
    this.replica.setCrossReplicaSum?.(null);
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

/**
 * One replica's part of a data-parallel step, the same code on the main thread and in the workers: the
 * program's loss on this shard, its gradients w.r.t. the step's trained parameters written into this
 * replica's gradient slot (zeros where a parameter has none), its loss terms into its term slot.
 */
import * as tf from '@tensorflow/tfjs';
import { errorSlots, readErrorSlot, writeErrorSlot } from '../ops/error-slots.ts';
import { floatValues } from '../ops/host-memory.ts';
import { IGNORE_LABEL } from '../ops/masks.ts';
import type { Layout } from './layout.ts';
import type { CrossReplicaSum } from '../ops/model/layers.ts';
import type { HostTensors, LabelledIn, Program, ProgramArgs, Replica, ShardContext } from './program.ts';

/** Most loss terms a program may report. */
export const MAX_TERMS = 16;

/** Shared memory of a data-parallel group (SharedArrayBuffers travel to the workers by reference). */
export interface SharedAreas {
  /** The main model's variables (layout order), written by the main thread before each step. */
  weights: SharedArrayBuffer;
  /** One gradient area (layout size) per replica. */
  grads: SharedArrayBuffer;
  /** Per replica: the number of terms, then their values (Float64). */
  terms: SharedArrayBuffer;
  /** Per replica: an error text (UTF-8, zero-terminated). */
  errors: SharedArrayBuffer;
  barrier: SharedArrayBuffer;
  reduce: SharedArrayBuffer;
  reduceCapacity: number;
}

export function sharedAreas(
  parties: number,
  total: number,
  barrier: SharedArrayBuffer,
  reduce: SharedArrayBuffer,
  reduceCapacity: number,
): SharedAreas {
  return {
    weights: new SharedArrayBuffer(total * 4),
    grads: new SharedArrayBuffer(parties * total * 4),
    terms: new SharedArrayBuffer(parties * (MAX_TERMS + 1) * 8),
    errors: errorSlots(parties),
    barrier,
    reduce,
    reduceCapacity,
  };
}

export interface StepMessage {
  type: 'step';
  /** This replica's shard. */
  shard: HostTensors;
  /** Tensors every replica gets whole (e.g. the prototypes). */
  whole: HostTensors;
  args: ProgramArgs;
  /** Names of the parameters trained this step (layout order). */
  trained: string[];
  /** Per split int32 input: [this shard's labelled pixels, the whole batch's] (`labelledCounts`). */
  labelled: Record<string, [number, number]>;
}

/**
 * Per split int32 input of `shards` (one per replica): [each shard's labelled pixels (not 255), the batch's],
 * the batch's summed as float32 in rank order, as the replicas' all-reduce of the shards' counts would.
 */
export function labelledCounts(shards: HostTensors[]): Record<string, [number, number]>[] {
  const out: Record<string, [number, number]>[] = shards.map(() => ({}));
  for (const [name, t] of Object.entries(shards[0] ?? {})) {
    if (!(t.data instanceof Int32Array)) continue;
    const counts = shards.map((s) => {
      const data = s[name]!.data;
      let n = 0;
      for (let i = 0; i < data.length; i++) if (data[i] !== IGNORE_LABEL) n++;
      return n;
    });
    const batch = counts.reduce((all, c) => Math.fround(all + Math.fround(c)), 0);
    counts.forEach((c, r) => {
      out[r]![name] = [c, batch];
    });
  }
  return out;
}

/**
 * Runs the program's loss on the shard; gradients and terms go into the replica's slots. Returns the
 * term names (sorted) and the tensors the program handed back (`output`; kept: the caller disposes them).
 */
export function runShard(
  program: Program,
  replica: Replica,
  layout: Layout,
  msg: StepMessage,
  rank: number,
  areas: SharedAreas,
  sum: CrossReplicaSum,
): { names: string[]; outputs: Map<string, tf.Tensor> } {
  const outputs = new Map<string, tf.Tensor>();
  const grads = new Float32Array(areas.grads, rank * layout.total * 4, layout.total);
  const terms = new Float64Array(areas.terms, rank * (MAX_TERMS + 1) * 8, MAX_TERMS + 1);
  const names = tf.tidy(() => {
    // wasm copies a tensor's values into its heap; the cpu backend keeps the array it is given, and the
    // shards lie in shared memory that the next step overwrites
    const own = tf.getBackend() !== 'wasm';
    const shard = Object.fromEntries(
      Object.entries({ ...msg.shard, ...msg.whole }).map(([k, t]) => [
        k,
        tf.tensor(own ? t.data.slice() : t.data, t.shape, t.data instanceof Int32Array ? 'int32' : 'float32'),
      ]),
    );
    program.prepare?.(replica, msg.args);
    const vars = msg.trained.map((n) => replica.variables.get(n)!);
    const frozen = msg.trained.filter((_, i) => !vars[i]!.trainable);
    if (frozen.length)
      throw new Error(
        `data-parallel: replica ${rank} does not train ${frozen.slice(0, 3).join(', ')} (the program's prepare sets its mode)`,
      );
    let values: Record<string, tf.Scalar> = {};
    const { value, grads: g } = tf.variableGrads(() => {
      const out = program.loss(replica, shard, msg.args, shardContext(sum, outputs, msg.labelled));
      values = Object.fromEntries(Object.entries(out.terms).map(([k, t]) => [k, tf.keep(t)]));
      return out.total;
    }, vars);
    const names = Object.keys(values).sort();
    if (names.length + 1 > MAX_TERMS) throw new Error(`data-parallel: ${names.length} loss terms, at most ${MAX_TERMS - 1}`);
    terms[0] = names.length;
    terms[1] = value.dataSync()[0]!;
    names.forEach((n, i) => {
      terms[2 + i] = values[n]!.dataSync()[0]!;
    });
    tf.dispose(Object.values(values));
    grads.fill(0);
    msg.trained.forEach((n, i) => {
      const gi = g[vars[i]!.name];
      if (gi) grads.set(floatValues(gi), layout.offsets.get(n)!);
    });
    return names;
  });
  return { names, outputs };
}

/**
 * This replica's part of the step's gradient sum (after every replica has written its slot): the trained
 * parameters' elements, taken in layout order as one run and cut into `parties` contiguous pieces, piece
 * `rank` summed over the slots in rank order into slot 0 (slot 0 + slot 1 + ... element by element,
 * float32 after each addition, as one thread adding the slots would). Every replica sums its own piece at
 * once, so the sum takes 1/parties of one thread's time and the main thread, not the only one summing,
 * reads slot 0 when all have finished (the next barrier).
 */
export function sumGradientPiece(areas: SharedAreas, layout: Layout, trained: string[], rank: number, parties: number): void {
  const ranges = trained.map((n) => [layout.offsets.get(n)!, layout.sizes.get(n)!] as const);
  const all = ranges.reduce((n, [, size]) => n + size, 0);
  const [from, to] = [Math.floor((all * rank) / parties), Math.floor((all * (rank + 1)) / parties)];
  const total = new Float32Array(areas.grads, 0, layout.total);
  let seen = 0;
  for (const [at, size] of ranges) {
    const lo = Math.max(from - seen, 0);
    const hi = Math.min(to - seen, size);
    seen += size;
    if (lo >= hi) continue;
    for (let r = 1; r < parties; r++) {
      const slot = new Float32Array(areas.grads, (r * layout.total + at) * 4, size);
      for (let i = lo; i < hi; i++) total[at + i]! += slot[i]!;
    }
  }
}

/**
 * The cross-replica helpers a program's loss gets (src/parallel/program.ts ShardContext); `labelled`: this
 * shard's and the batch's labelled pixels per split int32 input, counted on the host (`labelledCounts`).
 */
export function shardContext(
  sum: CrossReplicaSum,
  outputs: Map<string, tf.Tensor>,
  labelled: Record<string, [number, number]> = {},
): ShardContext {
  const counts = (count: number | LabelledIn): [number, number] => {
    if (typeof count === 'number') return [count, sum(Float32Array.of(count))[0]!];
    const known = labelled[count.labelledIn];
    if (!known) {
      const inputs = Object.keys(labelled);
      throw new Error(
        `data-parallel: batchMean counts the labelled pixels of '${count.labelledIn}', which is not a split int32 input of this step (${inputs.length ? `those: ${inputs.join(', ')}` : 'it has none'})`,
      );
    }
    return known;
  };
  return {
    sum,
    output: (name, t) => {
      outputs.get(name)?.dispose();
      outputs.set(name, tf.keep(t.clone()));
    },
    batchMean: (mean, count) => {
      const [mine, all] = counts(count);
      return all > 0 ? (tf.mul(mean, mine / all) as tf.Scalar) : (tf.mul(mean, 0) as tf.Scalar);
    },
  };
}

export function writeError(areas: SharedAreas, rank: number, err: unknown): void {
  writeErrorSlot(areas.errors, rank, err);
}

export function readError(areas: SharedAreas, rank: number): string {
  return readErrorSlot(areas.errors, rank);
}

/**
 * The seam between a training method and data-parallel replicas: a *program* is the loss of one step on
 * one shard of its batch, in a module every replica can import (`module` URL + its `program` export),
 * because a worker thread cannot receive a closure. The main thread runs the same program on its own
 * model (replica 0), the workers on theirs; src/parallel/data-parallel.ts splits the batch, sums the
 * gradients and applies the update. A multi-device path would use the same split/sum.
 */
import type * as tf from '@tensorflow/tfjs';
import type { CrossReplicaSum } from '../ops/model/layers.ts';

/** A batch as host arrays by name (split along the first axis, the batch axis, unless given whole). */
export type HostTensors = Record<string, HostTensor>;

export interface HostTensor {
  data: Float32Array | Int32Array;
  shape: number[];
}

/** What one replica trains: its named variables (the weights broadcast each step) and its BN hook. */
export interface Replica {
  /** Every named variable of the model, trained or buffer (BN statistics), by the main model's names. */
  variables: ReadonlyMap<string, tf.Variable>;
  /** Synchronised batch norm across the replicas (null: off). Absent for nets without BN. */
  setCrossReplicaSum?(sum: CrossReplicaSum | null): void;
  dispose(): void;
}

/** Plain values a step passes to every replica (learning-rate-free: the update is the main thread's). */
export type ProgramArgs = Record<string, number | string | boolean>;

export interface Program<R extends Replica = Replica> {
  /** Builds a worker's replica from the description the main thread gave (its weights arrive each step). */
  build(description: unknown): R;
  /**
   * The loss of `shard` on replica `r`, as this shard's part of the whole batch's loss: the replicas'
   * totals add up to the single-process loss. A mean over the batch is `shard.batchMean(mean over this
   * shard, this shard's count)`; anything else of the whole batch goes through `shard.sum`.
   */
  loss(
    r: R,
    tensors: Record<string, tf.Tensor>,
    args: ProgramArgs,
    shard: ShardContext,
  ): { total: tf.Scalar; terms: Record<string, tf.Scalar> };
  /**
   * Sets the replica up for the step before its gradient tape starts (e.g. the phase's BN mode, which
   * decides which variables are trained: the tape skips variables that are not trainable when it starts).
   */
  prepare?(r: R, args: ProgramArgs): void;
}

/** What a program's loss knows of the other shards of its batch. */
export interface ShardContext {
  /** Element-wise sum of a vector over the replicas (the same bits in each; the vector itself with one). */
  sum: CrossReplicaSum;
  /**
   * A mean over this shard's `count` items (pixels, images) made this shard's part of the mean over the
   * whole batch: `mean x count / (count over all shards)`; 0 when no shard has any. A number is summed
   * over the replicas then and there (every replica waits for the slowest to reach this point);
   * `{ labelledIn: name }`, the labelled pixels (not 255) of the split int32 input `name`, was counted
   * on the host before the step, so nobody waits, and the result has the same bits.
   */
  batchMean(mean: tf.Scalar, count: number | LabelledIn): tf.Scalar;
  /** Hands a tensor of this step back to the caller (the main thread's replica's; the workers' are dropped). */
  output(name: string, t: tf.Tensor): void;
}

/** A count the host knows before the step: the labelled pixels (label not 255) of split int32 input `labelledIn`. */
export interface LabelledIn {
  labelledIn: string;
}

/**
 * A loss's mean over this batch as it is (`batchMean` null: one process), or with `batchMean` this
 * shard's part of the whole batch's mean; `count` (this shard's items) is read only then. Lets one loss
 * function serve a method's one-thread step and its shard program.
 */
export function meanPart(batchMean: ShardContext['batchMean'] | null, mean: tf.Scalar, count: (() => number) | LabelledIn): tf.Scalar {
  return batchMean ? batchMean(mean, typeof count === 'function' ? count() : count) : mean;
}

export interface ProgramRef {
  /** URL of the module that exports `program` (import.meta.url of that module). */
  module: string;
  /** What `program.build` needs to make a replica of the main model. */
  description: unknown;
}

/**
 * What the replicas of a data-parallel step share, in one SharedArrayBuffer each: a barrier and a
 * fixed-order sum (all-reduce). Both block (Atomics.wait; Node allows it on the main thread too), because
 * they run inside a synchronous forward or backward pass: batch norm's statistics of the whole batch
 * are summed over the replicas at every BN layer.
 *
 * Every replica sums the slots in rank order 0..P-1 with the same float operations, so all replicas get
 * the same bits, and a run is reproducible for a fixed replica count. A replica that fails breaks the
 * barrier: the others throw instead of waiting for it.
 */

/** Int32 slots of the barrier: arrivals, generation, broken flag. */
const ARRIVED = 0;
const GENERATION = 1;
const BROKEN = 2;

export class BarrierBroken extends Error {
  constructor(what: string) {
    super(what);
    this.name = 'BarrierBroken';
  }
}

export class Barrier {
  readonly parties: number;
  private readonly cells: Int32Array;
  private readonly timeoutMs: number;

  /** `buffer` from `Barrier.buffer()`, the same one in every replica. */
  constructor(buffer: SharedArrayBuffer, parties: number, timeoutMs = 120_000) {
    if (!Number.isInteger(parties) || parties < 1) throw new Error(`Barrier: parties must be an integer >= 1, got ${parties}`);
    this.cells = new Int32Array(buffer);
    this.parties = parties;
    this.timeoutMs = timeoutMs;
  }

  static buffer(): SharedArrayBuffer {
    return new SharedArrayBuffer(3 * 4);
  }

  /** Waits until all parties have arrived (the last one releases the others). */
  wait(): void {
    const c = this.cells;
    if (Atomics.load(c, BROKEN)) throw new BarrierBroken('barrier broken: another replica failed');
    if (this.parties === 1) return;
    const generation = Atomics.load(c, GENERATION);
    if (Atomics.add(c, ARRIVED, 1) + 1 === this.parties) {
      Atomics.store(c, ARRIVED, 0);
      Atomics.add(c, GENERATION, 1);
      Atomics.notify(c, GENERATION);
      return;
    }
    const deadline = Date.now() + this.timeoutMs;
    while (Atomics.load(c, GENERATION) === generation) {
      if (Atomics.load(c, BROKEN)) throw new BarrierBroken('barrier broken: another replica failed');
      const left = deadline - Date.now();
      if (left <= 0) {
        this.break();
        throw new BarrierBroken(`barrier: waited ${this.timeoutMs} ms for ${this.parties} replicas; broken`);
      }
      Atomics.wait(c, GENERATION, generation, Math.min(left, 1000));
    }
  }

  /** Wakes every waiter with an error (a replica failed mid-step). */
  break(): void {
    Atomics.store(this.cells, BROKEN, 1);
    Atomics.add(this.cells, GENERATION, 1);
    Atomics.notify(this.cells, GENERATION);
  }

  /** Ready for the next step after a failure (every replica is idle). */
  reset(): void {
    Atomics.store(this.cells, ARRIVED, 0);
    Atomics.store(this.cells, BROKEN, 0);
  }
}

/**
 * Sum of one Float32 vector per replica, the same bits in every replica. Two scratch areas alternate,
 * so one barrier per call is enough: a replica can write call k+1's slot while another still reads
 * call k's, and call k+2 (the same area again) cannot start before everyone has left call k.
 */
export class AllReduce {
  readonly rank: number;
  readonly capacity: number;
  private readonly barrier: Barrier;
  private readonly scratch: Float32Array;
  private calls = 0;

  static buffer(parties: number, capacity: number): SharedArrayBuffer {
    return new SharedArrayBuffer(2 * parties * capacity * 4);
  }

  constructor(buffer: SharedArrayBuffer, barrier: Barrier, rank: number, capacity: number) {
    if (buffer.byteLength !== 2 * barrier.parties * capacity * 4)
      throw new Error(`AllReduce: buffer of ${buffer.byteLength} bytes, expected ${2 * barrier.parties * capacity * 4}`);
    this.scratch = new Float32Array(buffer);
    this.barrier = barrier;
    this.rank = rank;
    this.capacity = capacity;
  }

  /** The element-wise sum over the replicas of `values` (slots added in rank order). */
  sum(values: Float32Array): Float32Array {
    const n = values.length;
    const p = this.barrier.parties;
    if (n > this.capacity) throw new Error(`AllReduce: ${n} values, the scratch holds ${this.capacity} per replica`);
    if (p === 1) return Float32Array.from(values);
    const area = (this.calls++ % 2) * p * this.capacity;
    this.scratch.set(values, area + this.rank * this.capacity);
    this.barrier.wait();
    const out = this.scratch.slice(area, area + n);
    for (let r = 1; r < p; r++) {
      const slot = area + r * this.capacity;
      for (let i = 0; i < n; i++) out[i]! += this.scratch[slot + i]!;
    }
    return out;
  }

  /** Back to the first scratch area (every replica does it at the start of a step). */
  resetCalls(): void {
    this.calls = 0;
  }
}

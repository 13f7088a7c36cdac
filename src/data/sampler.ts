/**
 * Samplers: which record keys to read, in which order. Deterministic for a seed, with a small state that
 * a checkpoint stores so that a resumed run continues the same stream.
 *
 * - `ShuffleSampler`: shuffled epochs over one or more dataset folders (the target side, SSL).
 * - `ClassBalancedSampler`: REFERENCE 6.4, the authors' source sampler: draws come in sub-epochs of 3000;
 *   with c the per-class counts of the sub-epoch so far and d = c / sum(c), class k is drawn with weight
 *   1 / ln(1.01 + d_k) (normalised), then the next image of that class's list; every class present in
 *   the image adds 1 to its count. Two fixes: classes with no image get weight 0 (the original crashes),
 *   and an exhausted list is reshuffled and restarts at 0 (the original restarts at 1 and crashes on lists
 *   of length 1).
 *
 * Several readers split one stream with `shard: { index, count }`: reader i takes draws i, i+n, i+2n...
 */
import { Rng, type RngState } from './rng.ts';
import { maskClasses, type Manifest } from './shards.ts';

export interface SamplerShard {
  index: number;
  count: number;
}

export interface Sampler {
  next(): string;
  state(): SamplerState;
}

export type SamplerState =
  | { kind: 'shuffle'; epoch: number; position: number }
  | { kind: 'class-balanced'; drawn: number; counts: number[]; cursors: number[]; generations: number[]; rng: RngState };

function checkShard(shard: SamplerShard | undefined): SamplerShard {
  const s = shard ?? { index: 0, count: 1 };
  if (!(Number.isInteger(s.count) && s.count >= 1 && Number.isInteger(s.index) && s.index >= 0 && s.index < s.count)) {
    throw new Error(`sampler: shard ${s.index} of ${s.count}: expected 0 <= index < count`);
  }
  return s;
}

export class ShuffleSampler implements Sampler {
  private readonly keys: readonly string[];
  private readonly seed: number;
  private readonly shard: SamplerShard;
  private epoch = 0;
  private position = 0;
  private order: string[] = [];

  constructor(keys: readonly string[], opts: { seed: number; shard?: SamplerShard; state?: SamplerState }) {
    if (keys.length === 0) throw new Error('sampler: no keys to sample from');
    this.keys = keys;
    this.seed = opts.seed;
    this.shard = checkShard(opts.shard);
    if (opts.state) {
      if (opts.state.kind !== 'shuffle') throw new Error(`sampler: cannot restore a '${opts.state.kind}' state into a shuffle sampler`);
      this.epoch = opts.state.epoch;
      this.position = opts.state.position;
    }
    this.order = this.epochOrder(this.epoch);
  }

  private epochOrder(epoch: number): string[] {
    const all = Rng.derive(this.seed, epoch).shuffle([...this.keys]);
    return all.filter((_, i) => i % this.shard.count === this.shard.index);
  }

  next(): string {
    if (this.position >= this.order.length) {
      this.epoch++;
      this.position = 0;
      this.order = this.epochOrder(this.epoch);
      if (this.order.length === 0)
        throw new Error(`sampler: shard ${this.shard.index} of ${this.shard.count} gets no keys from ${this.keys.length}`);
    }
    return this.order[this.position++]!;
  }

  state(): SamplerState {
    return { kind: 'shuffle', epoch: this.epoch, position: this.position };
  }
}

export interface ClassBalancedOptions {
  seed: number;
  /** Draws per sub-epoch (counts reset). Default 3000 (REFERENCE 6.4). */
  subEpoch?: number;
  shard?: SamplerShard;
  state?: SamplerState;
}

export class ClassBalancedSampler implements Sampler {
  private readonly lists: string[][];
  private readonly keyClasses: Map<string, number[]>;
  private readonly numClasses: number;
  private readonly seed: number;
  private readonly subEpoch: number;
  private readonly shard: SamplerShard;
  private rng: Rng;
  private drawn = 0;
  private counts: number[];
  private cursors: number[];
  private generations: number[];
  private current: string[][];

  /** From per-sample class lists: [key, classes present]. */
  constructor(samples: readonly (readonly [string, readonly number[]])[], numClasses: number, opts: ClassBalancedOptions) {
    this.numClasses = numClasses;
    this.seed = opts.seed;
    this.subEpoch = opts.subEpoch ?? 3000;
    this.shard = checkShard(opts.shard);
    this.keyClasses = new Map(samples.map(([k, c]) => [k, [...c]]));
    this.lists = Array.from({ length: numClasses }, () => [] as string[]);
    for (const [key, classes] of samples) for (const c of classes) if (c < numClasses) this.lists[c]!.push(key);
    if (this.lists.every((l) => l.length === 0))
      throw new Error('sampler: no labelled image contains any class; the class-balanced sampler needs labels');
    this.counts = new Array<number>(numClasses).fill(0);
    this.cursors = new Array<number>(numClasses).fill(0);
    this.generations = new Array<number>(numClasses).fill(0);
    this.rng = new Rng(opts.seed);
    if (opts.state) {
      if (opts.state.kind !== 'class-balanced')
        throw new Error(`sampler: cannot restore a '${opts.state.kind}' state into a class-balanced sampler`);
      this.drawn = opts.state.drawn;
      this.counts = [...opts.state.counts];
      this.cursors = [...opts.state.cursors];
      this.generations = [...opts.state.generations];
      this.rng = new Rng(opts.state.rng);
    }
    this.current = this.lists.map((_, k) => this.listOf(k, this.generations[k]!));
  }

  /** From a dataset manifest (its per-record class bitmasks). */
  static fromManifest(manifest: Manifest, opts: ClassBalancedOptions): ClassBalancedSampler {
    const samples = manifest.samples.map(([key, , mask]) => [key, maskClasses(mask, manifest.numClasses)] as const);
    return new ClassBalancedSampler(samples, manifest.numClasses, opts);
  }

  private listOf(k: number, generation: number): string[] {
    const base = this.lists[k]!;
    return generation === 0 ? base : Rng.derive(this.seed, 0x5eed, k, generation).shuffle([...base]);
  }

  /** Class weights for the next draw: 1 / ln(1.01 + d_k), 0 for classes without images, normalised. */
  weights(): number[] {
    const total = this.counts.reduce((a, b) => a + b, 0);
    const w = this.counts.map((c, k) => (this.lists[k]!.length === 0 ? 0 : 1 / Math.log(1.01 + (total > 0 ? c / total : 0))));
    const sum = w.reduce((a, b) => a + b, 0);
    return w.map((v) => v / sum);
  }

  private draw(): string {
    if (this.drawn % this.subEpoch === 0) this.counts.fill(0);
    const w = this.weights();
    let u = this.rng.next();
    let k = 0;
    for (; k < this.numClasses - 1; k++) {
      if (u < w[k]!) break;
      u -= w[k]!;
    }
    while (this.lists[k]!.length === 0) k = (k + 1) % this.numClasses; // rounding landed on an empty class
    if (this.cursors[k]! >= this.current[k]!.length) {
      this.generations[k]!++;
      this.current[k] = this.listOf(k, this.generations[k]!);
      this.cursors[k] = 0;
    }
    const key = this.current[k]![this.cursors[k]!++]!;
    for (const c of this.keyClasses.get(key)!) if (c < this.numClasses) this.counts[c]!++;
    this.drawn++;
    return key;
  }

  next(): string {
    // Every reader runs the same stream and keeps its own share of the draws.
    for (;;) {
      const i = this.drawn;
      const key = this.draw();
      if (i % this.shard.count === this.shard.index) return key;
    }
  }

  state(): SamplerState {
    return {
      kind: 'class-balanced',
      drawn: this.drawn,
      counts: [...this.counts],
      cursors: [...this.cursors],
      generations: [...this.generations],
      rng: this.rng.state(),
    };
  }
}

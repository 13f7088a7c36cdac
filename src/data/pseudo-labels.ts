/**
 * Pseudo-label generations on disk. A folder holds one LMDB per generation (`gen-NNNNNN.lmdb`: key ->
 * { width, height, labels } with labels = train IDs, 255 where the confidence was below its class
 * threshold) and `current.json`, the pointer to the complete generation readers use, with the thresholds
 * that made it. A generation becomes visible only when `commit` renames the new pointer into place, so a
 * crash mid-generation leaves the previous one in use; old generations are pruned by `keep`.
 */
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { open, type Database, type RootDatabase } from 'lmdb';
import { writeJsonAtomic } from './shards.ts';

export interface PseudoLabelRecord {
  width: number;
  height: number;
  labels: Uint8Array;
}

export interface GenerationInfo {
  format: 'spcl-pseudo-labels/1';
  generation: number;
  file: string;
  numClasses: number;
  thresholds: number[];
  count: number;
  /** Per class: pixels labelled / pixels predicted as that class (coverage after thresholding). */
  coverage: number[];
  createdAt: string;
  /** Free-form provenance: phase, iteration, checkpoint. */
  source: Record<string, unknown>;
}

export function generationFile(generation: number): string {
  return `gen-${String(generation).padStart(6, '0')}.lmdb`;
}

export async function currentGeneration(dir: string): Promise<GenerationInfo | null> {
  let text: string;
  try {
    text = await readFile(join(dir, 'current.json'), 'utf8');
  } catch {
    return null;
  }
  const info = JSON.parse(text) as GenerationInfo;
  if (info.format !== 'spcl-pseudo-labels/1') throw new Error(`${join(dir, 'current.json')}: format ${JSON.stringify(info.format)}, expected "spcl-pseudo-labels/1"`);
  return info;
}

export class PseudoLabelWriter {
  readonly dir: string;
  readonly generation: number;
  readonly numClasses: number;
  private readonly root: RootDatabase;
  private readonly db: Database<PseudoLabelRecord, string>;
  private pending: Promise<unknown>[] = [];
  private count = 0;
  private readonly predicted: number[];
  private readonly kept: number[];

  private constructor(dir: string, generation: number, numClasses: number) {
    this.dir = dir;
    this.generation = generation;
    this.numClasses = numClasses;
    this.root = open({ path: join(dir, generationFile(generation)), compression: true, maxDbs: 2 });
    this.db = this.root.openDB<PseudoLabelRecord, string>({ name: 'labels', encoding: 'msgpack' });
    this.predicted = new Array<number>(numClasses).fill(0);
    this.kept = new Array<number>(numClasses).fill(0);
  }

  /** Starts the generation after the current one (a leftover partial file of that number is replaced). */
  static async next(dir: string, numClasses: number): Promise<PseudoLabelWriter> {
    await mkdir(dir, { recursive: true });
    const current = await currentGeneration(dir);
    const generation = (current?.generation ?? 0) + 1;
    await rm(join(dir, generationFile(generation)), { force: true });
    await rm(join(dir, `${generationFile(generation)}-lock`), { force: true });
    return new PseudoLabelWriter(dir, generation, numClasses);
  }

  /**
   * Stores one image's pseudo-labels. `predicted` (optional) is the argmax before thresholding, for the
   * per-class coverage statistic.
   */
  async put(key: string, record: PseudoLabelRecord, predicted?: Uint8Array): Promise<void> {
    if (record.labels.length !== record.width * record.height) {
      throw new Error(`pseudo-labels: '${key}' has ${record.labels.length} labels for ${record.width}x${record.height}`);
    }
    if (predicted) {
      for (let i = 0; i < predicted.length; i++) {
        const p = predicted[i]!;
        if (p < this.numClasses) {
          this.predicted[p]!++;
          if (record.labels[i] === p) this.kept[p]!++;
        }
      }
    }
    this.pending.push(this.db.put(key, record));
    this.count++;
    if (this.pending.length >= 64) await Promise.all(this.pending.splice(0));
  }

  /** Makes the generation the current one (atomic), then prunes all but the newest `keep` generations. */
  async commit(thresholds: number[], source: Record<string, unknown>, keep = 2): Promise<GenerationInfo> {
    await Promise.all(this.pending.splice(0));
    await this.root.flushed;
    await this.root.close();
    const info: GenerationInfo = {
      format: 'spcl-pseudo-labels/1',
      generation: this.generation,
      file: generationFile(this.generation),
      numClasses: this.numClasses,
      thresholds,
      count: this.count,
      coverage: this.predicted.map((p, k) => (p ? this.kept[k]! / p : 0)),
      createdAt: new Date().toISOString(),
      source,
    };
    await writeJsonAtomic(join(this.dir, 'current.json'), info, this.dir);
    const old = (await readdir(this.dir)).filter((f) => /^gen-\d{6}\.lmdb$/.test(f)).sort().slice(0, -Math.max(1, keep));
    for (const f of old) {
      await rm(join(this.dir, f), { force: true });
      await rm(join(this.dir, `${f}-lock`), { force: true });
    }
    return info;
  }

  /** Abandons the generation (the current one stays). */
  async abort(): Promise<void> {
    await Promise.all(this.pending.splice(0)).catch(() => undefined);
    await this.root.close();
    await rm(join(this.dir, generationFile(this.generation)), { force: true });
    await rm(join(this.dir, `${generationFile(this.generation)}-lock`), { force: true });
  }
}

/** Path of the current generation's LMDB, for readers (workers open it read-only themselves). */
export async function currentGenerationPath(dir: string): Promise<{ path: string; info: GenerationInfo }> {
  const info = await currentGeneration(dir);
  if (!info) throw new Error(`${dir}: no complete pseudo-label generation (current.json missing); run the pseudo-labels phase first`);
  return { path: join(dir, info.file), info };
}

/** The keys a complete generation labels, in key order (the continuous phase samples from them). */
export async function generationKeys(path: string): Promise<string[]> {
  const root = open({ path, readOnly: true, compression: true, maxDbs: 2 });
  try {
    const db = root.openDB<PseudoLabelRecord, string>({ name: 'labels', encoding: 'msgpack' });
    return [...db.getKeys()];
  } finally {
    await root.close();
  }
}

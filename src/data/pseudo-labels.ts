/**
 * Pseudo-label generations on disk. A folder holds one LMDB per generation (`gen-NNNNNN.lmdb`: key ->
 * { width, height, labels } with labels = train IDs, 255 where the confidence was below its class
 * threshold) and `current.json`, the pointer to the complete generation readers use, with the thresholds
 * that made it. A generation becomes visible only when `commit` renames the new pointer into place, so a
 * crash mid-generation leaves the previous one in use; old generations are pruned by `keep`, except the
 * ones a caller pins (those that retained checkpoints name: a resume needs them). A failed write (full
 * disk) names the file and the free space, and `abort` deletes the partial generation; `current.json`
 * stays. After a crash, `recoverGenerations` deletes what an interrupted writer left (never read).
 */
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { open, type Database, type RootDatabase } from 'lmdb';
import { describeWriteFailure, describeWriteFailureSync, removeStaleTemporaries, writeJsonAtomic } from '../io/atomic.ts';
import { crashPoint } from '../io/crash-points.ts';

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

/** Records per write transaction. */
const BATCH = 32;

export function generationFile(generation: number): string {
  return `gen-${String(generation).padStart(6, '0')}.lmdb`;
}

/** The generation number of a `gen-NNNNNN.lmdb` name (also with its `-lock` suffix), or null. */
function generationOf(name: string): number | null {
  const m = /^gen-(\d{6})\.lmdb(-lock)?$/.exec(name);
  return m ? Number(m[1]) : null;
}

async function removeGeneration(dir: string, file: string): Promise<void> {
  await rm(join(dir, file), { force: true });
  await rm(join(dir, `${file}-lock`), { force: true });
}

export async function currentGeneration(dir: string): Promise<GenerationInfo | null> {
  let text: string;
  try {
    text = await readFile(join(dir, 'current.json'), 'utf8');
  } catch {
    return null;
  }
  const info = JSON.parse(text) as GenerationInfo;
  if (info.format !== 'spcl-pseudo-labels/1')
    throw new Error(`${join(dir, 'current.json')}: format ${JSON.stringify(info.format)}, expected "spcl-pseudo-labels/1"`);
  return info;
}

export class PseudoLabelWriter {
  readonly dir: string;
  readonly generation: number;
  /** The generation's file name (`gen-NNNNNN.lmdb`). */
  readonly file: string;
  readonly numClasses: number;
  private readonly root: RootDatabase;
  private readonly db: Database<PseudoLabelRecord, string>;
  /** Records not yet written: they go in one synchronous transaction per `BATCH`. */
  private batch: [string, PseudoLabelRecord][] = [];
  private count = 0;
  /** `current.json` names this generation: from then on it is never deleted by `abort`. */
  private committed = false;
  private readonly predicted: number[];
  private readonly kept: number[];

  private constructor(dir: string, generation: number, numClasses: number) {
    this.dir = dir;
    this.generation = generation;
    this.file = generationFile(generation);
    this.numClasses = numClasses;
    this.root = open({ path: join(dir, this.file), compression: true, maxDbs: 2 });
    this.db = this.root.openDB<PseudoLabelRecord, string>({ name: 'labels', encoding: 'msgpack' });
    this.predicted = new Array<number>(numClasses).fill(0);
    this.kept = new Array<number>(numClasses).fill(0);
  }

  /** Starts the generation after the current one (a leftover partial file of that number is replaced). */
  static async next(dir: string, numClasses: number): Promise<PseudoLabelWriter> {
    await mkdir(dir, { recursive: true });
    const current = await currentGeneration(dir);
    const generation = (current?.generation ?? 0) + 1;
    await removeGeneration(dir, generationFile(generation));
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
    this.batch.push([key, record]);
    this.count++;
    crashPoint('pseudo-write');
    if (this.batch.length >= BATCH) this.flush();
  }

  /**
   * Writes the waiting records in one synchronous transaction (see `src/io/atomic.ts` on why not the
   * asynchronous ones); a failure (full disk) is an error naming the file and the space.
   */
  private flush(): void {
    const records = this.batch.splice(0);
    try {
      this.root.transactionSync(() => {
        for (const [key, record] of records) this.db.putSync(key, record);
      });
    } catch (err) {
      throw describeWriteFailureSync('pseudo-label generation', join(this.dir, this.file), err);
    }
  }

  /**
   * Makes the generation the current one (atomic), then prunes the older generations beyond the newest
   * `keep`, except `pinned` ones (file names, e.g. those retained checkpoints name).
   */
  async commit(thresholds: number[], source: Record<string, unknown>, keep = 2, pinned: Iterable<string> = []): Promise<GenerationInfo> {
    this.flush();
    try {
      await this.root.flushed;
      await this.root.close();
    } catch (err) {
      throw await describeWriteFailure('pseudo-label generation', join(this.dir, this.file), err);
    }
    const info: GenerationInfo = {
      format: 'spcl-pseudo-labels/1',
      generation: this.generation,
      file: this.file,
      numClasses: this.numClasses,
      thresholds,
      count: this.count,
      coverage: this.predicted.map((p, k) => (p ? this.kept[k]! / p : 0)),
      createdAt: new Date().toISOString(),
      source,
    };
    await writeJsonAtomic(join(this.dir, 'current.json'), info, { what: 'pseudo-label pointer' });
    this.committed = true;
    const keepNewest = Math.max(1, keep);
    const pins = new Set(pinned);
    const older = (await readdir(this.dir))
      .filter((f) => /^gen-\d{6}\.lmdb$/.test(f) && generationOf(f)! < this.generation)
      .sort()
      .reverse();
    for (const f of older.slice(keepNewest - 1)) if (!pins.has(f)) await removeGeneration(this.dir, f);
    crashPoint('pseudo-commit');
    return info;
  }

  /** Abandons the generation (the current one stays) and deletes its file; nothing once committed. */
  async abort(): Promise<void> {
    if (this.committed) return;
    this.batch = [];
    await this.root.close().catch(() => undefined);
    await removeGeneration(this.dir, this.file);
  }
}

/**
 * After a crash: deletes the temporary files of interrupted pointer writes and the generations newer
 * than `current.json`'s (a writer killed before its commit: incomplete, never read). Returns the names.
 */
export async function recoverGenerations(dir: string): Promise<string[]> {
  const removed = await removeStaleTemporaries(dir);
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return removed;
  }
  const current = (await currentGeneration(dir))?.generation ?? 0;
  for (const name of names) {
    const g = generationOf(name);
    if (g !== null && g > current) {
      await rm(join(dir, name), { force: true });
      removed.push(name);
    }
  }
  return removed;
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

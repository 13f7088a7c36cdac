/**
 * Checkpoint stage: everything a resume needs (model, optimisers, discriminator, prototypes, thresholds,
 * sampler and RNG state, phase and iteration) in one safetensors file, written atomically; `latest.json`
 * points to the newest complete one; the last `keep` are kept, plus the best per phase by validation
 * mIoU when one is measured.
 */
import { mkdir, readdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { loadCheckpoint, saveCheckpoint, type CheckpointState } from '../io/weights.ts';
import { writeJsonAtomic } from '../data/shards.ts';

export interface CheckpointPointer {
  file: string;
  phase: string;
  iteration: number;
  /** Validation mIoU when measured with this checkpoint. */
  miou: number | null;
  savedAt: string;
}

export class CheckpointStore {
  readonly dir: string;
  readonly keep: number;
  /** Seconds the last save took, and its size (metrics). */
  lastSeconds = 0;
  lastBytes = 0;
  /** Called after each save (metrics). */
  onSaved: ((seconds: number, bytes: number) => void) | null = null;

  constructor(dir: string, keep: number) {
    this.dir = dir;
    this.keep = keep;
  }

  static fileName(phase: string, iteration: number): string {
    return `ckpt-${phase}-${String(iteration).padStart(8, '0')}.safetensors`;
  }

  async save(state: CheckpointState, phase: string, iteration: number, miou: number | null = null): Promise<CheckpointPointer> {
    const t0 = performance.now();
    await mkdir(this.dir, { recursive: true });
    const file = CheckpointStore.fileName(phase, iteration);
    await saveCheckpoint(join(this.dir, file), state);
    const pointer: CheckpointPointer = { file, phase, iteration, miou, savedAt: new Date().toISOString() };
    await writeJsonAtomic(join(this.dir, 'latest.json'), pointer, this.dir);
    if (miou !== null) {
      const best = await this.best(phase);
      if (!best || best.miou === null || miou > best.miou) await writeJsonAtomic(join(this.dir, `best-${phase}.json`), pointer, this.dir);
    }
    await this.prune();
    this.lastSeconds = (performance.now() - t0) / 1000;
    this.lastBytes = (await stat(join(this.dir, file))).size;
    this.onSaved?.(this.lastSeconds, this.lastBytes);
    return pointer;
  }

  private async pointer(name: string): Promise<CheckpointPointer | null> {
    try {
      return JSON.parse(await readFile(join(this.dir, name), 'utf8')) as CheckpointPointer;
    } catch {
      return null;
    }
  }

  latest(): Promise<CheckpointPointer | null> {
    return this.pointer('latest.json');
  }

  best(phase: string): Promise<CheckpointPointer | null> {
    return this.pointer(`best-${phase}.json`);
  }

  async load(pointer: CheckpointPointer): Promise<CheckpointState> {
    return loadCheckpoint(join(this.dir, pointer.file));
  }

  /** Deletes all but the newest `keep` checkpoints, never one a pointer names. */
  private async prune(): Promise<void> {
    const files = (await readdir(this.dir)).filter((f) => /^ckpt-.*\.safetensors$/.test(f));
    const pinned = new Set<string>();
    for (const name of (await readdir(this.dir)).filter((f) => f.endsWith('.json'))) {
      const p = await this.pointer(name);
      if (p) pinned.add(p.file);
    }
    const sorted = (await Promise.all(files.map(async (f) => ({ f, t: (await stat(join(this.dir, f))).mtimeMs })))).sort((a, b) => b.t - a.t);
    for (const { f } of sorted.slice(this.keep)) if (!pinned.has(f)) await rm(join(this.dir, f), { force: true });
  }
}

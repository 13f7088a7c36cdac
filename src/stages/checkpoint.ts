/**
 * Checkpoint stage: everything a resume needs (model, optimisers, discriminator, prototypes, thresholds,
 * sampler and RNG state, phase and iteration) in one safetensors file, written atomically; `latest.json`
 * points to the newest complete one; the last `keep` are kept, plus the best per phase by validation
 * mIoU when one is measured.
 *
 * Crash safety: the file is complete before `latest.json` names it, and `latest.json` is replaced
 * atomically, so a kill at any instant leaves `latest.json` naming a complete checkpoint (a torn
 * temporary file is never named, and `recover` deletes it). A full disk fails the save with a
 * `DiskFullError` that names the file, the free space and the checkpoint `latest.json` still names.
 */
import { mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { DiskFullError, removeStaleTemporaries, writeJsonAtomic } from '../io/atomic.ts';
import { crashPoint } from '../io/crash-points.ts';
import { loadCheckpoint, readCheckpointMeta, saveCheckpoint, type CheckpointState } from '../io/weights.ts';

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
    const pointer: CheckpointPointer = { file, phase, iteration, miou, savedAt: new Date().toISOString() };
    try {
      await saveCheckpoint(join(this.dir, file), state, { crashPoint: 'checkpoint-write' });
      crashPoint('checkpoint-commit');
      await writeJsonAtomic(join(this.dir, 'latest.json'), pointer, { what: 'checkpoint pointer' });
      if (miou !== null) {
        const best = await this.best(phase);
        if (!best || best.miou === null || miou > best.miou)
          await writeJsonAtomic(join(this.dir, `best-${phase}.json`), pointer, { what: 'checkpoint pointer' });
      }
    } catch (err) {
      if (!(err instanceof DiskFullError)) throw err;
      const latest = await this.latest();
      const still = latest
        ? `latest.json names ${latest.file} (${latest.phase}, iteration ${latest.iteration}), which is complete`
        : 'there is no earlier checkpoint';
      throw new DiskFullError(`${err.message}; ${still}`, err.path, err.freeBytes, err.neededBytes);
    }
    await this.prune();
    this.lastSeconds = (performance.now() - t0) / 1000;
    this.lastBytes = (await stat(join(this.dir, file))).size;
    this.onSaved?.(this.lastSeconds, this.lastBytes);
    return pointer;
  }

  /** A pointer file, null when absent; an unreadable one is an error (never a silent restart from scratch). */
  private async pointer(name: string): Promise<CheckpointPointer | null> {
    const path = join(this.dir, name);
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
    try {
      return JSON.parse(text) as CheckpointPointer;
    } catch (err) {
      throw new Error(`${path}: not valid JSON (${(err as Error).message}); it should name a checkpoint file of ${this.dir}`);
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

  /**
   * The newest checkpoint of the folder (by modification time) that loads, other than `except`; null when
   * none does. For a resume whose latest.json names a file that is missing or damaged.
   */
  async newestIntact(except: string): Promise<{ pointer: CheckpointPointer; state: CheckpointState } | null> {
    const files = (await readdir(this.dir)).filter((f) => /^ckpt-.*\.safetensors$/.test(f) && f !== except);
    const dated = await Promise.all(files.map(async (f) => ({ f, t: (await stat(join(this.dir, f))).mtimeMs })));
    for (const { f } of dated.sort((a, b) => b.t - a.t)) {
      const state = await loadCheckpoint(join(this.dir, f)).catch(() => null);
      if (!state) continue;
      const meta = state.meta as { phase?: string; iteration?: number };
      const pointer: CheckpointPointer = {
        file: f,
        phase: String(meta.phase),
        iteration: Number(meta.iteration),
        miou: null,
        savedAt: new Date((await stat(join(this.dir, f))).mtimeMs).toISOString(),
      };
      return { pointer, state };
    }
    return null;
  }

  /** Renames a damaged checkpoint to `<file>.damaged` (out of pruning and of `newestIntact`, kept to look at). */
  async setAside(file: string): Promise<string> {
    const to = `${file}.damaged`;
    await rename(join(this.dir, file), join(this.dir, to));
    return to;
  }

  /**
   * After a crash: deletes the temporary files interrupted writes left (never read: readers go by the
   * names in the pointers). Returns their names. Call it before this process saves anything.
   */
  async recover(): Promise<string[]> {
    return removeStaleTemporaries(this.dir);
  }

  /**
   * The pseudo-label generations (file names) that the retained checkpoints name: a resume from any of
   * them needs its generation, so the generation writer must not prune them.
   */
  async pseudoLabelGenerations(): Promise<Set<string>> {
    const names = new Set<string>();
    let files: string[];
    try {
      files = (await readdir(this.dir)).filter((f) => /^ckpt-.*\.safetensors$/.test(f));
    } catch {
      return names;
    }
    for (const f of files) {
      const pseudo = (await readCheckpointMeta(join(this.dir, f)).catch(() => null))?.pseudo;
      if (typeof pseudo === 'string') names.add(basename(pseudo));
    }
    return names;
  }

  /** Deletes all but the newest `keep` checkpoints, never one a pointer names. */
  private async prune(): Promise<void> {
    const files = (await readdir(this.dir)).filter((f) => /^ckpt-.*\.safetensors$/.test(f));
    const pinned = new Set<string>();
    for (const name of (await readdir(this.dir)).filter((f) => f.endsWith('.json'))) {
      const p = await this.pointer(name);
      if (p) pinned.add(p.file);
    }
    const sorted = (await Promise.all(files.map(async (f) => ({ f, t: (await stat(join(this.dir, f))).mtimeMs })))).sort(
      (a, b) => b.t - a.t,
    );
    for (const { f } of sorted.slice(this.keep)) if (!pinned.has(f)) await rm(join(this.dir, f), { force: true });
    // temporary files of crashed processes (saves run one at a time: none of this process is in use here)
    await removeStaleTemporaries(this.dir);
  }
}

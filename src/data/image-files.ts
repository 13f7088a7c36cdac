/**
 * A user's own image files (not a dataset folder): what `pipelines/segment.ts` reads. `listImageFiles`
 * turns the command line's paths (folders searched recursively, single files) into a sorted list, each
 * file with the relative path its outputs mirror; `ImageFilePool` is the piscina pool of
 * `image-file-worker.ts` that decodes them to model inputs and writes the outputs. Only the list of
 * names is held for a whole folder; pixels exist for the images in flight only.
 */
import { availableParallelism } from 'node:os';
import { readdir, stat } from 'node:fs/promises';
import { basename, extname, join, relative, sep } from 'node:path';
import { Piscina } from 'piscina';
import { destroyPool } from './pool.ts';
import type { DecodeReply, DecodedImage, DecodeTask, ImageFaultReason, WriteTask } from './image-file-worker.ts';

export type { DecodedImage, ImageFaultReason } from './image-file-worker.ts';

/** Extensions a folder search takes (any case); a file named on the command line is tried whatever its name. */
export const IMAGE_EXTENSIONS: readonly string[] = ['.png', '.jpg', '.jpeg'];

export interface ImageFile {
  path: string;
  /** Where its outputs go under an output folder: the path relative to the folder searched (or the file's name), without extension, '/'-separated. */
  stem: string;
}

export interface ImageListing {
  files: ImageFile[];
  /** Files a folder search passed over (not .png/.jpg/.jpeg). */
  ignored: string[];
}

/** The outputs' relative name of a file: `a/b/c.png` -> `a/b/c`. */
function stemOf(rel: string): string {
  const ext = extname(rel);
  return (ext ? rel.slice(0, -ext.length) : rel).split(sep).join('/');
}

/**
 * The image files under `inputs` (folders, searched recursively, and files), sorted by output name.
 * Throws for a path that does not exist (naming it), and for two files that would write the same output.
 */
export async function listImageFiles(inputs: readonly string[]): Promise<ImageListing> {
  const files: ImageFile[] = [];
  const ignored: string[] = [];
  for (const input of inputs) {
    const st = await stat(input).catch(() => null);
    if (!st) throw new Error(`${input}: no such file or folder`);
    if (!st.isDirectory()) {
      files.push({ path: input, stem: stemOf(basename(input)) });
      continue;
    }
    const entries = await readdir(input, { recursive: true, withFileTypes: true });
    for (const e of entries) {
      if (!e.isFile()) continue;
      const path = join(e.parentPath, e.name);
      if (IMAGE_EXTENSIONS.includes(extname(e.name).toLowerCase())) files.push({ path, stem: stemOf(relative(input, path)) });
      else ignored.push(path);
    }
  }
  files.sort((a, b) => (a.stem < b.stem ? -1 : a.stem > b.stem ? 1 : 0));
  for (let i = 1; i < files.length; i++) {
    if (files[i]!.stem === files[i - 1]!.stem)
      throw new Error(
        `${files[i - 1]!.path} and ${files[i]!.path} would both be written as '${files[i]!.stem}.png'; ` +
          'rename one, or give their common parent folder as the input',
      );
  }
  ignored.sort();
  return { files, ignored };
}

/** An image file that cannot be used; `reason` is read by `StageError` (src/graph/flow.ts). */
export class ImageFault extends Error {
  readonly reason: ImageFaultReason;
  readonly path: string;

  constructor(reason: ImageFaultReason, path: string, message: string) {
    super(message);
    this.name = 'ImageFault';
    this.reason = reason;
    this.path = path;
  }
}

export interface ImageFilePoolOptions {
  /** Worker threads. Default: cores. */
  threads?: number;
}

/**
 * The workers that decode image files to model inputs and write the outputs. Input buffers (one size:
 * the model's) are recycled: `decode` lends one to the worker, `recycle` takes it back once the batch
 * holds a copy, so the steady state allocates none.
 */
export class ImageFilePool {
  private readonly pool: Piscina;
  private readonly free: Float32Array[] = [];
  private readonly inFlight = new Set<Promise<unknown>>();

  constructor(opts: ImageFilePoolOptions = {}) {
    const threads = Math.max(1, opts.threads ?? availableParallelism());
    this.pool = new Piscina({
      filename: new URL('./image-file-worker.ts', import.meta.url).href,
      minThreads: threads,
      maxThreads: threads,
    });
  }

  get threads(): number {
    return this.pool.threads.length;
  }

  /** Decodes `path` to a model input of `size` [h, w]; rejects with an `ImageFault` for an unusable file. */
  async decode(path: string, size: readonly [number, number], keepRgb: boolean): Promise<DecodedImage> {
    const n = size[0] * size[1] * 3;
    let lent = this.free.pop();
    if (lent && lent.length !== n) lent = undefined;
    const task: DecodeTask = { path, size, keepRgb, input: lent ?? null };
    const reply = (await this.track(this.pool.run(task, { transferList: lent ? [lent.buffer as ArrayBuffer] : [] }))) as DecodeReply;
    if (reply.ok) return reply.image;
    if (reply.input) this.recycle(reply.input);
    throw new ImageFault(reply.reason, path, reply.message);
  }

  /** Takes back a decoded image's input buffer for the next `decode`. */
  recycle(input: Float32Array): void {
    this.free.push(input);
  }

  /** Writes one image's outputs (the buffers move to the worker: do not use them after). */
  async write(task: WriteTask): Promise<void> {
    const buffers = [task.trainIds.buffer, task.confidence?.buffer, task.rgb?.buffer].filter((b) => b !== undefined);
    await this.track(this.pool.run(task, { name: 'write', transferList: buffers as ArrayBuffer[] }));
  }

  /** Waits for the tasks in flight (a flow that stopped early leaves some), then ends the workers. */
  async close(): Promise<void> {
    await Promise.allSettled([...this.inFlight]);
    await destroyPool(this.pool);
    this.free.length = 0;
  }

  private async track<T>(run: Promise<T>): Promise<T> {
    this.inFlight.add(run);
    try {
      return await run;
    } finally {
      this.inFlight.delete(run);
    }
  }
}

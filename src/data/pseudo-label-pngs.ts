/**
 * A pseudo-label generation (pseudo-labels.ts) as pictures: per record `labels/KEY.png`, the stored
 * train IDs as an 8-bit grey PNG (255 = ignore: below its class threshold, REFERENCE 5), and
 * `colour/KEY.png`, the same in the Cityscapes palette (ignore black). Records are read one at a time
 * from the LMDB, so a generation of any size needs the memory of one label map.
 */
import { join, normalize } from 'node:path';
import { open } from 'lmdb';
import sharp from 'sharp';
import { writeFileReplacing } from '../io/atomic.ts';
import type { NumClasses } from './labels.ts';
import { paletteOf } from './palette.ts';
import { encodePng } from './png.ts';
import { currentGeneration, generationFile, type GenerationInfo, type PseudoLabelRecord } from './pseudo-labels.ts';
import { exists } from '../io/exists.ts';

export interface GenerationPngOptions {
  /** The generation folder (`pipelines/pseudo-label.ts --out`, or a run's `pseudo-labels/`). */
  dir: string;
  /** That generation instead of the current one. */
  generation?: number;
  out: string;
  /** Called once the number of records is known, then per record written. */
  onTotal?: (records: number) => void;
  onWritten?: (key: string) => void;
}

export interface GenerationPngSummary {
  generation: number;
  /** The LMDB read. */
  file: string;
  written: number;
  numClasses: NumClasses;
}

/** Writes every record of a generation as PNGs under `out` (see the file's comment). */
export async function writeGenerationPngs(opts: GenerationPngOptions): Promise<GenerationPngSummary> {
  let current: GenerationInfo | null;
  try {
    current = await currentGeneration(opts.dir);
  } catch (err) {
    throw new Error(`--pseudo-labels ${opts.dir}: ${(err as Error).message}`);
  }
  if (!current)
    throw new Error(
      `${opts.dir}: no complete pseudo-label generation (no current.json); expected the --out folder of ` +
        `pipelines/pseudo-label.ts or a run's pseudo-labels folder`,
    );
  const generation = opts.generation ?? current.generation;
  const file = generationFile(generation);
  const path = join(opts.dir, file);
  if (!(await exists(path)))
    throw new Error(`${path}: no such generation in ${opts.dir} (the current one is ${current.generation}; older ones are pruned)`);
  const numClasses = current.numClasses as NumClasses;
  const palette = paletteOf(numClasses);
  const root = open({ path, readOnly: true, compression: true, maxDbs: 2 });
  let written = 0;
  try {
    const db = root.openDB<PseudoLabelRecord, string>({ name: 'labels', encoding: 'msgpack' });
    opts.onTotal?.(db.getCount());
    for (const { key, value } of db.getRange()) {
      const rel = normalize(key);
      if (rel.startsWith('..') || rel.startsWith('/')) throw new Error(`${path}: record key '${key}' would write outside ${opts.out}`);
      const { width, height, labels } = value;
      if (!(labels instanceof Uint8Array) || labels.length !== width * height)
        throw new Error(`${path}: record '${key}' holds ${labels?.length ?? 'no'} labels for ${width}x${height}`);
      const colours = new Uint8Array(width * height * 3);
      for (let i = 0; i < labels.length; i++) {
        const k = labels[i]!;
        if (k < numClasses) colours.set(palette.subarray(3 * k, 3 * k + 3), 3 * i);
      }
      await Promise.all([
        writeFileReplacing(
          join(opts.out, 'labels', `${rel}.png`),
          encodePng({ width, height, channels: 1, bitDepth: 8, data: labels }),
          'label map',
        ),
        writeFileReplacing(
          join(opts.out, 'colour', `${rel}.png`),
          await sharp(colours, { raw: { width, height, channels: 3 } })
            .png()
            .toBuffer(),
          'colour label map',
        ),
      ]);
      written++;
      opts.onWritten?.(key);
    }
  } finally {
    await root.close();
  }
  return { generation, file: path, written, numClasses };
}

/**
 * Tiny dataset trees in each real layout (REFERENCE 6.1), written for the ingest tests. Each image is a
 * flat colour; each label is a few horizontal bands of label IDs, so counts and mappings are known.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import sharp from 'sharp';
import { encodePng } from '../../src/data/png.ts';

export async function writeRgb(path: string, w: number, h: number, seed: number, format: 'png' | 'jpeg' = 'png'): Promise<void> {
  const px = new Uint8Array(w * h * 3);
  for (let i = 0; i < px.length; i++) px[i] = (seed * 37 + i * 11) % 256;
  await mkdir(dirname(path), { recursive: true });
  const img = sharp(px, { raw: { width: w, height: h, channels: 3 } });
  await writeFile(path, format === 'png' ? await img.png().toBuffer() : await img.jpeg().toBuffer());
}

/** Label with horizontal bands of the given IDs (8-bit grey, or 16-bit with extra channels). */
export async function writeBands(
  path: string,
  w: number,
  h: number,
  ids: number[],
  opts: { bitDepth?: 8 | 16; channels?: 1 | 3 } = {},
): Promise<void> {
  const channels = opts.channels ?? 1;
  const bitDepth = opts.bitDepth ?? 8;
  const data = bitDepth === 16 ? new Uint16Array(w * h * channels) : new Uint8Array(w * h * channels);
  for (let y = 0; y < h; y++) {
    const id = ids[Math.min(ids.length - 1, Math.floor((y * ids.length) / h))]!;
    for (let x = 0; x < w; x++) {
      const i = (y * w + x) * channels;
      data[i] = id;
      // SYNTHIA's other channels hold instance IDs: junk that must be ignored.
      for (let c = 1; c < channels; c++) data[i + c] = 1000 + x;
    }
  }
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, encodePng({ width: w, height: h, channels, bitDepth, data }));
}

export async function gta5Tree(root: string): Promise<void> {
  // 00001: road(7), car(26), sky(23); 00002: road, unknown 0 and 34 -> 255; 00003: label missing
  await writeRgb(join(root, 'images/00001.png'), 16, 9, 1);
  await writeBands(join(root, 'labels/00001.png'), 16, 9, [23, 26, 7]);
  await writeRgb(join(root, 'images/00002.png'), 16, 9, 2);
  await writeBands(join(root, 'labels/00002.png'), 16, 9, [0, 34, 7]);
  await writeRgb(join(root, 'images/00003.png'), 16, 9, 3);
}

export async function cityscapesTree(root: string): Promise<void> {
  for (const [split, city, frames] of [
    ['train', 'aachen', [19, 20]],
    ['train', 'bremen', [5]],
    ['val', 'lindau', [1]],
  ] as const) {
    for (const f of frames) {
      const base = `${city}_000000_${String(f).padStart(6, '0')}`;
      await writeRgb(join(root, 'leftImg8bit', split, city, `${base}_leftImg8bit.png`), 16, 8, f);
      // terrain (22), truck (27) exist in 19 classes but not in 16
      await writeBands(join(root, 'gtFine', split, city, `${base}_gtFine_labelIds.png`), 16, 8, [23, 22, 27, 7]);
    }
  }
}

export async function synthiaTree(root: string): Promise<void> {
  // SYNTHIA IDs: 1 sky -> 9, 3 road -> 0, 8 car -> 12, 13 (not in the 16) -> 255; 3 channels, 16-bit
  await writeRgb(join(root, 'RGB/0000000.png'), 12, 8, 4);
  await writeBands(join(root, 'GT/LABELS/0000000.png'), 12, 8, [1, 8, 3], { bitDepth: 16, channels: 3 });
  await writeRgb(join(root, 'RGB/0000001.png'), 12, 8, 5);
  await writeBands(join(root, 'GT/LABELS/0000001.png'), 12, 8, [13, 3], { bitDepth: 16, channels: 3 });
}

export async function synscapesTree(root: string): Promise<void> {
  // images 2:1 at 32x16, labels at 16x8 (the real ones: 2048x1024 renders, 1440x720 labels)
  await writeRgb(join(root, 'img/rgb-2k/1.png'), 32, 16, 6);
  await writeBands(join(root, 'img/class/1.png'), 16, 8, [23, 21, 7]);
  await writeRgb(join(root, 'img/rgb-2k/2.png'), 32, 16, 7);
  await writeBands(join(root, 'img/class/2.png'), 16, 8, [24, 7]);
}

export async function folderTree(root: string): Promise<void> {
  await writeRgb(join(root, 'images/cam0/a.jpg'), 10, 10, 8, 'jpeg');
  await writeBands(join(root, 'labels/cam0/a.png'), 10, 10, [1, 2, 9]);
  await writeRgb(join(root, 'images/cam1/b.png'), 10, 10, 9);
  await writeBands(join(root, 'labels/cam1/b.png'), 10, 10, [2]);
  await writeFile(join(root, 'labelmap.json'), JSON.stringify({ 1: 0, 2: 13 }));
}

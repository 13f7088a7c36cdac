import { test } from 'node:test';
import assert from 'node:assert/strict';
import { deflateSync, inflateSync } from 'node:zlib';
import sharp from 'sharp';
import { decodePng, decodeRgb8Png, encodePng, pngChunk } from '../../src/data/png.ts';

/**
 * A w x h image with a gradient, a diagonal ramp (where Paeth predicts from the upper-left neighbour) and
 * noise (where its ties between neighbours occur: changing either tie rule fails the test below), so
 * that every filter type and branch has something to do.
 */
function pixels(w: number, h: number, channels: number, seed: number): Uint8Array {
  const out = new Uint8Array(w * h * channels);
  let s = seed;
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++)
      for (let c = 0; c < channels; c++) {
        s = (Math.imul(s, 1103515245) + 12345) >>> 0;
        out[(y * w + x) * channels + c] =
          x < w / 3 ? (x * 7 + y * 3 + c * 40) & 0xff : x < (2 * w) / 3 ? ((x - y) * 5 + c * 30) & 0xff : s >>> 24;
      }
  return out;
}

/** An 8-bit PNG whose row y uses filter type filters[y % filters.length] (the PNG spec's filters, written out here). */
function pngWithFilters(data: Uint8Array, w: number, h: number, channels: 3 | 4, filters: number[], extra: Buffer[] = []): Buffer {
  const stride = w * channels;
  const raw = Buffer.alloc((stride + 1) * h);
  const at = (y: number, i: number) => (y < 0 || i < 0 ? 0 : data[y * stride + i]!);
  for (let y = 0; y < h; y++) {
    const f = filters[y % filters.length]!;
    raw[y * (stride + 1)] = f;
    for (let i = 0; i < stride; i++) {
      const [x, a, b, c] = [at(y, i), at(y, i - channels), at(y - 1, i), at(y - 1, i - channels)];
      const p = a + b - c;
      const paeth =
        Math.abs(p - a) <= Math.abs(p - b) && Math.abs(p - a) <= Math.abs(p - c) ? a : Math.abs(p - b) <= Math.abs(p - c) ? b : c;
      const pred = [0, a, b, (a + b) >> 1, paeth][f]!;
      raw[y * (stride + 1) + 1 + i] = (x - pred) & 0xff;
    }
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8;
  ihdr[9] = channels === 3 ? 2 : 6;
  const sig = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return Buffer.concat([sig, pngChunk('IHDR', ihdr), ...extra, pngChunk('IDAT', deflateSync(raw)), pngChunk('IEND', new Uint8Array(0))]);
}

const viaSharp = async (png: Uint8Array) => new Uint8Array(await sharp(png).removeAlpha().toColourspace('srgb').raw().toBuffer());

test('decodeRgb8Png: every filter type, RGB and RGBA, odd sizes: the bytes sharp decodes', async () => {
  for (const [w, h, channels] of [
    [37, 11, 3],
    [16, 9, 4],
    [1, 5, 3],
  ] as const) {
    const data = pixels(w, h, channels, w * h);
    // rows cycle through the five filters, and each filter also starts the image (its first-row case)
    for (const first of [0, 1, 2, 3, 4]) {
      const png = pngWithFilters(
        data,
        w,
        h,
        channels,
        [0, 1, 2, 3, 4].map((f) => (f + first) % 5),
      );
      const mine = decodeRgb8Png(png);
      assert.ok(mine, `${w}x${h}x${channels} filters from ${first}: decoded here`);
      assert.deepEqual([mine.width, mine.height], [w, h]);
      assert.deepEqual(mine.data, await viaSharp(png), `${w}x${h}x${channels} filters from ${first}`);
    }
  }
  // what sharp writes itself (adaptive filtering picks per row) and what encodePng writes (filter 0)
  const rgb = pixels(64, 32, 3, 7);
  const bySharp = await sharp(rgb, { raw: { width: 64, height: 32, channels: 3 } })
    .png({ adaptiveFiltering: true })
    .toBuffer();
  const used = new Set<number>();
  const raw = inflateSync(bySharp.subarray(bySharp.indexOf('IDAT') + 4, bySharp.indexOf('IEND') - 8));
  for (let y = 0; y < 32; y++) used.add(raw[y * (64 * 3 + 1)]!);
  assert.ok(used.size >= 2, `sharp used filters ${[...used]}`);
  assert.deepEqual(decodeRgb8Png(bySharp)!.data, rgb);
  assert.deepEqual(decodeRgb8Png(encodePng({ width: 64, height: 32, channels: 3, bitDepth: 8, data: rgb }))!.data, rgb);
});

test('decodeRgb8Png: null (sharp decides) for other kinds, colour management, interlacing and damage', async () => {
  const rgb = pixels(8, 6, 3, 1);
  const good = pngWithFilters(rgb, 8, 6, 3, [1, 4]);
  assert.ok(decodeRgb8Png(good));
  const cases: Record<string, Uint8Array> = {
    grey: encodePng({ width: 8, height: 6, channels: 1, bitDepth: 8, data: rgb.subarray(0, 48) }),
    '16-bit RGB': encodePng({ width: 8, height: 6, channels: 3, bitDepth: 16, data: new Uint16Array(144) }),
    palette: encodePng({ width: 8, height: 6, channels: 1, bitDepth: 8, data: new Uint8Array(48), palette: new Uint8Array(6) }),
    interlaced: await sharp(rgb, { raw: { width: 8, height: 6, channels: 3 } })
      .png({ progressive: true })
      .toBuffer(),
    gAMA: pngWithFilters(rgb, 8, 6, 3, [1], [pngChunk('gAMA', Uint8Array.of(0, 0, 0xb1, 0x8f))]),
    iCCP: pngWithFilters(rgb, 8, 6, 3, [1], [pngChunk('iCCP', Buffer.from('x\0\0'))]),
    'bad CRC': Buffer.from(good).fill(0, good.length - 30, good.length - 28),
    truncated: good.subarray(0, good.length - 20),
    'not a PNG': Buffer.from('GIF89a0000000000000000'),
  };
  for (const [what, png] of Object.entries(cases)) assert.equal(decodeRgb8Png(png), null, what);
  // an sRGB chunk and text do not change the pixels
  const tagged = pngWithFilters(rgb, 8, 6, 3, [2], [pngChunk('sRGB', Uint8Array.of(0)), pngChunk('tEXt', Buffer.from('k\0v'))]);
  assert.deepEqual(decodeRgb8Png(tagged)!.data, rgb);
  // decodePng (labels) shares the unfiltering: 16-bit RGB round trip
  const d16 = Uint16Array.from({ length: 8 * 6 * 3 }, (_, i) => i * 997);
  assert.deepEqual(decodePng(encodePng({ width: 8, height: 6, channels: 3, bitDepth: 16, data: d16 }), 'x').data, d16);
});

test('decodeRgb8Png: null above maxPixels (large images go to sharp, the faster there)', () => {
  const png = pngWithFilters(pixels(8, 6, 3, 3), 8, 6, 3, [0]);
  assert.equal(decodeRgb8Png(png, 47), null);
  assert.ok(decodeRgb8Png(png, 48));
});

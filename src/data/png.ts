/**
 * A small PNG encoder (no filtering, zlib level 6): 8- or 16-bit grey, grey+alpha, RGB, RGBA, and 8-bit
 * palette images. sharp encodes 8-bit images faster; this exists for what sharp cannot write exactly:
 * 16-bit multi-channel label maps (SYNTHIA's format) and palette ("P"-mode) pseudo-label PNGs whose pixel
 * values are the train IDs (REFERENCE 5).
 */
import { crc32, deflateSync, inflateSync } from 'node:zlib';

export interface PngImage {
  width: number;
  height: number;
  /** 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA. Palette images: 1. */
  channels: 1 | 2 | 3 | 4;
  /** 8 or 16 bits per sample. */
  bitDepth: 8 | 16;
  /** Row-major interleaved samples; Uint16Array for 16-bit. */
  data: Uint8Array | Uint16Array;
  /** RGB triplets: makes a palette image (colour type 3) whose samples are palette indices. */
  palette?: Uint8Array;
}

const COLOUR_TYPE: Record<number, number> = { 1: 0, 2: 4, 3: 2, 4: 6 };

function chunk(type: string, body: Uint8Array): Buffer {
  const out = Buffer.alloc(12 + body.length);
  out.writeUInt32BE(body.length, 0);
  out.write(type, 4, 'latin1');
  out.set(body, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + body.length)), 8 + body.length);
  return out;
}

export function encodePng(img: PngImage): Buffer {
  const { width, height, channels, bitDepth, data, palette } = img;
  if (!(width > 0 && height > 0)) throw new Error(`encodePng: bad size ${width}x${height}`);
  if (data.length !== width * height * channels) {
    throw new Error(`encodePng: ${width}x${height}x${channels} needs ${width * height * channels} samples, got ${data.length}`);
  }
  if (palette && (channels !== 1 || bitDepth !== 8)) throw new Error('encodePng: palette images are 8-bit, 1 channel');
  const bytesPerSample = bitDepth / 8;
  const stride = width * channels * bytesPerSample;
  const raw = Buffer.alloc((stride + 1) * height);
  for (let y = 0; y < height; y++) {
    const row = y * (stride + 1); // filter byte 0 (none)
    const base = y * width * channels;
    if (bitDepth === 8) {
      raw.set(data.subarray(base, base + width * channels) as Uint8Array, row + 1);
    } else {
      for (let i = 0; i < width * channels; i++) raw.writeUInt16BE(data[base + i]!, row + 1 + 2 * i);
    }
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = bitDepth;
  ihdr[9] = palette ? 3 : COLOUR_TYPE[channels]!;
  const parts = [Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr)];
  if (palette) parts.push(chunk('PLTE', palette));
  parts.push(chunk('IDAT', deflateSync(raw, { level: 6 })), chunk('IEND', new Uint8Array(0)));
  return Buffer.concat(parts);
}

/** A decoded PNG: the samples as stored (palette images: the indices, not the colours). */
export type DecodedPng = PngImage;

const CHANNELS_OF: Record<number, 1 | 2 | 3 | 4> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };

/**
 * Decodes a PNG to its raw samples, the way label maps must be read: palette images give their
 * indices (as PIL's "P" mode does), 16-bit images keep 16 bits. Non-interlaced, bit depth 8 or 16
 * (palette: 8). Errors name `source`. Images go through sharp instead (faster, JPEG too).
 */
export function decodePng(bytes: Uint8Array, source: string): DecodedPng {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const fail = (what: string): never => {
    throw new Error(`${source}: not a readable PNG: ${what}`);
  };
  if (buf.length < 8 || buf.readUInt32BE(0) !== 0x89504e47 || buf.readUInt32BE(4) !== 0x0d0a1a0a) fail('bad signature');
  let pos = 8;
  let width = 0;
  let height = 0;
  let bitDepth = 0;
  let colourType = -1;
  let palette: Uint8Array | undefined;
  const idat: Buffer[] = [];
  let ended = false;
  while (pos + 8 <= buf.length) {
    const len = buf.readUInt32BE(pos);
    const type = buf.toString('latin1', pos + 4, pos + 8);
    if (pos + 12 + len > buf.length) fail(`chunk ${type} runs past the end of the file (truncated?)`);
    const body = buf.subarray(pos + 8, pos + 8 + len);
    if (type === 'IHDR') {
      width = body.readUInt32BE(0);
      height = body.readUInt32BE(4);
      bitDepth = body[8]!;
      colourType = body[9]!;
      if (body[12] !== 0) fail('interlaced PNGs are not supported');
    } else if (type === 'PLTE') {
      palette = new Uint8Array(body);
    } else if (type === 'IDAT') {
      idat.push(body);
    } else if (type === 'IEND') {
      ended = true;
      break;
    }
    pos += 12 + len;
  }
  if (colourType < 0) fail('no IHDR chunk');
  if (!ended) fail('no IEND chunk (truncated?)');
  const channels = CHANNELS_OF[colourType];
  if (!channels) fail(`unknown colour type ${colourType}`);
  if (bitDepth !== 8 && bitDepth !== 16) fail(`bit depth ${bitDepth} is not supported (8 or 16)`);
  let raw: Buffer;
  try {
    raw = inflateSync(Buffer.concat(idat));
  } catch (err) {
    return fail(`corrupt image data (${(err as Error).message})`);
  }
  const bpp = (channels! * bitDepth) / 8;
  const stride = width * bpp;
  if (raw.length < (stride + 1) * height) fail(`image data holds ${raw.length} bytes, ${(stride + 1) * height} expected (truncated?)`);
  const out = new Uint8Array(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]!;
    const src = y * (stride + 1) + 1;
    const dst = y * stride;
    const prev = dst - stride;
    if (filter === 0) {
      // unfiltered row (what encodePng writes): a plain copy
      out.set(raw.subarray(src, src + stride), dst);
      continue;
    }
    for (let i = 0; i < stride; i++) {
      const x = raw[src + i]!;
      const a = i >= bpp ? out[dst + i - bpp]! : 0;
      const b = y > 0 ? out[prev + i]! : 0;
      let v: number;
      switch (filter) {
        case 0:
          v = x;
          break;
        case 1:
          v = x + a;
          break;
        case 2:
          v = x + b;
          break;
        case 3:
          v = x + ((a + b) >> 1);
          break;
        case 4: {
          const c = y > 0 && i >= bpp ? out[prev + i - bpp]! : 0;
          const p = a + b - c;
          const pa = Math.abs(p - a);
          const pb = Math.abs(p - b);
          const pc = Math.abs(p - c);
          v = x + (pa <= pb && pa <= pc ? a : pb <= pc ? b : c);
          break;
        }
        default:
          return fail(`unknown filter type ${filter} in row ${y}`);
      }
      out[dst + i] = v & 0xff;
    }
  }
  let data: Uint8Array | Uint16Array = out;
  if (bitDepth === 16) {
    const d16 = new Uint16Array(out.length / 2);
    for (let i = 0; i < d16.length; i++) d16[i] = (out[2 * i]! << 8) | out[2 * i + 1]!;
    data = d16;
  }
  return { width, height, channels: channels!, bitDepth: bitDepth as 8 | 16, data, palette };
}

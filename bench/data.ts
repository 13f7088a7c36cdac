/**
 * Data-pipeline benchmark: decode + SSL-target augmentation (REFERENCE 6.3: ColorJitter, RandomScale
 * 0.5-1.5, RandomCrop 512x1024, HorizontalFlip, Normalize) of 2048x1024 street-like images, read from our
 * LMDB shards through `SampleReader` (piscina workers, sharp decode, recycled buffers), side by side with a
 * PyTorch DataLoader over a PIL implementation of the same transform (bench/data_torch.py, Debian's
 * python3-torch + python3-pil; skipped when absent). Both sides decode the same bytes: the peer gets the
 * records' image and label bytes exported from our shards.
 *
 * The images are generated once (deterministic: smooth gradients, shapes, windows, sensor-like noise, so
 * PNG compresses like a photo, not like a flat colour or pure noise) and cached under --work, as a PNG and a
 * JPEG (quality 90) tree with 8-bit Cityscapes-ID label PNGs.
 *
 *   npm run bench:data -- [--images 32] [--samples 64] [--workers 1,2] [--work DIR] [--python /usr/bin/python3]
 */
import { availableParallelism } from 'node:os';
// sharp decodes on libuv's thread pool (default 4 threads): size it to the cores before any I/O.
process.env.UV_THREADPOOL_SIZE ??= String(availableParallelism());

import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir, rename, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import {
  AUGMENT_PRESETS,
  IMAGENET_MEAN,
  IMAGENET_STD,
  augmentSample,
  bicubicSourceRect,
  compileJitter,
  drawColorJitter,
  drawScaleCrop,
  normalizeInto,
  scaleAndCrop,
} from '../src/data/augment.ts';
import { ingestDataset } from '../src/data/ingest.ts';
import { CITYSCAPES_TO_TRAIN19 } from '../src/data/labels.ts';
import { decodePng, encodePng } from '../src/data/png.ts';
import { openDataset, SampleReader, type Dataset } from '../src/data/reader.ts';
import { Rng } from '../src/data/rng.ts';
import { openShardReadOnly, type ShardHandle } from '../src/data/shards.ts';

const USAGE = `usage: npm run bench:data -- [options]
  --images N        distinct generated images, 2048x1024 (default 32)
  --samples M       timed samples per format and worker count (default 64)
  --workers LIST    comma-separated worker counts (default 1,2)
  --warmup K        samples read before timing starts (default 2 x workers)
  --formats LIST    png,jpeg (default both)
  --work DIR        cache of generated trees, shards and peer files (default ${join(os.tmpdir(), 'spcl-bench-data')})
  --python PATH     interpreter with torch + PIL for the peer (default /usr/bin/python3)
  --peer-batch B    DataLoader batch size of the peer (default 1)
  --profile K       samples for the per-stage profile (default 16; 0 = off)
  -h, --help        this text
Times decode + sslTarget augmentation through SampleReader against a PyTorch DataLoader peer.`;

function usageError(message: string): never {
  process.stderr.write(`bench:data: ${message}\n\n${USAGE}\n`);
  process.exit(2);
}

function parse() {
  return parseArgs({
    options: {
      images: { type: 'string', default: '32' },
      samples: { type: 'string', default: '64' },
      workers: { type: 'string', default: '1,2' },
      warmup: { type: 'string' },
      formats: { type: 'string', default: 'png,jpeg' },
      work: { type: 'string', default: join(os.tmpdir(), 'spcl-bench-data') },
      python: { type: 'string', default: '/usr/bin/python3' },
      'peer-batch': { type: 'string', default: '1' },
      profile: { type: 'string', default: '16' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  }).values;
}

let args: ReturnType<typeof parse>;
try {
  args = parse();
} catch (err) {
  usageError((err as Error).message);
}
if (args.help) {
  console.log(USAGE);
  process.exit(0);
}

function intFlag(name: string, text: string, min: number, max: number): number {
  const v = Number(text);
  if (!(/^\d+$/.test(text.trim()) && Number.isInteger(v) && v >= min && v <= max)) {
    usageError(`--${name} ${JSON.stringify(text)}: expected an integer in ${min}..${max}`);
  }
  return v;
}

function listFlag<T extends string>(name: string, text: string, parse: (item: string) => T | null): T[] {
  const items = text.split(',').map((s) => s.trim());
  const out: T[] = [];
  for (const item of items) {
    const v = parse(item);
    if (v === null) usageError(`--${name} ${JSON.stringify(text)}: bad item ${JSON.stringify(item)}`);
    if (!out.includes(v)) out.push(v);
  }
  return out;
}

const cores = availableParallelism();
const numImages = intFlag('images', args.images, 1, 99999);
const numSamples = intFlag('samples', args.samples, 1, 1_000_000);
const workerCounts = listFlag('workers', args.workers, (s) => (/^\d+$/.test(s) && Number(s) >= 1 && Number(s) <= 256 ? s : null)).map(
  Number,
);
const warmupFlag = args.warmup === undefined ? null : intFlag('warmup', args.warmup, 1, 1_000_000);
type Format = 'png' | 'jpeg';
const formats = listFlag<Format>('formats', args.formats, (s) => (s === 'png' || s === 'jpeg' ? s : null));
const peerBatch = intFlag('peer-batch', args['peer-batch'], 1, 256);
const profileCount = intFlag('profile', args.profile, 0, 1000);
const workDir = join(args.work, 'v1');
const python = args.python;
const WIDTH = 2048;
const HEIGHT = 1024;
const spec = AUGMENT_PRESETS.sslTarget;

// ---------------------------------------------------------------------------------------------------
// Street-like scenes

/** Cityscapes label IDs drawn (REFERENCE 6.2). */
const ID = { road: 7, sidewalk: 8, building: 11, pole: 17, vegetation: 21, sky: 23, person: 24, car: 26 } as const;

interface Scene {
  rgb: Uint8Array;
  label: Uint8Array;
}

/**
 * A deterministic street scene: sky gradient with soft clouds, a road in perspective with lane marks and
 * paved sidewalks, facades with window grids, trees, poles, persons and cars (painter's order, far to near),
 * then luminance + chroma noise of about +-2 grey levels: the PNGs compress like photographs (~2.3 MB, as
 * Cityscapes' 2048x1024 PNGs), neither flat colour nor pure noise.
 */
function streetScene(index: number, w: number, h: number): Scene {
  const rng = new Rng(0x5eed0000 + index);
  const col = new Float32Array(w * h * 3);
  const label = new Uint8Array(w * h);
  const put = (x: number, y: number, id: number, r: number, g: number, b: number): void => {
    const p = y * w + x;
    label[p] = id;
    col[p * 3] = r;
    col[p * 3 + 1] = g;
    col[p * 3 + 2] = b;
  };
  const horizon = Math.round(h * rng.uniform(0.4, 0.5));
  const vx = Math.round(w * rng.uniform(0.4, 0.6));
  const roadHalf = (y: number): number => 30 + ((y - horizon) / (h - horizon)) * w * 0.55;

  // sky and ground
  const top = [rng.uniform(70, 120), rng.uniform(120, 160), rng.uniform(190, 235)];
  const low = [rng.uniform(190, 225), rng.uniform(200, 230), rng.uniform(210, 240)];
  const [p1, p2, p3, p4] = [rng.uniform(0, 6.3), rng.uniform(0, 6.3), rng.uniform(0, 6.3), rng.uniform(0, 6.3)];
  const road = rng.uniform(85, 110);
  const walk = [rng.uniform(140, 170), rng.uniform(135, 160), rng.uniform(120, 145)];
  for (let y = 0; y < h; y++) {
    if (y < horizon) {
      const t = y / horizon;
      for (let x = 0; x < w; x++) {
        const cloud = Math.max(0, Math.sin(x * 0.004 + p1) * Math.sin(y * 0.011 + p2) + 0.3 * Math.sin(x * 0.013 + y * 0.007 + p3)) * 45;
        put(
          x,
          y,
          ID.sky,
          top[0]! + (low[0]! - top[0]!) * t + cloud,
          top[1]! + (low[1]! - top[1]!) * t + cloud,
          top[2]! + (low[2]! - top[2]!) * t + cloud * 0.8,
        );
      }
    } else {
      const d = (y - horizon) / (h - horizon);
      const half = roadHalf(y);
      const dash = Math.floor(Math.sqrt(y - horizon) * 1.5) % 2 === 0;
      for (let x = 0; x < w; x++) {
        const off = Math.abs(x - vx);
        if (off < half) {
          const mark = (dash && off < 2 + 12 * d) || Math.abs(off - half * 0.93) < 2 + 8 * d;
          const g = mark ? 215 : road - 25 * d + 5 * Math.sin(x * 0.05 + p4) * Math.sin(y * 0.09);
          put(x, y, ID.road, g, g, g + 3);
        } else {
          const seam = (x + y * 2) % 70 < 2 || y % 31 < 1 ? -22 : 0;
          put(x, y, ID.sidewalk, walk[0]! - 20 * d + seam, walk[1]! - 20 * d + seam, walk[2]! - 20 * d + seam);
        }
      }
    }
  }

  // facades: left of the street and right of it, bottoms falling away from the vanishing point
  for (const side of [-1, 1]) {
    let x = side < 0 ? 0 : vx + 60;
    const end = side < 0 ? vx - 60 : w;
    while (x < end) {
      const bw = Math.min(end - x, Math.round(rng.uniform(150, 450)));
      const height = rng.uniform(0.12, 0.35) * h;
      const base = [rng.uniform(90, 200), rng.uniform(80, 180), rng.uniform(70, 160)];
      const win = [rng.uniform(30, 70), rng.uniform(40, 80), rng.uniform(60, 110)];
      const pitchX = Math.round(rng.uniform(36, 60));
      const pitchY = Math.round(rng.uniform(48, 72));
      for (let xx = x; xx < x + bw; xx++) {
        const dist = Math.abs(xx - vx) / w;
        const yTop = Math.max(0, Math.round(horizon - height * (1 + 1.5 * dist)));
        const yBottom = Math.min(h - 1, Math.round(horizon + dist * h * 0.45));
        const u = (xx - x) % pitchX;
        for (let y = yTop; y < yBottom; y++) {
          const v = (y - yTop) % pitchY;
          const shade = 0.85 + 0.25 * ((y - yTop) / Math.max(1, yBottom - yTop));
          const isWin = u > pitchX * 0.25 && u < pitchX * 0.75 && v > pitchY * 0.2 && v < pitchY * 0.7 && y < yBottom - pitchY;
          if (isWin) put(xx, y, ID.building, win[0]! + v * 0.6, win[1]! + v * 0.6, win[2]! + v * 0.6);
          else put(xx, y, ID.building, base[0]! * shade, base[1]! * shade, base[2]! * shade);
        }
      }
      x += bw;
    }
  }

  // trees (trunk and canopy are vegetation in Cityscapes)
  const trees = rng.int(3, 7);
  for (let t = 0; t < trees; t++) {
    const r = rng.uniform(60, 170);
    const cx = Math.round(rng.next() < 0.5 ? rng.uniform(0, vx - 250) : rng.uniform(vx + 250, w));
    const cy = Math.round(horizon - rng.uniform(0, 0.15 * h));
    const tw = Math.max(4, Math.round(r * 0.12));
    for (let y = cy; y < Math.min(h, cy + r * 1.3); y++) {
      for (let x = Math.max(0, cx - tw); x < Math.min(w, cx + tw); x++) put(x, y, ID.vegetation, 80, 60, 40);
    }
    const phase = rng.uniform(0, 6.3);
    for (let y = Math.max(0, Math.round(cy - r * 1.2)); y < Math.min(h, cy + r * 1.2); y++) {
      for (let x = Math.max(0, Math.round(cx - r * 1.2)); x < Math.min(w, cx + r * 1.2); x++) {
        const dx = x - cx;
        const dy = y - cy;
        const edge = r * (1 + 0.12 * Math.sin(Math.atan2(dy, dx) * 7 + phase));
        if (dx * dx + dy * dy > edge * edge) continue;
        const leaf = 18 * Math.sin(x * 0.21 + phase) * Math.sin(y * 0.23) - 0.15 * dy;
        put(x, y, ID.vegetation, 50 + leaf, 110 + leaf, 45 + leaf * 0.5);
      }
    }
  }

  // poles
  const poles = rng.int(4, 8);
  for (let k = 0; k < poles; k++) {
    const pw = rng.int(6, 14);
    const px = rng.int(0, w - pw);
    const y0 = Math.round(horizon - rng.uniform(0.2, 0.35) * h);
    const y1 = Math.min(h, Math.round(horizon + rng.uniform(0.05, 0.3) * h));
    for (let y = Math.max(0, y0); y < y1; y++) {
      for (let u = 0; u < pw; u++) {
        const s = 1 - 1.6 * (u / pw - 0.5) ** 2;
        put(px + u, y, ID.pole, 130 * s, 130 * s, 135 * s);
      }
    }
  }

  // persons on the sidewalks, cars on the road; far to near
  type Thing = { kind: 'person' | 'car'; yb: number; cx: number };
  const things: Thing[] = [];
  for (let k = rng.int(3, 8); k > 0; k--) {
    const yb = Math.round(rng.uniform(horizon + 20, h - 10));
    const half = roadHalf(yb);
    const cx = Math.round(rng.next() < 0.5 ? vx - half - rng.uniform(10, 200) : vx + half + rng.uniform(10, 200));
    things.push({ kind: 'person', yb, cx });
  }
  for (let k = rng.int(2, 6); k > 0; k--) {
    const yb = Math.round(rng.uniform(horizon + 30, h - 5));
    things.push({ kind: 'car', yb, cx: Math.round(vx + rng.uniform(-0.6, 0.6) * roadHalf(yb)) });
  }
  things.sort((a, b) => a.yb - b.yb);
  for (const t of things) {
    const c = [rng.uniform(20, 230), rng.uniform(20, 230), rng.uniform(20, 230)];
    if (t.kind === 'person') {
      const ph = (t.yb - horizon) * 1.6 + 20;
      const pw = ph * 0.3;
      for (let y = Math.max(0, Math.round(t.yb - ph)); y < t.yb; y++) {
        const v = (t.yb - y) / ph; // 0 feet .. 1 head top
        const halfW = v > 0.87 ? pw * 0.22 : v > 0.45 ? pw * 0.5 : pw * 0.3;
        const tone = v > 0.87 ? [200, 160, 130] : v > 0.45 ? c : [40, 40, 60];
        for (let x = Math.max(0, Math.round(t.cx - halfW)); x < Math.min(w, t.cx + halfW); x++)
          put(x, y, ID.person, tone[0]!, tone[1]!, tone[2]!);
      }
    } else {
      const ch = (t.yb - horizon) * 0.75 + 10;
      const cw = ch * 2.1;
      for (let y = Math.max(0, Math.round(t.yb - ch)); y < Math.min(h, t.yb); y++) {
        const v = (t.yb - y) / ch;
        for (let x = Math.max(0, Math.round(t.cx - cw / 2)); x < Math.min(w, t.cx + cw / 2); x++) {
          const u = (x - (t.cx - cw / 2)) / cw;
          const wheel = v < 0.22 && (Math.abs(u - 0.2) < 0.09 || Math.abs(u - 0.8) < 0.09);
          if (v > 0.6 && (u < 0.15 || u > 0.85)) continue; // cabin narrower than the body
          if (wheel) put(x, y, ID.car, 25, 25, 28);
          else if (v > 0.62) put(x, y, ID.car, 50 + 40 * v, 60 + 40 * v, 75 + 40 * v);
          else put(x, y, ID.car, c[0]! * (0.7 + 0.5 * v), c[1]! * (0.7 + 0.5 * v), c[2]! * (0.7 + 0.5 * v));
        }
      }
    }
  }

  // sensor noise: luminance (sum of two bytes, triangular, +-2) and a little chroma
  const rgb = new Uint8Array(w * h * 3);
  for (let p = 0; p < w * h; p++) {
    const n = rng.nextU32();
    const lum = ((n & 255) + ((n >>> 8) & 255) - 255) / 128;
    const cr = (((n >>> 16) & 255) - 128) / 192;
    const cb = ((n >>> 24) - 128) / 192;
    const q = p * 3;
    rgb[q] = clamp8(col[q]! + lum + cr);
    rgb[q + 1] = clamp8(col[q + 1]! + lum);
    rgb[q + 2] = clamp8(col[q + 2]! + lum + cb);
  }
  return { rgb, label };
}

function clamp8(v: number): number {
  return v <= 0 ? 0 : v >= 255 ? 255 : Math.round(v);
}

async function writeAtomic(path: string, bytes: Uint8Array): Promise<void> {
  await writeFile(`${path}.tmp`, bytes);
  await rename(`${path}.tmp`, path);
}

const keyOf = (i: number): string => String(i + 1).padStart(5, '0');
const treeDir = (f: Format): string => join(workDir, 'trees', f);

/** GTA5-layout trees (images/NNNNN.png + labels/NNNNN.png), and the same with JPEG images (.jpg). */
async function generateTrees(n: number): Promise<number> {
  for (const f of ['png', 'jpeg'] as const) {
    await mkdir(join(treeDir(f), 'images'), { recursive: true });
    await mkdir(join(treeDir(f), 'labels'), { recursive: true });
  }
  // The GTA5 adapter only lists *.png; the JPEG tree is ingested as a `folder` dataset (same layout +
  // labelmap.json with the Cityscapes -> 19 train-ID map, which is what gta5 uses).
  await writeFile(join(treeDir('jpeg'), 'labelmap.json'), JSON.stringify(CITYSCAPES_TO_TRAIN19));
  const todo: number[] = [];
  for (let i = 0; i < n; i++) {
    const k = keyOf(i);
    const paths = [
      join(treeDir('png'), 'images', `${k}.png`),
      join(treeDir('png'), 'labels', `${k}.png`),
      join(treeDir('jpeg'), 'images', `${k}.jpg`),
      join(treeDir('jpeg'), 'labels', `${k}.png`),
    ];
    if (!paths.every((p) => existsSync(p))) todo.push(i);
  }
  const started = performance.now();
  const pending = new Set<Promise<void>>();
  for (const i of todo) {
    const k = keyOf(i);
    const { rgb, label } = streetScene(i, WIDTH, HEIGHT);
    const labelPng = encodePng({ width: WIDTH, height: HEIGHT, channels: 1, bitDepth: 8, data: label });
    const raw = { raw: { width: WIDTH, height: HEIGHT, channels: 3 as const } };
    const job = (async () => {
      const [png, jpeg] = await Promise.all([sharp(rgb, raw).png().toBuffer(), sharp(rgb, raw).jpeg({ quality: 90 }).toBuffer()]);
      await writeAtomic(join(treeDir('png'), 'images', `${k}.png`), png);
      await writeAtomic(join(treeDir('jpeg'), 'images', `${k}.jpg`), jpeg);
      await writeAtomic(join(treeDir('png'), 'labels', `${k}.png`), labelPng);
      await writeAtomic(join(treeDir('jpeg'), 'labels', `${k}.png`), labelPng);
    })();
    pending.add(job);
    void job.finally(() => pending.delete(job));
    if (pending.size >= cores) await Promise.race(pending);
  }
  await Promise.all(pending);
  if (todo.length) process.stderr.write(`generated ${todo.length} scenes in ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
  return todo.length;
}

async function meanFileBytes(dir: string, count: number, ext: string): Promise<number> {
  let total = 0;
  for (let i = 0; i < count; i++) total += (await stat(join(dir, `${keyOf(i)}.${ext}`))).size;
  return total / count;
}

// ---------------------------------------------------------------------------------------------------
// Shards and peer files

async function ingestTree(f: Format, n: number): Promise<{ ds: Dataset; keys: string[] }> {
  const out = join(workDir, 'shards', f);
  const lines: string[] = [];
  const summary = await ingestDataset({
    dataset: f === 'png' ? 'gta5' : 'folder',
    root: treeDir(f),
    out,
    progressStream: null,
    log: (l) => lines.push(l),
  });
  if (summary.problemCount > 0)
    throw new Error(`ingest of ${treeDir(f)} into ${out}: ${summary.problemCount} problems:\n${lines.join('\n')}`);
  if (summary.written) process.stderr.write(`ingested ${summary.written} ${f} records into ${out}\n`);
  const ds = await openDataset(out);
  const wanted = Array.from({ length: n }, (_, i) => keyOf(i));
  const have = new Set(ds.keys);
  const missing = wanted.filter((k) => !have.has(k));
  if (missing.length)
    throw new Error(`${out}: records ${missing.slice(0, 5).join(', ')} missing after ingest (expected keys 00001..${keyOf(n - 1)})`);
  return { ds, keys: wanted };
}

/** The records' exact image and label bytes as files for the peer (`<key>.image`, `<key>.label.png`). */
async function exportForPeer(f: Format, ds: Dataset, keys: string[]): Promise<string> {
  const dir = join(workDir, 'peer', f);
  await mkdir(dir, { recursive: true });
  const present = new Set(await readdir(dir));
  const shards = new Map<string, ShardHandle>();
  try {
    for (const key of keys) {
      if (present.has(`${key}.image`) && present.has(`${key}.label.png`)) continue;
      const path = ds.shardOf(key);
      let shard = shards.get(path);
      if (!shard) shards.set(path, (shard = openShardReadOnly(path)));
      const record = shard.records.get(key);
      if (!record?.label) throw new Error(`${path}: record '${key}' missing or unlabelled`);
      await writeAtomic(join(dir, `${key}.label.png`), record.label);
      await writeAtomic(join(dir, `${key}.image`), record.image);
    }
  } finally {
    for (const s of shards.values()) await s.close();
  }
  return dir;
}

// ---------------------------------------------------------------------------------------------------
// Our side

interface Run {
  workers: number;
  imagesPerSec: number;
  /** CPU seconds of the whole process (all threads) per wall second in the timed window. */
  coresBusy: number;
}

/**
 * Reads warm-up + `samples` samples with at most 2 x workers in flight, recycling every buffer; the clock
 * starts when the warm-up'th sample arrives and stops at the last.
 */
async function runOurs(ds: Dataset, keys: string[], workers: number, samples: number, warmup: number): Promise<Run> {
  const reader = new SampleReader({ threads: workers });
  const total = warmup + samples;
  let next = 0;
  let done = 0;
  let t0 = 0;
  let cpu0 = process.cpuUsage();
  try {
    const lane = async (): Promise<void> => {
      while (next < total) {
        const i = next++;
        const sample = await reader.read(ds, keys[i % keys.length]!, spec, i);
        if (++done === warmup) {
          t0 = performance.now();
          cpu0 = process.cpuUsage();
        }
        reader.recycle(sample);
      }
    };
    await Promise.all(Array.from({ length: 2 * workers }, lane));
    const wall = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    return { workers, imagesPerSec: samples / wall, coresBusy: (cpu.user + cpu.system) / 1e6 / wall };
  } finally {
    await reader.close();
  }
}

const STAGES = ['read', 'decode_image', 'decode_label', 'jitter', 'scale_crop', 'flip', 'normalize'] as const;
type Stage = (typeof STAGES)[number];
type StageMs = Record<Stage, number>;
const STAGE_NAMES: Record<Stage, string> = {
  read: 'read bytes',
  decode_image: 'decode image',
  decode_label: 'decode label',
  jitter: 'colour jitter (1)',
  scale_crop: 'scale + crop (2)',
  flip: 'flip (3)',
  normalize: 'to tensor + normalise (3)',
};

/**
 * The read worker's steps (src/data/read-worker.ts + augmentSample), timed one by one on this thread
 * with one libvips thread, after 8 untimed samples (so the kernels of every jitter order are compiled, as
 * in a worker that has been running): where a sample's time goes. The augmentation is augmentSample's own
 * sequence of calls, split at its stages; every profiled sample is checked to come out identical to
 * augmentSample's.
 */
async function profileOurs(ds: Dataset, keys: string[], count: number): Promise<StageMs> {
  sharp.concurrency(1);
  const sums: StageMs = { read: 0, decode_image: 0, decode_label: 0, jitter: 0, scale_crop: 0, flip: 0, normalize: 0 };
  const shards = new Map<string, ShardHandle>();
  const [ch, cw] = spec.crop;
  const out = new Float32Array(ch * cw * 3);
  const check = { images: new Float32Array(ch * cw * 3), labels: new Uint8Array(ch * cw), index: 0 };
  const crop = { image: new Uint8Array(ch * cw * 3), label: new Uint8Array(ch * cw) };
  try {
    const WARMUP = 8;
    for (let j = -WARMUP; j < count; j++) {
      const i = j < 0 ? j + WARMUP + count : j; // warm-up on other seeds than the timed ones
      const key = keys[i % keys.length]!;
      const path = ds.shardOf(key);
      let shard = shards.get(path);
      if (!shard) shards.set(path, (shard = openShardReadOnly(path)));
      const t: number[] = [performance.now()];
      const record = shard.records.get(key)!;
      t.push(performance.now());
      const decoded = await sharp(record.image).removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
      const { width: w, height: h } = decoded.info;
      const image = new Uint8Array(decoded.data.buffer, decoded.data.byteOffset, decoded.data.byteLength);
      t.push(performance.now());
      const label = decodePng(record.label!, key).data as Uint8Array;
      t.push(performance.now());
      // (1) the draws, then contrast's mean over the whole image, staging the source pixels the crop reads
      const rng = new Rng(i);
      const factors = drawColorJitter(spec.jitter!, rng); // the reference ssl spec jitters;
      const p = drawScaleCrop(w, h, { scaleRange: spec.scale, crop: spec.crop }, rng);
      const vx = Math.max(0, p.cropX);
      const vy = Math.max(0, p.cropY);
      const keep = bicubicSourceRect(
        w,
        h,
        p.scaledWidth,
        p.scaledHeight,
        vx,
        vy,
        Math.min(p.scaledWidth, p.cropX + cw) - vx,
        Math.min(p.scaledHeight, p.cropY + ch) - vy,
      );
      const program = compileJitter(image, w, h, factors, keep);
      t.push(performance.now());
      // (2) the rest of the jitter, on those source pixels only, inside the resize of the crop window
      scaleAndCrop(image, label, w, h, p.scaledWidth, p.scaledHeight, p.cropX, p.cropY, cw, ch, crop, program);
      t.push(performance.now());
      // (3) flip: the label here, the image while it is normalised
      const flip = rng.next() < spec.flipProb;
      if (flip) for (let y = 0; y < ch; y++) crop.label.subarray(y * cw, (y + 1) * cw).reverse();
      t.push(performance.now());
      normalizeInto(crop.image, cw, ch, out, 0, IMAGENET_MEAN, IMAGENET_STD, flip);
      t.push(performance.now());
      if (j >= 0) STAGES.forEach((s, k) => (sums[s] += t[k + 1]! - t[k]!));
      augmentSample({ image, label, width: w, height: h }, spec, new Rng(i), check);
      if (!out.every((v, k) => v === check.images[k]) || !crop.label.every((v, k) => v === check.labels[k])) {
        throw new Error(`profile of ${key} (seed ${i}) does not reproduce augmentSample: the profile is out of date`);
      }
    }
  } finally {
    for (const s of shards.values()) await s.close();
  }
  for (const s of STAGES) sums[s] /= count;
  return sums;
}

// ---------------------------------------------------------------------------------------------------
// Peer

interface PeerRun extends Run {
  stageMs: StageMs;
}

interface PeerOutput {
  peer: string;
  results: { workers: number; images: number; wall_s: number; cpu_s: number; images_per_s: number; stage_ms: StageMs }[];
}

/** Why the peer cannot run, or null. */
function peerUnavailable(): string | null {
  if (!existsSync(python)) return `${python} not found`;
  const r = spawnSync(python, ['-c', 'import torch, PIL, numpy'], { encoding: 'utf8' });
  if (r.status !== 0) return `${python} lacks torch/PIL/numpy (${(r.stderr || r.error?.message || '').trim().split('\n').pop()})`;
  return null;
}

function runPeer(dir: string, n: number): { label: string; runs: PeerRun[] } | string {
  const argv = [
    new URL('./data_torch.py', import.meta.url).pathname,
    '--root',
    dir,
    '--images',
    String(n),
    '--samples',
    String(numSamples),
    '--workers',
    workerCounts.join(','),
    '--batch',
    String(peerBatch),
  ];
  if (warmupFlag !== null) argv.push('--warmup', String(warmupFlag));
  const r = spawnSync(python, argv, { encoding: 'utf8', maxBuffer: 1 << 24 });
  if (r.status !== 0) return `peer failed: ${(r.stderr || r.error?.message || '').trim().split('\n').pop()}`;
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as PeerOutput;
  return {
    label: out.peer,
    runs: out.results.map((x) => ({
      workers: x.workers,
      imagesPerSec: x.images_per_s,
      coresBusy: x.cpu_s / x.wall_s,
      stageMs: x.stage_ms,
    })),
  };
}

// ---------------------------------------------------------------------------------------------------

// Other busy processes skew both sides: say how loaded the machine was before we started.
const loadBefore = os.loadavg()[0]!;
await generateTrees(numImages);
const skipPeer = peerUnavailable();
const rows: string[][] = [];
const stageCols: { title: string; ms: StageMs | null }[] = [];
const sizes: string[] = [];
let peerLabel = '';
for (const f of formats) {
  const { ds, keys } = await ingestTree(f, numImages);
  sizes.push(`${f} ${((await meanFileBytes(join(treeDir(f), 'images'), numImages, f === 'png' ? 'png' : 'jpg')) / 2 ** 20).toFixed(2)} MB`);
  const ours: Run[] = [];
  for (const w of workerCounts) {
    ours.push(await runOurs(ds, keys, w, numSamples, warmupFlag ?? 2 * w));
    process.stderr.write(`${f} ours ${w} workers: ${ours.at(-1)!.imagesPerSec.toFixed(2)} images/s\n`);
  }
  const peer = skipPeer ?? runPeer(await exportForPeer(f, ds, keys), numImages);
  if (typeof peer !== 'string') peerLabel = peer.label;
  for (const o of ours) {
    if (typeof peer === 'string') {
      rows.push([f, String(o.workers), o.imagesPerSec.toFixed(2), o.coresBusy.toFixed(2), 'skipped', '', '', '']);
      continue;
    }
    const p = peer.runs.find((x) => x.workers === o.workers)!;
    const ratio = o.imagesPerSec / p.imagesPerSec;
    const perCore = o.imagesPerSec / o.coresBusy / (p.imagesPerSec / p.coresBusy);
    rows.push([
      f,
      String(o.workers),
      o.imagesPerSec.toFixed(2),
      o.coresBusy.toFixed(2),
      p.imagesPerSec.toFixed(2),
      p.coresBusy.toFixed(2),
      `${ratio.toFixed(2)}x`,
      `${perCore.toFixed(2)}x`,
    ]);
  }
  if (profileCount > 0) {
    stageCols.push({ title: `${f} ours`, ms: await profileOurs(ds, keys, profileCount) });
    stageCols.push({ title: `${f} peer`, ms: typeof peer === 'string' ? null : peer.runs[0]!.stageMs });
  }
  if (typeof peer === 'string') process.stderr.write(`${f} peer: ${peer}\n`);
}

const cpuModel = os.cpus()[0]?.model.trim() ?? 'unknown CPU';
console.log(
  `data pipeline, sslTarget (jitter + scale 0.5-1.5 + crop 512x1024 + flip + normalise) of ${numImages} ${WIDTH}x${HEIGHT} images ` +
    `(${sizes.join(', ')}), ${numSamples} timed samples after warm-up; ${cores} cores (${cpuModel}), UV_THREADPOOL_SIZE ${process.env.UV_THREADPOOL_SIZE}, ` +
    `load average ${loadBefore.toFixed(2)} before the run, ${new Date().toISOString().slice(0, 10)}`,
);
console.log(`peer: ${skipPeer ? `skipped (${skipPeer})` : peerLabel}`);
console.log('cores busy = CPU seconds of the whole process tree / wall seconds; per-core ratio = ratio of images per CPU second');
console.log(['format', 'workers', 'ours img/s', 'ours cores busy', 'peer img/s', 'peer cores busy', 'ratio', 'per-core ratio'].join(' | '));
for (const r of rows) console.log(r.join(' | '));
if (stageCols.length) {
  console.log(
    `\nper-sample stage times, ms (ours: the worker's steps on one thread, ${profileCount} samples; peer: inside its DataLoader workers, mean over the ${workerCounts[0]}-worker run)`,
  );
  console.log(['stage', ...stageCols.map((c) => c.title)].join(' | '));
  for (const s of STAGES) console.log([STAGE_NAMES[s], ...stageCols.map((c) => (c.ms ? c.ms[s].toFixed(1) : 'n/a'))].join(' | '));
  console.log(['jitter + scale + crop', ...stageCols.map((c) => (c.ms ? (c.ms.jitter + c.ms.scale_crop).toFixed(1) : 'n/a'))].join(' | '));
  console.log(['total', ...stageCols.map((c) => (c.ms ? STAGES.reduce((a, s) => a + c.ms![s], 0).toFixed(1) : 'n/a'))].join(' | '));
  console.log("(1) ours: the draws + one pass over the whole image for contrast's mean (luma only, through the ops drawn before contrast;");
  console.log('    it keeps the source pixels the crop reads as they are before contrast); peer: ColorJitter on the whole image');
  console.log('(2) ours: the rest of the jitter on the source pixels the crop reads, inside the resize of the crop window only;');
  console.log('    peer: resize of the whole image, then crop');
  console.log('(3) ours: the label is flipped here, the image is mirrored while it is normalised; peer: both flipped here');
}

/**
 * What the reliability tests share: a small run (subsets of the quick synthetic benchmark, a few
 * iterations per phase, checkpoints every 3), a child-process runner that timestamps stderr lines and
 * can kill at a wall-clock instant, and checks of a run folder's on-disk state.
 */
import { spawn } from 'node:child_process';
import { mkdir, readFile, readdir, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { open } from 'lmdb';
import { readManifest, type Manifest } from '../../src/data/shards.ts';
import { prepareSynthetic } from '../../src/synthetic/benchmark.ts';
import { SYNTHETIC_QUICK_DATA } from '../../src/recipe/config.ts';
import { readSafetensorsHeader } from '../../src/ops/safetensors.ts';
import type { CheckpointPointer } from '../../src/stages/checkpoint.ts';
import type { GenerationInfo } from '../../src/data/pseudo-labels.ts';

export const root = new URL('../../', import.meta.url).pathname;
export const node = process.execPath;

/** A dataset folder holding the first `n` records of `src` (its shard files linked, not copied). */
async function subset(src: string, dst: string, n: number): Promise<string> {
  const m = await readManifest(src);
  await mkdir(dst, { recursive: true });
  for (const s of m.shards) await symlink(join(src, s.file), join(dst, s.file));
  const samples = m.samples.slice(0, n);
  const classImageCounts = new Array<number>(m.numClasses).fill(0);
  for (const [, , mask] of samples) for (let k = 0; k < m.numClasses; k++) if (mask & (1 << k)) classImageCounts[k]!++;
  const shards = m.shards.map((s, i) => ({ file: s.file, count: samples.filter(([, shard]) => shard === i).length }));
  const out: Manifest = { ...m, samples, count: n, labelled: samples.filter(([, , mask]) => mask !== 0).length, classImageCounts, shards };
  await writeFile(join(dst, 'manifest.json'), JSON.stringify(out));
  return dst;
}

export interface SmallData {
  source: string;
  target: string;
  targetVal: string;
}

/** 24 source, 24 target and 8 validation images of the quick benchmark (generated on first use). */
export async function smallData(dir: string): Promise<SmallData> {
  const shards = await prepareSynthetic(join(root, SYNTHETIC_QUICK_DATA.root), SYNTHETIC_QUICK_DATA.counts, () => {});
  return {
    source: await subset(shards.source, join(dir, 'source'), 24),
    target: await subset(shards.target, join(dir, 'target'), 24),
    targetVal: await subset(shards.targetVal, join(dir, 'target-val'), 8),
  };
}

/**
 * The small run: warm-up 8, contrastive 4, self-training 4 iterations, a checkpoint every 3 (2 kept),
 * one pseudo-label generation kept (so only pins keep older ones), a progress line per step, one
 * decode worker (24 small images need no more; less CPU taken from tests running alongside). The warm-up
 * keeps the paper's adversarial term (the synthetic preset has it off), so that resume also covers the
 * discriminator and its Adam state; self-training has the preset's source batch beside each target batch.
 */
export function smallRunArgs(data: SmallData, out: string, stepLog: string): string[] {
  const set = (kv: string) => ['--set', kv];
  return [
    join(root, 'pipelines/spcl.ts'),
    '--metrics-port',
    '0',
    '--backend',
    'wasm',
    '--out',
    out,
    '--step-log',
    stepLog,
    ...set(`data.source="${data.source}"`),
    ...set(`data.target="${data.target}"`),
    ...set(`data.targetVal="${data.targetVal}"`),
    ...set('warmup.iterations=8'),
    ...set('warmup.maxIter=80'),
    ...set('spcl.iterations=4'),
    ...set('spcl.maxIter=45'),
    ...set('ssl.iterations=4'),
    ...set('ssl.maxIter=45'),
    ...set('checkpoint.every=3'),
    ...set('checkpoint.keep=2'),
    ...set('pseudo.keep=1'),
    ...set('logEvery=1'),
    ...set('data.workers=1'),
    ...set('warmup.lambdaAdv=0.001'),
  ];
}

export interface Outcome {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
  /** stderr lines with their arrival time (ms since spawn). */
  lines: { ms: number; line: string }[];
  ms: number;
  /** When `signal` was sent (ms since spawn), if it was. */
  signalledAtMs: number | null;
}

export interface RunOptions {
  env?: Record<string, string>;
  /**
   * Send `signal` (default SIGKILL) `afterMs` after the spawn, or after the first stderr line matching
   * `afterLine` (unless the child ended before).
   */
  signal?: { afterMs: number; afterLine?: RegExp; signal?: NodeJS.Signals };
  timeoutMs?: number;
}

/** Runs `node ARGS` in the repository root; resolves when the child has exited. */
export function runNode(args: string[], opts: RunOptions = {}): Promise<Outcome> {
  const t0 = performance.now();
  const child = spawn(node, args, { cwd: root, env: { ...process.env, ...opts.env }, stdio: ['ignore', 'ignore', 'pipe'] });
  const lines: Outcome['lines'] = [];
  let stderr = '';
  let partial = '';
  const timers: NodeJS.Timeout[] = [];
  let signalledAtMs: number | null = null;
  let armed = false;
  const arm = () => {
    if (!opts.signal || armed) return;
    armed = true;
    timers.push(
      setTimeout(() => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        signalledAtMs = performance.now() - t0;
        child.kill(opts.signal!.signal ?? 'SIGKILL');
      }, opts.signal.afterMs),
    );
  };
  if (opts.signal && !opts.signal.afterLine) arm();
  child.stderr.on('data', (d: Buffer) => {
    const text = d.toString();
    stderr += text;
    partial += text;
    for (let i = partial.indexOf('\n'); i >= 0; i = partial.indexOf('\n')) {
      const line = partial.slice(0, i);
      lines.push({ ms: performance.now() - t0, line });
      partial = partial.slice(i + 1);
      if (opts.signal?.afterLine?.test(line)) arm();
    }
  });
  timers.push(setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 300_000));
  return new Promise((resolve) => {
    child.on('close', (code, signal) => {
      for (const t of timers) clearTimeout(t);
      resolve({ code, signal, stderr, lines, ms: performance.now() - t0, signalledAtMs });
    });
  });
}

export async function readJson<T>(path: string): Promise<T | null> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as T;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

export const latestOf = (out: string) => readJson<CheckpointPointer>(join(out, 'checkpoints/latest.json'));
export const currentOf = (out: string) => readJson<GenerationInfo>(join(out, 'pseudo-labels/current.json'));

/**
 * The run folder's committed state is whole: latest.json names a checkpoint whose header and tensor
 * data are all there (the header's offsets are checked against the file size) with the phase and
 * iteration the pointer says, and current.json names a generation that opens with exactly its count of
 * records. Returns what it found.
 */
export async function committedState(out: string): Promise<{ latest: CheckpointPointer | null; current: GenerationInfo | null }> {
  const latest = await latestOf(out);
  if (latest) {
    const file = join(out, 'checkpoints', latest.file);
    const header = readSafetensorsHeader(await readFile(file), file);
    const meta = (JSON.parse(header.metadata.spcl!) as { meta: { phase: string; iteration: number } }).meta;
    if (meta.phase !== latest.phase || meta.iteration !== latest.iteration) {
      throw new Error(`${file}: meta says ${meta.phase} ${meta.iteration}, latest.json says ${latest.phase} ${latest.iteration}`);
    }
  }
  const current = await currentOf(out);
  if (current) {
    const path = join(out, 'pseudo-labels', current.file);
    const db = open({ path, readOnly: true, compression: true, maxDbs: 2 });
    try {
      const n = db.openDB({ name: 'labels', encoding: 'msgpack' }).getKeysCount();
      if (n !== current.count) throw new Error(`${path}: ${n} records, current.json says ${current.count}`);
    } finally {
      await db.close();
    }
  }
  return { latest, current };
}

/** Files in `dir` whose names match `re` (none when `dir` is missing). */
export async function filesMatching(dir: string, re: RegExp): Promise<string[]> {
  try {
    return (await readdir(dir)).filter((f) => re.test(f)).sort();
  } catch {
    return [];
  }
}

export async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

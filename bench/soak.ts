/**
 * Soak test of continuous adaptation: `pipelines/spcl.ts --continuous` runs for --minutes while new
 * target images arrive in its watched folder (and, every few batches, through a separate
 * `pipelines/ingest.ts` run into the target shards), then gets SIGTERM. Samples the process's resident
 * memory (/proc, every few seconds), reads the run's own memory trace (RSS and tfjs tensors every
 * `logEvery` steps, report.json) and the size of its run folder, and prints whether memory and disk stayed
 * bounded: tfjs tensors constant, RSS drift over the second half below a bound, disk within a bound.
 *
 *   node bench/soak.ts --minutes 60            the documented 1-hour soak (README "Reliability")
 *   node bench/soak.ts --minutes 1.5 --json F  the reduced soak CI runs (test/reliability/soak.test.ts)
 *
 * It works on a copy of the embedded quick benchmark's target set (generated on first use), so the
 * arrivals never touch data/.
 */
import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { cp, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseCli } from '../src/cli.ts';
import { writeSyntheticArrivals } from '../src/data/synthetic.ts';
import { SYNTHETIC_QUICK_DATA } from '../src/recipe/config.ts';
import { prepareSynthetic, type RunReport } from '../src/recipe/run.ts';

const USAGE = `usage: node bench/soak.ts [options]
  --minutes M         how long the pipeline runs before SIGTERM (default 60)
  --arrival-every S   seconds between two batches of new target images (default 30)
  --arrivals N        images per batch (default 10); every 4th batch goes through pipelines/ingest.ts
  --work DIR          scratch folder (default: a new one under the system temp folder, removed at the end)
  --keep              keep the scratch folder (kept anyway when a bound fails; pipeline.log has the run's log)
  --json FILE         also write the summary as JSON
  -h, --help          this text
Prints the soak summary (steps, refreshes, arrivals, RSS, tensors, disk) and exits 1 if memory or disk grew.`;

const cli = parseCli('soak', USAGE, {
  minutes: { type: 'string', default: '60' },
  'arrival-every': { type: 'string', default: '30' },
  arrivals: { type: 'string', default: '10' },
  work: { type: 'string' },
  keep: { type: 'boolean', default: false },
  json: { type: 'string' },
});
const args = cli.values;
const num = (name: string, text: string, min: number): number => {
  const v = Number(text);
  if (!(Number.isFinite(v) && v >= min)) cli.fail(`--${name} ${JSON.stringify(text)}: expected a number >= ${min}`);
  return v;
};
const minutes = num('minutes', args.minutes, 0.2);
const arrivalEvery = num('arrival-every', args['arrival-every'], 1);
const perBatch = Math.round(num('arrivals', args.arrivals, 1));

/** Anonymous RSS drift allowed over the second half of the soak (slope of a least-squares line), MiB per hour. */
const RSS_DRIFT_MIB_PER_HOUR = 64;
/** ...judged only on soaks at least this long (shorter ones are dominated by the warm-up). */
const DRIFT_MIN_SECONDS = 20 * 60;
/** Peak RSS of the whole process (small model, quick sizes, 2 decode workers). */
const RSS_PEAK_MIB = 1536;
/** The run folder (checkpoints + pseudo-label generations) may peak at most this much higher in the second half than in the first. */
const DISK_GROWTH_FACTOR = 1.5;

const root = new URL('../', import.meta.url).pathname;
const log = (line: string) => process.stderr.write(`soak: ${line}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function du(path: string): Promise<number> {
  let total = 0;
  let entries;
  try {
    entries = await readdir(path, { withFileTypes: true });
  } catch {
    return 0;
  }
  for (const e of entries) {
    const p = join(path, e.name);
    if (e.isDirectory()) total += await du(p);
    else total += (await stat(p).catch(() => ({ size: 0 }))).size;
  }
  return total;
}

/**
 * Resident memory of a process (Linux /proc): all of it, the anonymous part (heaps, wasm memory, buffers:
 * what a leak grows) and the file-backed part (mapped files: LMDB shards and generations, code).
 */
async function rssOf(pid: number): Promise<{ rss: number; anon: number; file: number; hwm: number } | null> {
  try {
    const text = await readFile(`/proc/${pid}/status`, 'utf8');
    const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN) * 1024;
    return { rss: kb('VmRSS'), anon: kb('RssAnon'), file: kb('RssFile') + kb('RssShmem'), hwm: kb('VmHWM') };
  } catch {
    return null;
  }
}

/** Least-squares slope of y over x. */
function slope(xs: number[], ys: number[]): number {
  const n = xs.length;
  if (n < 2) return 0;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) {
    num += (xs[i]! - mx) * (ys[i]! - my);
    den += (xs[i]! - mx) ** 2;
  }
  return den > 0 ? num / den : 0;
}

const MiB = 1024 * 1024;

async function main(): Promise<number> {
  const quick = await prepareSynthetic(join(root, SYNTHETIC_QUICK_DATA.root), SYNTHETIC_QUICK_DATA.counts, log);
  const work = args.work ?? (await mkdtemp(join(tmpdir(), 'spcl-soak-')));
  await mkdir(work, { recursive: true });
  const target = join(work, 'target');
  const watch = join(work, 'watch');
  const out = join(work, 'run');
  await rm(target, { recursive: true, force: true });
  await rm(out, { recursive: true, force: true });
  await rm(watch, { recursive: true, force: true });
  await cp(quick.target, target, { recursive: true });
  await mkdir(watch, { recursive: true });

  const pipelineArgs = [
    join(root, 'pipelines/spcl.ts'), '--quick', '--phase', 'continuous', '--continuous', '--out', out, '--metrics-port', '0',
    '--set', `data.target=${JSON.stringify(target)}`, '--set', `continuous.watch=${JSON.stringify(watch)}`,
    '--set', 'continuous.pollSeconds=5', '--set', 'continuous.settleSeconds=1', '--set', 'continuous.refreshEvery=200',
    '--set', 'continuous.refreshNewImages=20', '--set', 'continuous.evalEvery=200', '--set', 'checkpoint.every=100', '--set', 'logEvery=10',
  ];
  log(`node ${pipelineArgs.join(' ')}`);
  const t0 = performance.now();
  const child = spawn(process.execPath, pipelineArgs, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  const logFile = createWriteStream(join(work, 'pipeline.log'));
  child.stderr.on('data', (d: Buffer) => {
    logFile.write(d);
    stderr += d.toString();
    if (stderr.length > 1 << 20) stderr = stderr.slice(-(1 << 19));
  });
  child.stdout.resume();
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));

  const rss: { t: number; rss: number; anon: number; file: number }[] = [];
  const disk: { t: number; bytes: number }[] = [];
  let hwm = 0;
  let fed = 0;
  let viaIngest = 0;
  let batch = 0;
  const end = t0 + minutes * 60_000;
  let nextArrival = t0 + arrivalEvery * 1000;
  let running = true;
  void exited.then(() => { running = false; });
  while (running && performance.now() < end) {
    const now = performance.now();
    const r = await rssOf(child.pid!);
    if (r) {
      rss.push({ t: (now - t0) / 1000, rss: r.rss, anon: r.anon, file: r.file });
      hwm = Math.max(hwm, r.hwm);
    }
    disk.push({ t: (now - t0) / 1000, bytes: await du(out) });
    if (now >= nextArrival) {
      batch++;
      if (batch % 4 === 0) {
        // through another process, as a user's ingest job would append them
        const raw = join(work, `ingest-${batch}`);
        await writeSyntheticArrivals(raw, { from: fed, count: perBatch, city: `ingest${batch}` });
        const ing = spawn(process.execPath, [join(root, 'pipelines/ingest.ts'), '--dataset', 'cityscapes', '--root', raw, '--labels', 'none',
          '--out', target, '--threads', '1', '--metrics-port', '0'], { cwd: root, stdio: 'ignore' });
        const code = await new Promise<number | null>((resolve) => ing.on('exit', resolve));
        if (code !== 0) throw new Error(`ingest of ${raw} exited ${code}`);
        viaIngest += perBatch;
      } else {
        await writeSyntheticArrivals(watch, { from: fed, count: perBatch });
      }
      fed += perBatch;
      nextArrival += arrivalEvery * 1000;
    }
    await sleep(Math.min(5000, Math.max(100, end - performance.now())));
  }
  if (!running) throw new Error(`the pipeline exited early (code ${await exited}):\n${stderr.slice(-3000)}`);
  const stopAt = performance.now();
  child.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const code = await Promise.race([exited, new Promise<'timeout'>((resolve) => { timer = setTimeout(() => resolve('timeout'), 120_000); })]);
  clearTimeout(timer);
  const shutdownSeconds = (performance.now() - stopAt) / 1000;
  if (code === 'timeout') {
    child.kill('SIGKILL');
    throw new Error('the pipeline did not stop within 120 s of SIGTERM');
  }
  const report = JSON.parse(await readFile(join(out, 'report.json'), 'utf8')) as RunReport;
  const c = report.continuous!;
  const seconds = (stopAt - t0) / 1000;
  const half = rss.filter((s) => s.t >= seconds / 2);
  // the bound is on anonymous memory: file-backed pages are the LMDB data the run reads, which grows with
  // the target set by design and which the kernel reclaims under pressure
  const driftPerHour = slope(half.map((s) => s.t), half.map((s) => s.anon)) * 3600;
  const fileDriftPerHour = slope(half.map((s) => s.t), half.map((s) => s.file)) * 3600;
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
  const quarter = Math.max(1, Math.floor(rss.length / 4));
  const tensors = c.memory.map((m) => m.tensors);
  const generations = (await readdir(join(out, 'pseudo-labels'))).filter((f) => /^gen-\d+\.lmdb$/.test(f)).length;
  const checkpoints = (await readdir(join(out, 'checkpoints'))).filter((f) => f.endsWith('.safetensors')).length;
  // disk: checkpoints and generations are pruned, so the second half peaks no higher than the first
  const firstHalfDisk = Math.max(0, ...disk.filter((d) => d.t < seconds / 2).map((d) => d.bytes));
  const peakDisk = Math.max(0, ...disk.map((d) => d.bytes));
  const summary = {
    minutes: seconds / 60,
    steps: c.iterations,
    stepsPerSecond: c.iterations / seconds,
    refreshes: c.refreshes,
    refreshTriggers: c.refreshTriggers,
    imagesFed: fed,
    imagesFedViaIngest: viaIngest,
    targetImagesAtEnd: c.targetImages,
    generationImagesAtEnd: c.generationImages,
    watchIngested: c.ingested,
    rssMiB: { firstQuarterMedian: median(rss.slice(0, quarter).map((s) => s.rss)) / MiB, lastQuarterMedian: median(rss.slice(-quarter).map((s) => s.rss)) / MiB, peak: hwm / MiB },
    anonMiB: { firstQuarterMedian: median(rss.slice(0, quarter).map((s) => s.anon)) / MiB, lastQuarterMedian: median(rss.slice(-quarter).map((s) => s.anon)) / MiB },
    fileMiB: { firstQuarterMedian: median(rss.slice(0, quarter).map((s) => s.file)) / MiB, lastQuarterMedian: median(rss.slice(-quarter).map((s) => s.file)) / MiB },
    rssDriftSecondHalfMiBPerHour: driftPerHour / MiB,
    fileDriftSecondHalfMiBPerHour: fileDriftPerHour / MiB,
    rssSamples: rss.length,
    tensors: { min: Math.min(...tensors), max: Math.max(...tensors), samples: tensors.length },
    tensorsAtEnd: report.tensorsAtEnd,
    diskMiB: { firstHalfPeak: firstHalfDisk / MiB, peak: peakDisk / MiB, end: (await du(out)) / MiB },
    generationsOnDisk: generations,
    checkpointsOnDisk: checkpoints,
    shutdownSeconds,
    exitCode: code,
    stopped: report.stopped,
  };
  const bounded = {
    tensorsFlat: summary.tensors.min === summary.tensors.max,
    // a short soak is all warm-up (allocator and wasm high-water marks): drift is judged from 20 minutes on
    rssDrift: seconds >= DRIFT_MIN_SECONDS ? summary.rssDriftSecondHalfMiBPerHour < RSS_DRIFT_MIB_PER_HOUR : null,
    rssPeak: summary.rssMiB.peak < RSS_PEAK_MIB,
    disk: peakDisk <= DISK_GROWTH_FACTOR * Math.max(firstHalfDisk, 1),
    exitedCleanly: code === 0 && report.stopped,
  };
  const thin = <T,>(xs: T[], n: number) => xs.filter((_, i) => i % Math.max(1, Math.ceil(xs.length / n)) === 0);
  const result = { ...summary, rssSeries: thin(rss, 400).map((x) => [Math.round(x.t), Math.round(x.rss / MiB), Math.round(x.anon / MiB), Math.round(x.file / MiB)]), memoryTrace: thin(c.memory, 400), bounds: { rssDriftMiBPerHour: RSS_DRIFT_MIB_PER_HOUR, driftMinSeconds: DRIFT_MIN_SECONDS, rssPeakMiB: RSS_PEAK_MIB, diskGrowthFactor: DISK_GROWTH_FACTOR }, bounded };
  if (args.json) await writeFile(args.json, `${JSON.stringify(result, null, 1)}\n`);
  const f = (v: number) => v.toFixed(1);
  console.log([
    `soak: ${f(summary.minutes)} min, ${summary.steps} steps (${summary.stepsPerSecond.toFixed(2)}/s), ${summary.refreshes} refreshes ` +
      `(start ${c.refreshTriggers.start}, steps ${c.refreshTriggers.steps}, arrivals ${c.refreshTriggers.arrivals})`,
    `arrivals: ${fed} images fed (${viaIngest} through pipelines/ingest.ts), ${c.ingested} ingested from the watched folder; ` +
      `${c.targetImages} target images at the end, ${c.generationImages} in the last generation`,
    `RSS: first-quarter median ${f(summary.rssMiB.firstQuarterMedian)} MiB, last-quarter median ${f(summary.rssMiB.lastQuarterMedian)} MiB, peak ${f(summary.rssMiB.peak)} MiB`,
    `  anonymous: ${f(summary.anonMiB.firstQuarterMedian)} -> ${f(summary.anonMiB.lastQuarterMedian)} MiB, drift over the second half ${f(summary.rssDriftSecondHalfMiBPerHour)} MiB/h (bound ${RSS_DRIFT_MIB_PER_HOUR}, judged from 20 min on)`,
    `  file-backed (LMDB data read): ${f(summary.fileMiB.firstQuarterMedian)} -> ${f(summary.fileMiB.lastQuarterMedian)} MiB, drift ${f(summary.fileDriftSecondHalfMiBPerHour)} MiB/h`,
    `tfjs tensors: ${summary.tensors.min}..${summary.tensors.max} over ${summary.tensors.samples} samples`,
    `disk (run folder): peak ${f(summary.diskMiB.firstHalfPeak)} MiB in the first half, ${f(summary.diskMiB.peak)} overall, ${f(summary.diskMiB.end)} at the end; ` +
      `${generations} generations, ${checkpoints} checkpoints on disk`,
    `SIGTERM -> exit ${code} in ${summary.shutdownSeconds.toFixed(1)} s`,
    `bounded: ${Object.entries(bounded).map(([k, v]) => `${k} ${v === null ? 'not judged (under 20 min)' : v ? 'yes' : 'NO'}`).join(', ')}`,
  ].join('\n'));
  logFile.end();
  const ok = Object.values(bounded).every((v) => v !== false);
  // a failed soak keeps its folder (pipeline.log, the run) for a look
  if (ok && !args.keep && !args.work) await rm(work, { recursive: true, force: true });
  else console.log(`kept ${work} (pipeline.log has the run's log)`);
  return ok ? 0 : 1;
}

try {
  process.exitCode = await main();
} catch (err) {
  log((err as Error).message);
  process.exitCode = 2;
}

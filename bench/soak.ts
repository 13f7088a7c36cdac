/**
 * Soak test of continuous adaptation: `pipelines/spcl.ts --continuous` runs for --minutes while new
 * target images arrive in its watched folder (and, every few batches, through a separate
 * `pipelines/ingest.ts` run into the target shards), then gets SIGTERM. Samples the process's resident
 * memory (/proc, every few seconds), reads the run's own memory trace (RSS and tfjs tensors every
 * `logEvery` steps, report.json) and the size of its run folder, and prints whether memory and disk stayed
 * bounded: tfjs tensors constant, RSS drift over the second half below a bound, disk within a bound.
 *
 *   node bench/soak.ts --minutes 60                           the documented 1-hour soak (README "Reliability")
 *   node bench/soak.ts --minutes 1.7 --from scratch --json F  the reduced soak CI runs (test/reliability/soak.test.ts)
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
import { writeSyntheticArrivals } from '../src/synthetic/render.ts';
import { SYNTHETIC_QUICK_DATA } from '../src/recipe/config.ts';
import type { RunReport } from '../src/recipe/run.ts';
import { prepareSynthetic } from '../src/synthetic/benchmark.ts';
import type { ContinuousSummary } from '../src/methods/continuous.ts';

const USAGE = `usage: node bench/soak.ts [options]
  --minutes M         how long the pipeline runs before SIGTERM (default 60)
  --arrival-every S   seconds between two batches of new target images (default 30)
  --arrivals N        images per batch (default 10); every 4th batch goes through pipelines/ingest.ts
  --drain S           no new arrivals in the last S seconds, so that the last ones can be ingested before
                      SIGTERM (default 30; the summary counts what reached the manifest)
  --from WHAT         recipe: the quick recipe (warm-up, prototypes, contrastive, self-training) runs first and
                      continuous adaptation goes on from its model (default); scratch: continuous adaptation
                      starts from the initial weights (short soaks: all the time goes to the continuous phase)
  --set KEY=VALUE     one more override for the pipeline (repeatable), e.g. --set continuous.sourceWeight=1
  --work DIR          scratch folder (default: a new one under the system temp folder, removed at the end)
  --keep              keep the scratch folder (kept anyway when a bound fails; pipeline.log has the run's log)
  --json FILE         also write the summary as JSON
  -h, --help          this text
Prints the soak summary (steps, refreshes, arrivals, RSS, tensors, disk) and exits 1 if memory or disk grew.`;

const cli = parseCli('soak', USAGE, {
  minutes: { type: 'string', default: '60' },
  'arrival-every': { type: 'string', default: '30' },
  arrivals: { type: 'string', default: '10' },
  drain: { type: 'string', default: '30' },
  work: { type: 'string' },
  from: { type: 'string', default: 'recipe' },
  set: { type: 'string', multiple: true, default: [] },
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
const drain = num('drain', args.drain, 0);
if (args.from !== 'recipe' && args.from !== 'scratch') cli.fail(`--from ${JSON.stringify(args.from)}: expected 'recipe' or 'scratch'`);

/** Anonymous RSS drift allowed over the second half of the soak (slope of a least-squares line), MiB per hour. */
const RSS_DRIFT_MIB_PER_HOUR = 64;
/** ...judged only on soaks at least this long (shorter ones are dominated by the warm-up). */
const DRIFT_MIN_SECONDS = 20 * 60;
/** Peak RSS of the whole process (small model, quick sizes, 2 decode workers). */
const RSS_PEAK_MIB = 1536;
/**
 * Disk: the run folder holds checkpoints and pseudo-label generations, pruned by `checkpoint.keep` and
 * `pseudo.keep` (the soak sets both). A generation grows with the target set by design, so the bound is on
 * what accumulates, checked at every sample: checkpoints at most keep + 1 (the new one is written before
 * the oldest goes) + those a pointer pins (best-<phase>.json: one per phase); generations at most
 * pseudo.keep + 1 (one in the writing) + one per checkpoint on disk (a checkpoint pins its generation);
 * other files (pointers, current.json, report.json, a temporary in the writing) at most OTHER_FILES.
 */
const CHECKPOINT_KEEP = 2;
const PSEUDO_KEEP = 2;
const OTHER_FILES = 12;
const diskWithinBounds = (d: DiskSample) =>
  d.checkpoints <= CHECKPOINT_KEEP + 1 + d.pointers && d.generations <= PSEUDO_KEEP + 1 + d.checkpoints && d.other <= OTHER_FILES;

const root = new URL('../', import.meta.url).pathname;
const log = (line: string) => process.stderr.write(`soak: ${line}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface DiskSample {
  bytes: number;
  checkpoints: number;
  generations: number;
  pointers: number;
  other: number;
}

/** Size of a folder and what it holds: checkpoint files, pseudo-label generations, anything else. */
async function diskOf(
  path: string,
  into: DiskSample = { bytes: 0, checkpoints: 0, generations: 0, pointers: 0, other: 0 },
): Promise<DiskSample> {
  let entries;
  try {
    entries = await readdir(path, { withFileTypes: true });
  } catch {
    return into; // not there (yet), or pruned while listing
  }
  for (const e of entries) {
    const p = join(path, e.name);
    if (e.isDirectory()) {
      await diskOf(p, into);
      continue;
    }
    into.bytes += (await stat(p).catch(() => ({ size: 0 }))).size;
    if (e.name.endsWith('.safetensors')) into.checkpoints++;
    else if (/^gen-\d+\.lmdb$/.test(e.name)) into.generations++;
    else if (!/^gen-\d+\.lmdb-lock$/.test(e.name)) {
      into.other++;
      if (/^best-.*\.json$/.test(e.name)) into.pointers++;
    }
  }
  return into;
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
    join(root, 'pipelines/spcl.ts'),
    '--quick',
    '--phase',
    'continuous',
    '--continuous',
    '--out',
    out,
    '--metrics-port',
    '0',
    '--set',
    `data.target=${JSON.stringify(target)}`,
    '--set',
    `continuous.watch=${JSON.stringify(watch)}`,
    '--set',
    'continuous.pollSeconds=5',
    '--set',
    'continuous.settleSeconds=1',
    '--set',
    'continuous.refreshEvery=200',
    '--set',
    'continuous.refreshNewImages=20',
    '--set',
    'continuous.evalEvery=200',
    '--set',
    'checkpoint.every=100',
    '--set',
    'logEvery=10',
    '--set',
    `checkpoint.keep=${CHECKPOINT_KEEP}`,
    '--set',
    `pseudo.keep=${PSEUDO_KEEP}`,
  ];
  for (const kv of args.set) pipelineArgs.push('--set', kv);
  // from the recipe: the same run does warm-up, prototypes, contrastive and self-training first
  if (args.from === 'recipe') pipelineArgs.splice(pipelineArgs.indexOf('--phase'), 2);
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
  const disk: ({ t: number } & DiskSample)[] = [];
  let hwm = 0;
  let fed = 0;
  let viaIngest = 0;
  let batch = 0;
  const end = t0 + minutes * 60_000;
  let nextArrival = t0 + arrivalEvery * 1000;
  let running = true;
  void exited.then(() => {
    running = false;
  });
  while (running && performance.now() < end) {
    const now = performance.now();
    const r = await rssOf(child.pid!);
    if (r) {
      rss.push({ t: (now - t0) / 1000, rss: r.rss, anon: r.anon, file: r.file });
      hwm = Math.max(hwm, r.hwm);
    }
    disk.push({ t: (now - t0) / 1000, ...(await diskOf(out)) });
    if (now >= nextArrival && now < end - drain * 1000) {
      batch++;
      if (batch % 4 === 0) {
        // through another process, as a user's ingest job would append them
        const raw = join(work, `ingest-${batch}`);
        await writeSyntheticArrivals(raw, { from: fed, count: perBatch, city: `ingest${batch}` });
        const ing = spawn(
          process.execPath,
          [
            join(root, 'pipelines/ingest.ts'),
            '--dataset',
            'cityscapes',
            '--root',
            raw,
            '--labels',
            'none',
            '--out',
            target,
            '--threads',
            '1',
            '--metrics-port',
            '0',
          ],
          { cwd: root, stdio: 'ignore' },
        );
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
  const code = await Promise.race([
    exited,
    new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), 120_000);
    }),
  ]);
  clearTimeout(timer);
  const shutdownSeconds = (performance.now() - stopAt) / 1000;
  if (code === 'timeout') {
    child.kill('SIGKILL');
    throw new Error('the pipeline did not stop within 120 s of SIGTERM');
  }
  // the whole log on disk before it is read (its stream may still hold the last lines)
  if (!child.stderr.readableEnded) await new Promise((resolve) => child.stderr.once('end', resolve));
  await new Promise((resolve) => logFile.end(resolve));
  const report = JSON.parse(await readFile(join(out, 'report.json'), 'utf8')) as RunReport;
  const c = report.continuous as ContinuousSummary;
  const seconds = (stopAt - t0) / 1000;
  const half = rss.filter((s) => s.t >= seconds / 2);
  // the bound is on anonymous memory: file-backed pages are the LMDB data the run reads, which grows with
  // the target set by design and which the kernel reclaims under pressure
  const driftPerHour =
    slope(
      half.map((s) => s.t),
      half.map((s) => s.anon),
    ) * 3600;
  const fileDriftPerHour =
    slope(
      half.map((s) => s.t),
      half.map((s) => s.file),
    ) * 3600;
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
  const quarter = Math.max(1, Math.floor(rss.length / 4));
  const tensors = c.memory.map((m) => m.tensors);
  // what the run left: the same listing as every sample's
  const atEnd = await diskOf(out);
  const { generations, checkpoints } = atEnd;
  const peakDisk = Math.max(0, ...disk.map((d) => d.bytes));
  const most = {
    checkpoints: Math.max(0, ...disk.map((d) => d.checkpoints)),
    generations: Math.max(0, ...disk.map((d) => d.generations)),
    other: Math.max(0, ...disk.map((d) => d.other)),
  };
  const overBounds = disk.filter((d) => !diskWithinBounds(d));
  const current = JSON.parse(await readFile(join(out, 'pseudo-labels', 'current.json'), 'utf8')) as { file: string; count: number };
  const lastGeneration = await stat(join(out, 'pseudo-labels', current.file));
  // the model's quality over the run: every evaluation the pipeline logged ("<phase> <iteration>: target val mIoU <x>")
  // (percent), from the whole log file: the in-memory tail is cut on long runs
  const logText = await readFile(join(work, 'pipeline.log'), 'utf8');
  const evals = [...logText.matchAll(/^continuous (\d+): target val mIoU ([\d.]+)/gm)].map((m) => ({
    iteration: Number(m[1]),
    miou: Number(m[2]),
  }));
  const recipeMiou = /^ssl: target val mIoU ([\d.]+)/m.exec(logText);
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
    /** Samples skipped by stage and reason (report.json): arrivals that could not be read show up here. */
    skipped: report.skipped,
    rssMiB: {
      firstQuarterMedian: median(rss.slice(0, quarter).map((s) => s.rss)) / MiB,
      lastQuarterMedian: median(rss.slice(-quarter).map((s) => s.rss)) / MiB,
      peak: hwm / MiB,
    },
    anonMiB: {
      firstQuarterMedian: median(rss.slice(0, quarter).map((s) => s.anon)) / MiB,
      lastQuarterMedian: median(rss.slice(-quarter).map((s) => s.anon)) / MiB,
    },
    fileMiB: {
      firstQuarterMedian: median(rss.slice(0, quarter).map((s) => s.file)) / MiB,
      lastQuarterMedian: median(rss.slice(-quarter).map((s) => s.file)) / MiB,
    },
    rssDriftSecondHalfMiBPerHour: driftPerHour / MiB,
    fileDriftSecondHalfMiBPerHour: fileDriftPerHour / MiB,
    rssSamples: rss.length,
    tensors: { min: Math.min(...tensors), max: Math.max(...tensors), samples: tensors.length },
    tensorsAtEnd: report.tensorsAtEnd,
    diskMiB: {
      firstQuarterMedian: median(disk.slice(0, Math.max(1, Math.floor(disk.length / 4))).map((d) => d.bytes)) / MiB,
      peak: peakDisk / MiB,
      end: atEnd.bytes / MiB,
    },
    generationsOnDisk: generations,
    checkpointsOnDisk: checkpoints,
    mostOnDisk: most,
    diskSamplesOverBounds: overBounds.slice(0, 20),
    lastGeneration: { images: current.count, MiB: lastGeneration.size / MiB, KiBPerImage: lastGeneration.size / 1024 / current.count },
    from: args.from,
    recipeMiou: recipeMiou ? Number(recipeMiou[1]) : null,
    evals,
    shutdownSeconds,
    exitCode: code,
    stopped: report.stopped,
  };
  const bounded = {
    tensorsFlat: summary.tensors.min === summary.tensors.max,
    // a short soak is all warm-up (allocator and wasm high-water marks): drift is judged from 20 minutes on
    rssDrift: seconds >= DRIFT_MIN_SECONDS ? summary.rssDriftSecondHalfMiBPerHour < RSS_DRIFT_MIB_PER_HOUR : null,
    rssPeak: summary.rssMiB.peak < RSS_PEAK_MIB,
    disk: overBounds.length === 0,
    exitedCleanly: code === 0 && report.stopped,
  };
  const thin = <T>(xs: T[], n: number) => xs.filter((_, i) => i % Math.max(1, Math.ceil(xs.length / n)) === 0);
  const result = {
    ...summary,
    rssSeries: thin(rss, 400).map((x) => [Math.round(x.t), Math.round(x.rss / MiB), Math.round(x.anon / MiB), Math.round(x.file / MiB)]),
    memoryTrace: thin(c.memory, 400),
    bounds: {
      rssDriftMiBPerHour: RSS_DRIFT_MIB_PER_HOUR,
      driftMinSeconds: DRIFT_MIN_SECONDS,
      rssPeakMiB: RSS_PEAK_MIB,
      checkpoints: `${CHECKPOINT_KEEP + 1} + pinned by best-*.json`,
      generations: `${PSEUDO_KEEP + 1} + checkpoints on disk`,
      otherFiles: OTHER_FILES,
    },
    bounded,
  };
  if (args.json) await writeFile(args.json, `${JSON.stringify(result, null, 1)}\n`);
  const f = (v: number) => v.toFixed(1);
  console.log(
    [
      `soak: ${f(summary.minutes)} min, ${summary.steps} steps (${summary.stepsPerSecond.toFixed(2)}/s), ${summary.refreshes} refreshes ` +
        `(start ${c.refreshTriggers.start}, steps ${c.refreshTriggers.steps}, arrivals ${c.refreshTriggers.arrivals})`,
      `arrivals: ${fed} images fed (${viaIngest} through pipelines/ingest.ts), ${c.ingested} ingested from the watched folder; ` +
        `${c.targetImages} target images at the end, ${c.generationImages} in the last generation; ` +
        `samples skipped: ${JSON.stringify(report.skipped)}`,
      `RSS: first-quarter median ${f(summary.rssMiB.firstQuarterMedian)} MiB, last-quarter median ${f(summary.rssMiB.lastQuarterMedian)} MiB, peak ${f(summary.rssMiB.peak)} MiB`,
      `  anonymous: ${f(summary.anonMiB.firstQuarterMedian)} -> ${f(summary.anonMiB.lastQuarterMedian)} MiB, drift over the second half ${f(summary.rssDriftSecondHalfMiBPerHour)} MiB/h (bound ${RSS_DRIFT_MIB_PER_HOUR}, judged from 20 min on)`,
      `  file-backed (LMDB data read): ${f(summary.fileMiB.firstQuarterMedian)} -> ${f(summary.fileMiB.lastQuarterMedian)} MiB, drift ${f(summary.fileDriftSecondHalfMiBPerHour)} MiB/h`,
      `tfjs tensors: ${summary.tensors.min}..${summary.tensors.max} over ${summary.tensors.samples} samples`,
      `disk (run folder): first-quarter median ${f(summary.diskMiB.firstQuarterMedian)} MiB, peak ${f(summary.diskMiB.peak)}, ${f(summary.diskMiB.end)} at the end; ` +
        `${generations} generations, ${checkpoints} checkpoints at the end, at most ${most.generations} and ${most.checkpoints} ` +
        `(bounds per sample: ${PSEUDO_KEEP + 1} + checkpoints, ${CHECKPOINT_KEEP + 1} + pinned; ${overBounds.length} of ${disk.length} samples over); ` +
        `last generation ${current.count} images, ${(lastGeneration.size / 1024 / current.count).toFixed(1)} KiB per image`,
      `target val mIoU (%): ${summary.recipeMiou === null ? 'no recipe' : `after the recipe ${summary.recipeMiou}`}; continuous ${evals.length} evaluations` +
        (evals.length
          ? `: first ${evals[0]!.miou} (step ${evals[0]!.iteration}), last ${evals.at(-1)!.miou} (step ${evals.at(-1)!.iteration}), ` +
            `min ${Math.min(...evals.map((e) => e.miou))}, max ${Math.max(...evals.map((e) => e.miou))}`
          : ''),
      `SIGTERM -> exit ${code} in ${summary.shutdownSeconds.toFixed(1)} s`,
      `bounded: ${Object.entries(bounded)
        .map(([k, v]) => `${k} ${v === null ? 'not judged (under 20 min)' : v ? 'yes' : 'NO'}`)
        .join(', ')}`,
    ].join('\n'),
  );
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

/**
 * The README's results table: the SPCL recipe and the compute-matched source-only baseline (as many
 * source steps as the recipe's warm-up + spcl + ssl, from the same start) for several seeds; prints mean ±
 * std of target-val mIoU per phase, the per-seed figures, and whether each adaptation claim holds.
 *
 *   node bench/synthetic-results.ts [--seeds 0,1,2] [--out runs/results] [--jobs 1] [--set KEY=VALUE ...]
 * `--collect` only reads existing <out>/spcl-<seed>/report.json and <out>/source-only-<seed>/report.json;
 * `--only spcl` (or `source-only`) reruns one side and reads the other's reports as they are.
 * `--jobs 2` runs two pipelines at once (results are the same: every run is seeded; only time changes).
 * `--methods` adds the mean-teacher method (pipelines/mean-teacher.ts) and mean teacher + SPCL's contrastive
 * term beside them, each a row with its CPU minutes (the whole pipeline: its warm-up included).
 * Each source-only model is also evaluated after AdaBN (BN running statistics re-estimated on the
 * unlabelled target training images: `pipelines/evaluate.ts --adapt-bn`), the cheapest adaptation and
 * so the row an adaptation method has to beat; it is written to source-only-<seed>/adabn.json.
 */
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseCli } from '../src/cli.ts';
import { SYNTHETIC_DATA } from '../src/recipe/config.ts';
import type { RunReport } from '../src/recipe/run.ts';
import { prepareSynthetic } from '../src/synthetic/benchmark.ts';

const USAGE = `usage: node bench/synthetic-results.ts [options]
  --seeds LIST    seeds, comma-separated (default 0,1,2)
  --out DIR       where the runs go (default runs/results, runs/results-night): spcl-<seed>/, source-only-<seed>/
  --jobs N        pipelines run at once (default 1; figures do not depend on it, times do)
  --set KEY=VALUE config override passed to both pipelines, repeatable (e.g. --set data.target=...)
  --domain NAME   target (default: the embedded benchmark) | night: the same source, a second target domain
                  the default benchmark never renders (data/synthetic-night; the recipe itself unchanged)
  --methods LIST  sides to run and tabulate, comma-separated, from spcl, source-only, mean-teacher,
                  mean-teacher-cl (+ SPCL's contrastive term), mean-teacher-class (labels only above
                  SPCL's per-class thresholds); default spcl,source-only
  --only NAME     run only this side (one of --methods); the others' reports are read as they are
  --collect       only read the reports already in --out and print the table
  -h, --help      this text`;

const cli = parseCli('synthetic-results', USAGE, {
  seeds: { type: 'string', default: '0,1,2' },
  out: { type: 'string', default: 'runs/results' },
  jobs: { type: 'string', default: '1' },
  set: { type: 'string', multiple: true, default: [] },
  collect: { type: 'boolean', default: false },
  domain: { type: 'string', default: 'target' },
  only: { type: 'string' },
  methods: { type: 'string', default: 'spcl,source-only' },
});
const args = cli.values;
const seeds = args.seeds.split(',').map(Number);
if (!seeds.every((s) => Number.isInteger(s) && s >= 0)) cli.fail(`--seeds must be integers >= 0 separated by commas, got '${args.seeds}'`);
const jobs = Number(args.jobs);
if (!Number.isInteger(jobs) || jobs < 1) cli.fail(`--jobs must be an integer >= 1, got '${args.jobs}'`);
const root = new URL('../', import.meta.url).pathname;
/** The sides: pipeline, extra arguments, and the row its final phase makes (null: a row per evaluated phase). */
const SIDES: Record<string, { script: string; args: string[]; row: string | null }> = {
  spcl: { script: 'spcl.ts', args: [], row: null },
  'source-only': { script: 'source-only.ts', args: [], row: 'source-only' },
  'mean-teacher': { script: 'mean-teacher.ts', args: [], row: 'mean-teacher' },
  'mean-teacher-cl': {
    script: 'mean-teacher.ts',
    args: ['--set', 'methods.mean-teacher.contrastWeight=1'],
    row: 'mean-teacher + contrastive',
  },
  'mean-teacher-class': {
    script: 'mean-teacher.ts',
    args: ['--set', 'methods.mean-teacher.confidence="class"'],
    row: "mean-teacher, SPCL's class thresholds",
  },
};
const sides = args.methods.split(',');
const unknownSide = sides.find((m) => !(m in SIDES));
if (unknownSide) cli.fail(`--methods must name sides among ${Object.keys(SIDES).join(', ')}, got '${unknownSide}'`);
if (args.only !== undefined && !sides.includes(args.only)) cli.fail(`--only must be one of ${sides.join(', ')}, got '${args.only}'`);
if (args.domain !== 'target' && args.domain !== 'night') cli.fail(`--domain must be target or night, got '${args.domain}'`);
if (args.domain === 'night' && args.out === 'runs/results') args.out = 'runs/results-night';
if (args.domain === 'night' && !args.collect) {
  const shards = await prepareSynthetic(join(root, 'data/synthetic-night'), SYNTHETIC_DATA.counts, (l) => console.error(l), {
    targetDomain: 'night',
  });
  args.set.unshift(...Object.entries(shards).map(([k, v]) => `data.${k}=${JSON.stringify(v)}`));
}

/** Runs one pipeline to completion; its progress lines go to stderr prefixed with the run's name. */
function runPipeline(side: string, dir: string, seed: number): Promise<void> {
  return run(SIDES[side]!.script, dir, [
    ...SIDES[side]!.args,
    '--seed',
    String(seed),
    '--out',
    join(args.out, dir),
    '--metrics-port',
    '0',
    ...args.set.flatMap((s) => ['--set', s]),
  ]);
}

/** AdaBN on the source-only run's last checkpoint, its own data paths: <out>/source-only-<seed>/adabn.json. */
async function adaBn(seed: number): Promise<void> {
  const dir = join(args.out, `source-only-${seed}`);
  const report = JSON.parse(await readFile(join(dir, 'report.json'), 'utf8')) as RunReport & {
    config: { data: { target: string; targetVal: string } };
  };
  const latest = JSON.parse(await readFile(join(dir, 'checkpoints', 'latest.json'), 'utf8')) as { file: string };
  await run('evaluate.ts', `adabn-${seed}`, [
    '--checkpoint',
    join(dir, 'checkpoints', latest.file),
    '--data',
    report.config.data.targetVal,
    '--adapt-bn',
    report.config.data.target,
    '--ccd',
    '0',
    '--metrics-port',
    '0',
    '--out',
    join(dir, 'adabn.json'),
  ]);
}

function run(script: string, dir: string, rest: string[]): Promise<void> {
  const t0 = performance.now();
  const argv = [join(root, 'pipelines', script), ...rest];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    const prefix = (chunk: Buffer) =>
      chunk
        .toString()
        .split('\n')
        .filter(Boolean)
        .map((l) => `[${dir}] ${l}\n`)
        .join('');
    child.stdout.on('data', (c: Buffer) => process.stderr.write(prefix(c)));
    child.stderr.on('data', (c: Buffer) => process.stderr.write(prefix(c)));
    child.on('error', reject);
    child.on('exit', (code) => {
      process.stderr.write(`[${dir}] done in ${((performance.now() - t0) / 1000).toFixed(0)} s, exit ${code}\n`);
      if (code === 0) resolve();
      else reject(new Error(`${script} (${dir}) exited with ${code}`));
    });
  });
}

if (!args.collect) {
  const queue: [string, string, number][] = seeds
    .flatMap((seed) => sides.map((side): [string, string, number] => [side, `${side}-${seed}`, seed]))
    .filter(([side]) => args.only === undefined || side === args.only);
  const worker = async () => {
    for (let item = queue.shift(); item; item = queue.shift()) {
      await runPipeline(item[0], item[1], item[2]);
      if (item[0] === 'source-only') await adaBn(item[2]);
    }
  };
  try {
    await Promise.all(Array.from({ length: jobs }, worker));
  } catch (err) {
    console.error(`synthetic-results: ${(err as Error).message}`);
    process.exit(1);
  }
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const std = (xs: number[]) => Math.sqrt(xs.reduce((a, b) => a + (b - mean(xs)) ** 2, 0) / Math.max(1, xs.length - 1));
const pm = (xs: number[]) => `${(100 * mean(xs)).toFixed(2)} ± ${(100 * std(xs)).toFixed(2)}`;
const ADABN = 'source-only + AdaBN';
const rows = new Map<string, { miou: number[]; tail: number[]; secs: number[]; cpu: number[]; iterations: number }>();
const perSeed = new Map<number, Map<string, number>>();
const starve: number[] = [];
for (const seed of seeds) {
  perSeed.set(seed, new Map());
  for (const side of sides) {
    const dir = `${side}-${seed}`;
    const file = join(args.out, dir, 'report.json');
    let report: RunReport;
    try {
      report = JSON.parse(await readFile(file, 'utf8')) as RunReport;
    } catch (err) {
      console.error(`synthetic-results: cannot read ${file} (${(err as Error).message}); run without --collect first`);
      process.exit(1);
    }
    const fixed = SIDES[side]!.row;
    const evaluated = report.phases.filter((p) => p.miou !== null);
    for (const p of fixed ? evaluated.slice(-1) : evaluated) {
      const name = fixed ?? p.phase;
      const row = rows.get(name) ?? { miou: [], tail: [], secs: [], cpu: [], iterations: p.iterations };
      row.miou.push(p.miou!);
      row.tail.push(p.tailMiou ?? 0);
      row.secs.push(p.seconds);
      // the whole pipeline's CPU (older reports lack it)
      if (report.cpuSeconds !== undefined) row.cpu.push(report.cpuSeconds);
      rows.set(name, row);
      perSeed.get(seed)!.set(name, p.miou!);
    }
    if (side === 'spcl') starve.push(...Object.values(report.starvation));
  }
  const adabn = join(args.out, `source-only-${seed}`, 'adabn.json');
  try {
    const e = JSON.parse(await readFile(adabn, 'utf8')) as { miou: number; tailMiou: number | null };
    const row = rows.get(ADABN) ?? { miou: [], tail: [], secs: [], cpu: [], iterations: rows.get('source-only')!.iterations };
    row.miou.push(e.miou);
    row.tail.push(e.tailMiou ?? 0);
    row.secs.push(0);
    rows.set(ADABN, row);
    perSeed.get(seed)!.set(ADABN, e.miou);
  } catch {
    console.error(`synthetic-results: no ${adabn}; the AdaBN row leaves seed ${seed} out`);
  }
}
const order = ['source-only', ADABN, 'warmup', 'spcl', 'ssl', 'mean-teacher', 'mean-teacher + contrastive'];
const names = [...rows.keys()].sort((a, b) => order.indexOf(a) - order.indexOf(b));
console.log(
  `| row | iterations | target val mIoU % (mean ± std, ${seeds.length} seeds) | tail-class mIoU % | phase time s | pipeline CPU min |`,
);
console.log('|---|---|---|---|---|---|');
for (const name of names) {
  const r = rows.get(name)!;
  const cpu = r.cpu.length ? (mean(r.cpu) / 60).toFixed(1) : '-';
  console.log(`| ${name} | ${r.iterations} | ${pm(r.miou)} | ${pm(r.tail)} | ${name === ADABN ? '-' : mean(r.secs).toFixed(0)} | ${cpu} |`);
}
console.log('');
for (const [seed, m] of perSeed)
  console.log(`seed ${seed}: ${names.map((n) => `${n} ${m.has(n) ? (100 * m.get(n)!).toFixed(2) : '-'}`).join(' / ')}`);
const means = Object.fromEntries(names.map((n) => [n, mean(rows.get(n)!.miou)]));
if (['source-only', 'warmup', 'spcl', 'ssl'].every((n) => n in means)) {
  const gain = 100 * (means.ssl! - means['source-only']!);
  const everySeed = [...perSeed.values()].every((m) => m.get('ssl')! > m.get('source-only')!);
  console.log(
    `\nmeans rise source-only <= warmup < spcl < ssl: ${means['source-only']! <= means.warmup! && means.warmup! < means.spcl! && means.spcl! < means.ssl! ? 'yes' : 'no'}; ` +
      `mean ssl - mean source-only: ${gain.toFixed(2)} points; every seed's ssl above its source-only: ${everySeed ? 'yes' : 'no'}`,
  );
  if (ADABN in means)
    console.log(
      `mean ssl - mean source-only + AdaBN: ${(100 * (means.ssl! - means[ADABN]!)).toFixed(2)} points (what the recipe adds beyond target BN statistics)`,
    );
}
if (starve.length)
  console.log(
    `trainer starvation (share of step time waiting for data), per training phase and seed: mean ${(100 * mean(starve)).toFixed(1)}%, max ${(100 * Math.max(...starve)).toFixed(1)}%`,
  );

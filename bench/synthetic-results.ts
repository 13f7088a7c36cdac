/**
 * Runs the default synthetic recipe and the source-only baseline for several seeds and prints mean +-
 * std of target-val mIoU per phase (the README's results table).
 *
 *   node bench/synthetic-results.ts [--seeds 0,1,2] [--out runs/results]
 * With --collect only, reads existing <out>/spcl-<seed>/report.json and <out>/source-only-<seed>/report.json.
 */
import { spawnSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { RunReport } from '../src/recipe/run.ts';

const { values: args } = parseArgs({ options: {
  seeds: { type: 'string', default: '0,1,2' }, out: { type: 'string', default: 'runs/results' },
  collect: { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h', default: false },
} });
if (args.help) {
  console.log('usage: node bench/synthetic-results.ts [--seeds 0,1,2] [--out runs/results] [--collect]');
  process.exit(0);
}
const seeds = args.seeds.split(',').map(Number);
if (!seeds.every(Number.isInteger)) {
  console.error(`synthetic-results: --seeds must be integers separated by commas, got '${args.seeds}'`);
  process.exit(2);
}
const root = new URL('../', import.meta.url).pathname;
if (!args.collect) {
  for (const seed of seeds) {
    for (const [script, dir] of [['spcl.ts', `spcl-${seed}`], ['source-only.ts', `source-only-${seed}`]] as const) {
      const t0 = performance.now();
      const r = spawnSync(process.execPath, [join(root, 'pipelines', script), '--seed', String(seed), '--out', join(args.out, dir)], { stdio: ['ignore', 'inherit', 'inherit'] });
      if (r.status !== 0) process.exit(r.status ?? 1);
      console.error(`${script} seed ${seed}: ${((performance.now() - t0) / 1000).toFixed(0)} s`);
    }
  }
}
const stats = (xs: number[]) => {
  const m = xs.reduce((a, b) => a + b, 0) / xs.length;
  const sd = Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / Math.max(1, xs.length - 1));
  return `${(100 * m).toFixed(2)} ± ${(100 * sd).toFixed(2)}`;
};
const rows = new Map<string, number[]>();
const tails = new Map<string, number[]>();
const secs = new Map<string, number[]>();
const starve: number[] = [];
for (const seed of seeds) {
  for (const [dir, prefix] of [[`source-only-${seed}`, 'source-only'], [`spcl-${seed}`, '']] as const) {
    const report = JSON.parse(await readFile(join(args.out, dir, 'report.json'), 'utf8')) as RunReport;
    for (const p of report.phases) {
      if (p.miou === null) continue;
      const name = prefix || p.phase;
      rows.set(name, [...(rows.get(name) ?? []), p.miou]);
      tails.set(name, [...(tails.get(name) ?? []), p.tailMiou ?? 0]);
      secs.set(name, [...(secs.get(name) ?? []), p.seconds]);
    }
    if (!prefix) starve.push(...Object.values(report.starvation));
  }
}
console.log(`| row | target val mIoU % (mean ± std, ${seeds.length} seeds) | tail-class mIoU % | phase time s |`);
console.log('|---|---|---|---|');
for (const [name, xs] of rows) {
  const t = secs.get(name)!;
  console.log(`| ${name} | ${stats(xs)} | ${stats(tails.get(name)!)} | ${(t.reduce((a, b) => a + b, 0) / t.length).toFixed(0)} |`);
}
console.log(`\ntrainer starvation (share of step time waiting for data), per training phase and seed: mean ${(100 * starve.reduce((a, b) => a + b, 0) / starve.length).toFixed(1)}%, max ${(100 * Math.max(...starve)).toFixed(1)}%`);

/**
 * The SPCL recipe (REFERENCE 1): warm-up -> prototypes -> thresholds + pseudo-labels -> contrastive
 * training -> pseudo-labels -> self-training. With no arguments: the embedded synthetic benchmark on
 * this machine (generated and ingested on first use), CPU-sized; `--preset gta5-cityscapes` etc. give
 * the paper's settings on real shards.
 */
import { availableParallelism } from 'node:os';
process.env.UV_THREADPOOL_SIZE ??= String(availableParallelism());

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PHASES, PRESETS, SYNTHETIC_DATA, SYNTHETIC_QUICK_DATA, checkConfig, mergeConfig, parseSet, quick, type PhaseName, type SpclConfig } from '../src/recipe/config.ts';
import { runRecipe, useSyntheticData, type RunReport } from '../src/recipe/run.ts';
import { METRICS_OPTIONS, METRICS_USAGE, startMetrics } from '../src/observe/cli.ts';
import { parseCli } from '../src/cli.ts';
import { stepLogEvents } from '../src/observe/step-log.ts';
import { DiskFullError } from '../src/io/atomic.ts';

const USAGE = `usage: node pipelines/spcl.ts [options]
  --preset NAME        ${Object.keys(PRESETS).join(' | ')} (default synthetic)
  --config FILE        JSON overrides of the preset (same keys as report.json's "config")
  --set KEY=VALUE      one override, repeatable (e.g. --set spcl.lambda=0.5 --set data.workers=4)
  --out DIR            run folder (checkpoints, pseudo-labels, report.json); default runs/<preset>
  --backend NAME       auto | tensorflow | wasm | cpu (default auto)
  --seed N             run seed (default 0)
  --phase NAME[,NAME]  run only these phases (${PHASES.join(', ')}), from the run's last checkpoint
  --checkpoint FILE    with --phase: start from this checkpoint instead
  --resume             continue from the last checkpoint in --out
  --continuous         after the recipe (or the --phase phases), keep adapting: new target images are picked
                       up, thresholds + pseudo-labels refreshed on a schedule (continuous.* keys), until
                       SIGINT/SIGTERM or continuous.steps; with --resume it goes on where it stopped
  --quick              a much shorter synthetic run (end-to-end check, under 2 minutes)
  --step-log FILE      append one JSON line per training step (phase, iteration, every loss term, lr, skipped)
${METRICS_USAGE}
  -h, --help           this text
Prints progress to stderr, a results table to stdout, and writes <out>/report.json.`;

const cli = parseCli('spcl', USAGE, {
  preset: { type: 'string', default: 'synthetic' },
  config: { type: 'string' },
  set: { type: 'string', multiple: true, default: [] },
  out: { type: 'string' },
  backend: { type: 'string' },
  seed: { type: 'string' },
  phase: { type: 'string' },
  checkpoint: { type: 'string' },
  resume: { type: 'boolean', default: false },
  continuous: { type: 'boolean', default: false },
  quick: { type: 'boolean', default: false },
  'step-log': { type: 'string' },
  ...METRICS_OPTIONS,
});
const args = cli.values;
const usageError: (message: string) => never = cli.fail;

async function buildConfig(): Promise<SpclConfig> {
  const preset = PRESETS[args.preset];
  if (!preset) usageError(`--preset must be one of ${Object.keys(PRESETS).join(', ')}, got '${args.preset}'`);
  let cfg = preset();
  if (args.quick) {
    if (args.preset !== 'synthetic') usageError('--quick only applies to the synthetic preset');
    cfg = quick(cfg);
  }
  if (args.config) {
    let text: string;
    try {
      text = await readFile(args.config, 'utf8');
    } catch {
      throw new Error(`${args.config}: cannot read the config file`);
    }
    let json;
    try {
      json = JSON.parse(text);
    } catch (err) {
      throw new Error(`${args.config}: invalid JSON (${(err as Error).message})`);
    }
    cfg = mergeConfig(cfg, json, args.config);
  }
  for (const s of args.set) cfg = mergeConfig(cfg, parseSet(s), `--set ${s}`);
  const flags: Record<string, unknown> = {};
  if (args.out) flags.out = args.out;
  if (args.backend) flags.backend = args.backend;
  if (args.seed !== undefined) {
    const seed = Number(args.seed);
    flags.seed = Number.isInteger(seed) ? seed : args.seed;
  }
  cfg = mergeConfig(cfg, flags as Parameters<typeof mergeConfig>[1], 'flags');
  if (args.quick && !args.out) cfg.out = 'runs/synthetic-quick';
  return cfg;
}

const log = (line: string) => process.stderr.write(`${line}\n`);
const pct = (v: number | null) => (v === null ? '   -  ' : (100 * v).toFixed(2).padStart(6));

function table(r: RunReport): string {
  const rows = r.phases.map((p) => `${p.phase.padEnd(16)} ${pct(p.miou)}  ${pct(p.tailMiou)}  ${p.seconds.toFixed(0).padStart(6)}`);
  return [`phase            mIoU %  tail %  time s   (target val, backend ${r.backend}, seed ${r.seed})`, ...rows,
    `total ${r.seconds.toFixed(0)} s; trainer waited for data: ${Object.entries(r.starvation).map(([k, v]) => `${k} ${(100 * v).toFixed(1)}%`).join(', ')}`].join('\n');
}

try {
  const cfg = await buildConfig();
  await useSyntheticData(cfg, args.quick ? SYNTHETIC_QUICK_DATA : SYNTHETIC_DATA, log);
  checkConfig(cfg);
  let only: PhaseName[] | undefined;
  if (args.phase) {
    only = args.phase.split(',') as PhaseName[];
    const bad = only.find((p) => !PHASES.includes(p));
    if (bad) usageError(`--phase must name phases among ${PHASES.join(', ')}, got '${bad}'`);
  }
  const controller = new AbortController();
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      log(`spcl: ${sig}: stopping after the current step, or now in a pass (the last complete state is checkpointed; --resume continues)`);
      controller.abort();
    });
  }
  if (args.checkpoint && !only) usageError('--checkpoint needs --phase');
  const { metrics, server } = await startMetrics(args, log);
  const report = await runRecipe({
    cfg, resume: args.resume || Boolean(only), only, checkpoint: args.checkpoint, continuous: args.continuous,
    events: args['step-log'] ? stepLogEvents(args['step-log'], { log }) : { log }, signal: controller.signal, metrics,
  });
  await server.close();
  console.log(table(report));
  log(`report: ${join(cfg.out, 'report.json')}`);
} catch (err) {
  log(`spcl: ${process.env.SPCL_DEBUG ? (err as Error).stack : (err as Error).message}`);
  if (err instanceof DiskFullError) log('spcl: free space, then run again with --resume: it continues from the checkpoint latest.json names');
  process.exit(1);
}

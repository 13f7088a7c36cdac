/**
 * Training-step benchmark, side by side with PyTorch on the same machine. Two nets, because PyTorch 1.13's
 * CPU dilated convolution is a slow path and the DeepLab alone would flatter us:
 * - `deeplab`: the small DeepLab-v2 (backbone 'small', frozen BN or `--bn trainable`, ASPP d 6/12/18/24);
 * - `plain`: six 3x3 convolutions, three of stride 2, 32-128 channels, no dilation (bench/plain-net.ts).
 * One step = forward, bilinear upsample (align_corners), CE, backward, SGD (momentum, weight decay,
 * classifier x10). The wasm and cpu backends run at each of `--threads` (above 1, the step is
 * data-parallel over worker replicas, src/parallel, the same path as `train.threads`);
 * the wasm backend also with more kernel threads in one replica (`--kernel-threads`: tfjs-wasm's threaded
 * build, src/ops/wasm-threads.ts, the same arithmetic as one thread); the peer (bench/step_torch.py,
 * Debian's python3-torch) runs at each of `--torch-threads` (its threads are kernel threads: its rows
 * give them as both `threads` and `kernelThreads`). Every figure is the
 * median of `--steps` steps after a warm-up step; the ratio is ours / PyTorch's at 1 thread and at the
 * most threads. An engine's thread counts are timed in turn, one step each round, so that the speed-up
 * over one thread compares steps taken seconds apart, not minutes. With `--isolate` each wasm/cpu setting
 * runs in a process of its own (bench/step-process.ts), one process per setting each round, in turn:
 * what a training process, which holds one setting, sees.
 *
 *   npm run bench:step -- [--nets deeplab,plain] [--sizes 64x128] [--batch 8] [--steps 10] [--threads 1,2] [--kernel-threads 1,2] [--json]
 *   npm run bench:step -- --isolate [--rounds 3] ...   (one process per setting and round)
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { once } from 'node:events';
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import * as tf from '@tensorflow/tfjs';
import { parseCli, parseIntFlag, parseSize } from '../src/cli.ts';
import { selectBackend, type BackendName } from '../src/ops/backend.ts';
import type { SGD } from '../src/ops/optim.ts';
import { DataParallel, shardRows } from '../src/parallel/data-parallel.ts';
import { median } from './median.ts';
import { benchBatch, benchNet, benchOptimizer, benchProgram, timedStep, type BenchNet } from './step-program.ts';
import type { KernelWorkerInit } from './step-kernel-worker.ts';
import type { StepProcessSetting } from './step-process.ts';

const USAGE = `usage: npm run bench:step -- [options]
  --nets LIST          deeplab, plain (default both)
  --sizes LIST         input sizes HxW, comma-separated (default 64x128)
  --batch N            images per step (default 8)
  --classes K          classes (default 19)
  --bn MODE            the DeepLab's batch norm: frozen (the paper's, the default) | trainable (the synthetic preset's)
  --steps N            timed steps per engine (default 10; the cpu backend takes --cpu-steps)
  --cpu-steps N        timed steps on tfjs's pure-JS cpu backend (default 1: it is slow)
  --backends LIST      tfjs backends (default tensorflow,wasm,cpu; unavailable ones are reported skipped)
  --threads LIST       tfjs wasm/cpu thread counts: data-parallel replicas (default 1 and the machine's cores)
  --kernel-threads LIST wasm kernel threads of one replica (tfjs-wasm's threaded build; default 1 and the cores)
  --torch-threads LIST PyTorch thread counts (default 1 and the machine's cores)
  --isolate            time every wasm/cpu setting in a process of its own, the processes in turn
                       (what a training process sees: one setting per process; default: one process,
                       every setting one step in turn)
  --rounds N           with --isolate: rounds of one process per setting (default 3)
  --floor              also time, at each replica count above 1, the replicas' shards as independent
                       steps at once (no weights shared, no gradient sum, no barrier): what this machine
                       gives any split of the batch over that many threads, the floor of the step's ratio
  --python PATH        the peer's interpreter (default /usr/bin/python3)
  --json               print one JSON object instead of the table
  -h, --help           this text
Prints, per net and size, ms per training step of each engine and its ratio to PyTorch.`;

const cli = parseCli('bench:step', USAGE, {
  nets: { type: 'string', default: 'deeplab,plain' },
  sizes: { type: 'string', default: '64x128' },
  batch: { type: 'string', default: '8' },
  classes: { type: 'string', default: '19' },
  bn: { type: 'string', default: 'frozen' },
  steps: { type: 'string', default: '10' },
  'cpu-steps': { type: 'string', default: '1' },
  backends: { type: 'string', default: 'tensorflow,wasm,cpu' },
  threads: { type: 'string' },
  'kernel-threads': { type: 'string' },
  'torch-threads': { type: 'string' },
  isolate: { type: 'boolean', default: false },
  floor: { type: 'boolean', default: false },
  rounds: { type: 'string', default: '3' },
  python: { type: 'string', default: '/usr/bin/python3' },
  json: { type: 'boolean', default: false },
});
const args = cli.values;
const int = (flag: string, v: string, min = 1) => parseIntFlag(v, flag, min, cli.fail)!;
const batch = int('batch', args.batch);
const classes = int('classes', args.classes, 2);
const steps = int('steps', args.steps);
const cpuSteps = int('cpu-steps', args['cpu-steps']);
const rounds = int('rounds', args.rounds);
const nets = args.nets.split(',');
if (args.bn !== 'frozen' && args.bn !== 'trainable') cli.fail(`--bn must be frozen or trainable, got '${args.bn}'`);
const bn = args.bn as 'frozen' | 'trainable';
if (args.floor && args.isolate) cli.fail('--floor times in one process: it cannot be combined with --isolate');
for (const n of nets) if (n !== 'deeplab' && n !== 'plain') cli.fail(`--nets: unknown net '${n}', expected deeplab or plain`);
const sizes = args.sizes.split(',').map((s) => parseSize(s, 'sizes', '64x128', cli.fail));
const cores = os.availableParallelism();
const tfThreads = (args.threads ?? (cores > 1 ? `1,${cores}` : '1')).split(',').map((t) => int('threads', t));
const kernelThreads = (args['kernel-threads'] ?? (cores > 1 ? `1,${cores}` : '1')).split(',').map((t) => int('kernel-threads', t));
const torchThreads = (args['torch-threads'] ?? (cores > 1 ? `1,${cores}` : '1')).split(',').map((t) => int('torch-threads', t));

interface Result {
  engine: string;
  net: string;
  size: [number, number];
  /** Data-parallel replicas (worker threads with their own backend). */
  threads: number;
  /** Threads inside each replica's wasm kernels (src/ops/wasm-threads.ts; 1 elsewhere). */
  kernelThreads: number;
  msPerStep: number | null;
  note?: string;
  ratioToPytorch1Thread?: number;
  ratioToPytorchMaxThreads?: number;
  /**
   * This engine's step over its own one-thread step (threads or kernel threads > 1): the median over the
   * rounds (the settings are timed in turn: one step each, or with --isolate one process each), and the
   * lowest and highest round.
   */
  ratioToOneThread?: number;
  ratioToOneThreadRange?: [number, number];
  /** With --isolate: the median step of each round's process. */
  msPerRound?: number[];
  /** --floor: the replicas' shards as independent steps at once, no sum (not a training step). */
  independent?: true;
}

/** Milliseconds per step of one engine at one setting, or why it could not run. */
type Timing = { ms: number; ratios?: number[]; rounds?: number[] } | string;

/**
 * One setting of an engine: data-parallel replicas, and kernel threads of each replica's backend;
 * `independent`: the replicas' shards as independent steps at once (--floor).
 */
interface Variant {
  replicas: number;
  kernelThreads: number;
  independent?: true;
}

const key = (v: Variant) => `${v.replicas}x${v.kernelThreads}${v.independent ? ' independent' : ''}`;

/**
 * Times `backend` at every setting of `variants` side by side: a model and optimiser per setting (the
 * main replica of its data-parallel group where it has one), one group per replica count above 1, one
 * worker thread with its own backend per kernel-thread count above 1 (bench/step-kernel-worker.ts: a
 * backend's kernel threads are fixed when it starts), and the steps taken round-robin (each setting once, then again), so that a
 * machine's drift over the run (20-40 % here over minutes) falls on every setting alike. Each
 * setting's figure is its median step; `ratios` are, round by round, its step over the same round's
 * one-thread step.
 */
async function timeBackend(
  name: BackendName,
  net: string,
  size: [number, number],
  n: number,
  variants: Variant[],
): Promise<Map<string, Timing>> {
  const out = new Map<string, Timing>();
  try {
    await selectBackend(name, { log: () => {} });
  } catch (err) {
    for (const v of variants) out.set(key(v), (err as Error).message.split('.')[0]!);
    return out;
  }
  // A model and optimiser per setting: a data-parallel group makes its main replica's batch norm sum
  // over the group's replicas, which a one-thread step of the same model would wait for.
  const models: { m: BenchNet; opt: SGD }[] = [];
  const model = () => {
    const m = benchNet(net, classes, bn);
    models.push({ m, opt: benchOptimizer(m) });
    return models.at(-1)!;
  };
  const data = benchBatch(batch, size, classes);
  const groups: DataParallel[] = [];
  const stepWorkers: Worker[] = [];
  const shardData: tf.Tensor[] = [];
  try {
    const steps = new Map<string, () => Promise<number>>();
    for (const v of variants) {
      if (v.independent) {
        if (batch < v.replicas) {
          out.set(key(v), `a batch of ${batch} rows cannot be split over ${v.replicas} threads`);
          continue;
        }
        steps.set(key(v), await independentShards(name, net, size, v.replicas, model, stepWorkers, shardData));
        continue;
      }
      if (v.kernelThreads > 1) {
        const { worker, ready } = await stepWorker(
          { backend: name, kernelThreads: v.kernelThreads, net, classes, bn, batch, size },
          stepWorkers,
        );
        if (ready !== v.kernelThreads) {
          out.set(key(v), `the backend started ${ready} kernel threads, not ${v.kernelThreads}`);
          continue;
        }
        steps.set(key(v), async () => {
          worker.postMessage('step');
          return (await once(worker, 'message'))[0] as number;
        });
        continue;
      }
      const { m, opt } = model();
      const dp =
        v.replicas > 1
          ? await DataParallel.start({
              threads: v.replicas,
              backend: name,
              program: benchProgram(net, classes, bn),
              replica: m,
            })
          : null;
      if (dp) groups.push(dp);
      steps.set(key(v), async () => timedStep(m, opt, data, dp));
    }
    // the warm-up step; a setting whose step fails (e.g. more replicas than rows) is reported, not timed
    for (const [k, step] of steps)
      await step().catch((err: Error) => {
        out.set(k, err.message.split('\n')[0]!);
        steps.delete(k);
      });
    const times = new Map([...steps.keys()].map((k) => [k, [] as number[]]));
    for (let i = 0; i < n; i++) for (const [k, step] of steps) times.get(k)!.push(await step());
    const one = times.get(key({ replicas: 1, kernelThreads: 1 }));
    for (const [k, ms] of times) out.set(k, timing(ms, one));
    return out;
  } finally {
    for (const worker of stepWorkers) worker.postMessage('close');
    await Promise.all([...groups.map((dp) => dp.close()), ...stepWorkers.map((wk) => once(wk, 'exit'))]);
    tf.dispose([data.x, data.labels, ...shardData]);
    for (const { m, opt } of models) {
      opt.dispose();
      m.dispose();
    }
  }
}

/** A step worker (bench/step-kernel-worker.ts) added to `workers` once it is ready: it and the kernel threads its backend started. */
async function stepWorker(init: KernelWorkerInit, workers: Worker[]): Promise<{ worker: Worker; ready: number }> {
  const worker = new Worker(new URL('./step-kernel-worker.ts', import.meta.url), { workerData: init });
  workers.push(worker);
  const started = (await once(worker, 'message'))[0] as { ready: number };
  return { worker, ready: started.ready };
}

/**
 * The floor of a split over `replicas` threads (--floor): the batch's rows cut as a data-parallel step
 * cuts them (`shardRows`), each shard a whole one-thread step of its own (its own model, optimiser and
 * images) on the main thread and on `replicas - 1` workers (bench/step-kernel-worker.ts, one kernel
 * thread), all started at once; the time is until the last one finishes. Nothing is shared or summed,
 * so this is what the machine gives `replicas` threads doing a 1/replicas share of the work side by side.
 */
async function independentShards(
  name: BackendName,
  net: string,
  size: [number, number],
  replicas: number,
  model: () => { m: BenchNet; opt: SGD },
  workers: Worker[],
  tensors: tf.Tensor[],
): Promise<() => Promise<number>> {
  const rows = shardRows(batch, replicas);
  const mine: Worker[] = [];
  for (const r of rows.slice(1))
    mine.push((await stepWorker({ backend: name, kernelThreads: 1, net, classes, bn, batch: r, size }, workers)).worker);
  const { m, opt } = model();
  const data = benchBatch(rows[0]!, size, classes);
  tensors.push(data.x, data.labels);
  return async () => {
    const t0 = performance.now();
    const done = mine.map((w) => once(w, 'message'));
    for (const w of mine) w.postMessage('step');
    timedStep(m, opt, data);
    await Promise.all(done);
    return performance.now() - t0;
  };
}

/**
 * `timeBackend` with every setting in a process of its own (bench/step-process.ts), `--rounds` rounds of
 * one process per setting in turn: a setting's figure is the median of its rounds' medians, `ratios`
 * each round's median over the same round's one-thread median.
 */
function timeIsolated(name: BackendName, net: string, size: [number, number], n: number, variants: Variant[]): Map<string, Timing> {
  const out = new Map<string, Timing>();
  const medians = new Map(variants.map((v) => [key(v), [] as number[]]));
  const child = new URL('./step-process.ts', import.meta.url).pathname;
  for (let round = 0; round < rounds; round++) {
    for (const v of variants) {
      if (out.has(key(v))) continue; // failed in an earlier round
      const setting: StepProcessSetting = {
        backend: name,
        net,
        size,
        batch,
        classes,
        bn,
        replicas: v.replicas,
        kernelThreads: v.kernelThreads,
        steps: n,
      };
      const r = spawnSync(process.execPath, [child, JSON.stringify(setting)], { encoding: 'utf8' });
      if (r.status !== 0) {
        out.set(key(v), `its process failed: ${(r.stderr || r.error?.message || `exit ${r.status}`).trim().split('\n').pop()}`);
        continue;
      }
      const got = JSON.parse(r.stdout.trim().split('\n').pop()!) as { kernelThreads: number; ms: number[] };
      if (got.kernelThreads !== v.kernelThreads) {
        out.set(key(v), `the backend started ${got.kernelThreads} kernel threads, not ${v.kernelThreads}`);
        continue;
      }
      medians.get(key(v))!.push(median(got.ms));
    }
  }
  const one = out.has(key({ replicas: 1, kernelThreads: 1 })) ? undefined : medians.get(key({ replicas: 1, kernelThreads: 1 }));
  for (const [k, ms] of medians) {
    if (out.has(k) || !ms.length) continue;
    out.set(k, { ...timing(ms, one), rounds: ms });
  }
  return out;
}

/** A setting's figure from its step times (or round medians): their median, and against `one` (the one-thread setting's, round by round) the ratios. */
function timing(ms: number[], one: number[] | undefined): { ms: number; ratios?: number[] } {
  return { ms: median(ms), ...(one && ms !== one ? { ratios: ms.map((v, i) => v / one[i]!) } : {}) };
}

function timeTorch(net: string, [h, w]: [number, number], threads: number): number | string {
  if (!existsSync(args.python)) return `${args.python} not found`;
  const script = new URL('./step_torch.py', import.meta.url).pathname;
  const r = spawnSync(
    args.python,
    [
      script,
      '--net',
      net,
      '--bn',
      bn,
      '--batch',
      String(batch),
      '--height',
      String(h),
      '--width',
      String(w),
      '--classes',
      String(classes),
    ].concat(['--steps', String(steps), '--threads', String(threads)]),
    { encoding: 'utf8' },
  );
  if (r.status !== 0) return `peer failed: ${(r.stderr || r.error?.message || '').trim().split('\n').pop()}`;
  return (JSON.parse(r.stdout.trim().split('\n').pop()!) as { ms_per_step_median: number }).ms_per_step_median;
}

const results: Result[] = [];
let peerVersion = '';
for (const net of nets) {
  for (const size of sizes) {
    const torch = torchThreads.map((t) => ({ t, ms: timeTorch(net, size, t) }));
    const one = torch.find((p) => p.t === 1 && typeof p.ms === 'number')?.ms as number | undefined;
    const most = [...torch].reverse().find((p) => typeof p.ms === 'number')?.ms as number | undefined;
    for (const name of args.backends.split(',') as BackendName[]) {
      // tensorflow runs its own threads: one setting; kernel threads are a wasm setting
      const variants: Variant[] =
        name === 'tensorflow'
          ? [{ replicas: 1, kernelThreads: 1 }]
          : [
              ...tfThreads.map((replicas) => ({ replicas, kernelThreads: 1 })),
              ...(args.floor && !args.isolate
                ? tfThreads.filter((r) => r > 1).map((replicas) => ({ replicas, kernelThreads: 1, independent: true as const }))
                : []),
              ...(name === 'wasm' ? kernelThreads.filter((k) => k > 1).map((k) => ({ replicas: 1, kernelThreads: k })) : []),
            ];
      const n = name === 'cpu' ? cpuSteps : steps;
      const timings =
        args.isolate && name !== 'tensorflow'
          ? timeIsolated(name, net, size, n, variants)
          : await timeBackend(name, net, size, n, variants);
      for (const v of variants) {
        const ms = timings.get(key(v));
        if (ms === undefined) continue;
        const row = {
          engine: `tfjs-${name}`,
          net,
          size,
          threads: v.replicas,
          kernelThreads: v.kernelThreads,
          ...(v.independent ? { independent: true as const } : {}),
        };
        results.push(
          typeof ms === 'string'
            ? { ...row, msPerStep: null, note: ms }
            : {
                ...row,
                msPerStep: ms.ms,
                ...(ms.rounds ? { msPerRound: ms.rounds } : {}),
                ...(one ? { ratioToPytorch1Thread: ms.ms / one } : {}),
                ...(most ? { ratioToPytorchMaxThreads: ms.ms / most } : {}),
                ...(ms.ratios
                  ? { ratioToOneThread: median(ms.ratios), ratioToOneThreadRange: [Math.min(...ms.ratios), Math.max(...ms.ratios)] }
                  : {}),
              },
        );
      }
    }
    for (const p of torch)
      results.push(
        typeof p.ms === 'string'
          ? { engine: 'pytorch', net, size, threads: p.t, kernelThreads: p.t, msPerStep: null, note: p.ms }
          : { engine: 'pytorch', net, size, threads: p.t, kernelThreads: p.t, msPerStep: p.ms },
      );
    if (!peerVersion && torch.some((p) => typeof p.ms === 'number')) {
      const v = spawnSync(args.python, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8' });
      peerVersion = v.stdout.trim();
    }
  }
}

const header = {
  date: new Date().toISOString().slice(0, 10),
  cores,
  cpu: os.cpus()[0]?.model ?? 'unknown',
  batch,
  classes,
  bn,
  steps,
  /** Each wasm/cpu setting timed in a process of its own (`rounds` processes each), or all in one. */
  isolate: args.isolate ? { rounds } : false,
  pytorch: peerVersion || null,
};
if (args.json) {
  console.log(JSON.stringify({ ...header, results }));
} else {
  console.log(
    `training step, batch ${batch}, ${classes} classes, DeepLab BN ${bn}, ${cores} cores (${header.cpu}), PyTorch ${peerVersion || 'absent'}, ${header.date}${args.isolate ? `, every setting in its own process (${rounds} rounds)` : ''}`,
  );
  console.log(
    [
      'net',
      'size',
      'engine',
      'replicas',
      'kernel threads',
      'ms/step (median)',
      'vs PyTorch 1 thread',
      'vs PyTorch max threads',
      'vs own 1 thread (median of rounds, range)',
      'note',
    ].join(' | '),
  );
  const x = (v: number | undefined) => (v === undefined ? '' : `${v.toFixed(2)}x`);
  for (const r of results)
    console.log(
      [
        r.net,
        r.size.join('x'),
        r.engine,
        r.engine === 'pytorch' ? 1 : r.threads,
        r.kernelThreads,
        r.msPerStep === null ? 'skipped' : r.msPerStep.toFixed(1),
      ]
        .concat([
          x(r.ratioToPytorch1Thread),
          x(r.ratioToPytorchMaxThreads),
          r.ratioToOneThread === undefined
            ? ''
            : `${x(r.ratioToOneThread)} (${r.ratioToOneThreadRange!.map((v) => v.toFixed(2)).join('-')})`,
          r.independent ? `independent shards at once, no sum (the floor)${r.note ? `; ${r.note}` : ''}` : (r.note ?? ''),
        ])
        .join(' | '),
    );
}

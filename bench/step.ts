/**
 * Training-step benchmark, side by side with PyTorch on the same machine. Two nets, because PyTorch 1.13's
 * CPU dilated convolution is a slow path and the DeepLab alone would flatter us:
 * - `deeplab`: the small DeepLab-v2 (backbone 'small', frozen BN, ASPP d 6/12/18/24);
 * - `plain`: six 3x3 convolutions, three of stride 2, 32-128 channels, no dilation (bench/plain-net.ts).
 * One step = forward, bilinear upsample (align_corners), CE, backward, SGD (momentum, weight decay,
 * classifier x10). Each tfjs backend runs on one thread (tfjs-wasm has no threads in Node); the peer
 * (bench/step_torch.py, Debian's python3-torch) runs at each of `--torch-threads`. Every figure is the
 * median of `--steps` steps after a warm-up step; the ratio is ours / PyTorch's at 1 thread and at the
 * most threads.
 *
 *   npm run bench:step -- [--nets deeplab,plain] [--sizes 64x128] [--batch 8] [--steps 10] [--json]
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import os from 'node:os';
import * as tf from '@tensorflow/tfjs';
import { parseCli, parseSize } from '../src/cli.ts';
import { selectBackend, type BackendName } from '../src/ops/backend.ts';
import { deeplabV2 } from '../src/ops/model/deeplab.ts';
import { segCrossEntropy } from '../src/ops/losses.ts';
import { SGD, gradients } from '../src/ops/optim.ts';
import type { Param } from '../src/ops/model/params.ts';
import { plainNet } from './plain-net.ts';

const USAGE = `usage: npm run bench:step -- [options]
  --nets LIST          deeplab, plain (default both)
  --sizes LIST         input sizes HxW, comma-separated (default 64x128)
  --batch N            images per step (default 8)
  --classes K          classes (default 19)
  --steps N            timed steps per engine (default 10; the cpu backend takes --cpu-steps)
  --cpu-steps N        timed steps on tfjs's pure-JS cpu backend (default 1: it is slow)
  --backends LIST      tfjs backends (default tensorflow,wasm,cpu; unavailable ones are reported skipped)
  --torch-threads LIST PyTorch thread counts (default 1 and the machine's cores)
  --python PATH        the peer's interpreter (default /usr/bin/python3)
  --json               print one JSON object instead of the table
  -h, --help           this text
Prints, per net and size, ms per training step of each engine and its ratio to PyTorch.`;

const cli = parseCli('bench:step', USAGE, {
  nets: { type: 'string', default: 'deeplab,plain' },
  sizes: { type: 'string', default: '64x128' },
  batch: { type: 'string', default: '8' },
  classes: { type: 'string', default: '19' },
  steps: { type: 'string', default: '10' },
  'cpu-steps': { type: 'string', default: '1' },
  backends: { type: 'string', default: 'tensorflow,wasm,cpu' },
  'torch-threads': { type: 'string' },
  python: { type: 'string', default: '/usr/bin/python3' },
  json: { type: 'boolean', default: false },
});
const args = cli.values;
const int = (flag: string, v: string, min = 1) => {
  const n = Number(v);
  if (!(Number.isInteger(n) && n >= min)) cli.fail(`--${flag} must be an integer >= ${min}, got '${v}'`);
  return n;
};
const batch = int('batch', args.batch);
const classes = int('classes', args.classes, 2);
const steps = int('steps', args.steps);
const cpuSteps = int('cpu-steps', args['cpu-steps']);
const nets = args.nets.split(',');
for (const n of nets) if (n !== 'deeplab' && n !== 'plain') cli.fail(`--nets: unknown net '${n}', expected deeplab or plain`);
const sizes = args.sizes.split(',').map((s) => parseSize(s, 'sizes', '64x128', cli.fail));
const cores = os.availableParallelism();
const torchThreads = (args['torch-threads'] ?? (cores > 1 ? `1,${cores}` : '1')).split(',').map((t) => int('torch-threads', t));

interface Result {
  engine: string;
  net: string;
  size: [number, number];
  threads: number;
  msPerStep: number | null;
  note?: string;
  ratioToPytorch1Thread?: number;
  ratioToPytorchMaxThreads?: number;
}

function build(net: string): { params: Param[]; forward: (x: tf.Tensor4D) => tf.Tensor4D; dispose: () => void } {
  if (net === 'plain') return plainNet(classes, 0);
  const model = deeplabV2({ backbone: 'small', numClasses: classes, seed: 0 });
  return { params: model.trainableParams(), forward: (x) => model.forward(x, { training: true }).logits, dispose: () => model.dispose() };
}

async function timeBackend(name: BackendName, net: string, [h, w]: [number, number], n: number): Promise<number | string> {
  try {
    await selectBackend(name, { log: () => {} });
  } catch (err) {
    return (err as Error).message.split('.')[0]!;
  }
  const m = build(net);
  const opt = new SGD([
    { params: m.params.filter((p) => p.group === 'backbone'), lrMult: 1 },
    { params: m.params.filter((p) => p.group === 'classifier'), lrMult: 10 },
  ]);
  const x = tf.randomNormal([batch, h, w, 3], 0, 1, 'float32', 1) as tf.Tensor4D;
  const labels = tf.randomUniformInt([batch, h, w], 0, classes, 2) as tf.Tensor3D;
  const step = () =>
    tf.tidy(() => {
      const { value, grads } = gradients(() => segCrossEntropy(tf.image.resizeBilinear(m.forward(x), [h, w], true), labels), m.params);
      opt.step(grads, 1e-3);
      return value.dataSync()[0]!;
    });
  step();
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    step();
    times.push(performance.now() - t0);
  }
  tf.dispose([x, labels]);
  opt.dispose();
  m.dispose();
  return times.sort((a, b) => a - b)[Math.floor(times.length / 2)]!;
}

function timeTorch(net: string, [h, w]: [number, number], threads: number): number | string {
  if (!existsSync(args.python)) return `${args.python} not found`;
  const script = new URL('./step_torch.py', import.meta.url).pathname;
  const r = spawnSync(
    args.python,
    [script, '--net', net, '--batch', String(batch), '--height', String(h), '--width', String(w), '--classes', String(classes)].concat([
      '--steps',
      String(steps),
      '--threads',
      String(threads),
    ]),
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
      const ms = await timeBackend(name, net, size, name === 'cpu' ? cpuSteps : steps);
      results.push(
        typeof ms === 'string'
          ? { engine: `tfjs-${name}`, net, size, threads: 1, msPerStep: null, note: ms }
          : {
              engine: `tfjs-${name}`,
              net,
              size,
              threads: 1,
              msPerStep: ms,
              ...(one ? { ratioToPytorch1Thread: ms / one } : {}),
              ...(most ? { ratioToPytorchMaxThreads: ms / most } : {}),
            },
      );
    }
    for (const p of torch)
      results.push(
        typeof p.ms === 'string'
          ? { engine: 'pytorch', net, size, threads: p.t, msPerStep: null, note: p.ms }
          : { engine: 'pytorch', net, size, threads: p.t, msPerStep: p.ms },
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
  steps,
  pytorch: peerVersion || null,
};
if (args.json) {
  console.log(JSON.stringify({ ...header, results }));
} else {
  console.log(
    `training step, batch ${batch}, ${classes} classes, ${cores} cores (${header.cpu}), PyTorch ${peerVersion || 'absent'}, ${header.date}`,
  );
  console.log(
    ['net', 'size', 'engine', 'threads', 'ms/step (median)', 'vs PyTorch 1 thread', 'vs PyTorch max threads', 'note'].join(' | '),
  );
  const x = (v: number | undefined) => (v === undefined ? '' : `${v.toFixed(2)}x`);
  for (const r of results)
    console.log(
      [r.net, r.size.join('x'), r.engine, r.threads, r.msPerStep === null ? 'skipped' : r.msPerStep.toFixed(1)]
        .concat([x(r.ratioToPytorch1Thread), x(r.ratioToPytorchMaxThreads), r.note ?? ''])
        .join(' | '),
    );
}

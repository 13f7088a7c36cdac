/**
 * Training-step benchmark: the small DeepLab-v2 (backbone 'small', frozen BN, ASPP) on each available
 * tfjs backend, side by side with the same net in PyTorch (bench/step_torch.py, Debian's python3-torch;
 * skipped when absent). One step = forward, bilinear upsample (align_corners), CE, backward, SGD
 * (momentum, weight decay, classifier x10). Prints a table with the ratio to the peer.
 *
 *   npm run bench:step -- [--batch 8] [--height 64] [--width 128] [--steps 10] [--backends wasm,cpu,tensorflow]
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import os from 'node:os';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs';
import { selectBackend, type BackendName } from '../src/ops/backend.ts';
import { deeplabV2 } from '../src/ops/model/deeplab.ts';
import { segCrossEntropy } from '../src/ops/losses.ts';
import { SGD, gradients } from '../src/ops/optim.ts';

const { values: args } = parseArgs({
  options: {
    batch: { type: 'string', default: '8' },
    height: { type: 'string', default: '64' },
    width: { type: 'string', default: '128' },
    classes: { type: 'string', default: '19' },
    steps: { type: 'string', default: '10' },
    'cpu-steps': { type: 'string', default: '1' },
    backends: { type: 'string', default: 'tensorflow,wasm,cpu' },
    python: { type: 'string', default: '/usr/bin/python3' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (args.help) {
  console.log(`usage: npm run bench:step -- [--batch 8] [--height 64] [--width 128] [--classes 19] [--steps 10]
       [--cpu-steps 1] [--backends tensorflow,wasm,cpu] [--python /usr/bin/python3]
Times one training step of the small DeepLab-v2 per backend and of the same net in PyTorch (peer).`);
  process.exit(0);
}
const batch = Number(args.batch);
const height = Number(args.height);
const width = Number(args.width);
const classes = Number(args.classes);

async function timeBackend(name: BackendName, steps: number): Promise<{ median: number; min: number } | string> {
  try {
    await selectBackend(name, { log: () => {} });
  } catch (err) {
    return (err as Error).message.split('.')[0]!;
  }
  const model = deeplabV2({ backbone: 'small', numClasses: classes, seed: 0 });
  const params = model.trainableParams();
  const opt = new SGD([
    { params: params.filter((p) => p.group === 'backbone'), lrMult: 1 },
    { params: params.filter((p) => p.group === 'classifier'), lrMult: 10 },
  ]);
  const x = tf.randomNormal([batch, height, width, 3], 0, 1, 'float32', 1) as tf.Tensor4D;
  const labels = tf.randomUniformInt([batch, height, width], 0, classes, 2) as tf.Tensor3D;
  const step = () =>
    tf.tidy(() => {
      const { value, grads } = gradients(() => {
        const { logits } = model.forward(x, { training: true });
        return segCrossEntropy(tf.image.resizeBilinear(logits, [height, width], true), labels);
      }, params);
      opt.step(grads, 1e-3);
      return value.dataSync()[0]!;
    });
  step();
  const times: number[] = [];
  for (let i = 0; i < steps; i++) {
    const t0 = performance.now();
    step();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  tf.dispose([x, labels]);
  opt.dispose();
  model.dispose();
  return { median: times[Math.floor(times.length / 2)]!, min: times[0]! };
}

function timeTorch(): { median: number; label: string } | string {
  if (!existsSync(args.python!)) return `${args.python} not found`;
  const r = spawnSync(
    args.python!,
    [
      new URL('./step_torch.py', import.meta.url).pathname,
      '--batch',
      String(batch),
      '--height',
      String(height),
      '--width',
      String(width),
      '--classes',
      String(classes),
      '--steps',
      args.steps!,
      '--threads',
      String(os.availableParallelism()),
    ],
    { encoding: 'utf8' },
  );
  if (r.status !== 0) return `peer failed: ${(r.stderr || r.error?.message || '').trim().split('\n').pop()}`;
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { peer: string; threads: number; ms_per_step_median: number };
  return { median: out.ms_per_step_median, label: `${out.peer}, ${out.threads} threads` };
}

const peer = timeTorch();
const rows: string[][] = [];
for (const name of args.backends!.split(',') as BackendName[]) {
  const r = await timeBackend(name, name === 'cpu' ? Number(args['cpu-steps']) : Number(args.steps));
  if (typeof r === 'string') {
    rows.push([`tfjs ${name}`, 'skipped', '', r]);
  } else {
    rows.push([`tfjs ${name}`, r.median.toFixed(1), typeof peer === 'string' ? 'n/a' : `${(r.median / peer.median).toFixed(2)}x`, '']);
  }
}
rows.push(typeof peer === 'string' ? ['pytorch', 'skipped', '', peer] : [`pytorch (${peer.label})`, peer.median.toFixed(1), '1.00x', '']);

console.log(
  `training step, small DeepLab-v2, batch ${batch}, ${height}x${width}, ${classes} classes, ${os.cpus().length} cores, ${new Date().toISOString().slice(0, 10)}`,
);
console.log(['engine', 'ms/step (median)', 'vs PyTorch', 'note'].join(' | '));
for (const r of rows) console.log(r.join(' | '));

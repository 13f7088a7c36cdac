import * as tf from '@tensorflow/tfjs';
import { selectBackend } from '../src/ops/backend.ts';
import { gradients, SGD } from '../src/ops/optim.ts';
import { DataParallel } from '../src/parallel/data-parallel.ts';
import { benchNet, benchLoss } from './step-program.ts';
const net = process.argv[2] ?? 'plain';
const threads = Number(process.argv[3] ?? 2);
await selectBackend('wasm');
const classes = 19,
  batch = Number(process.env.B ?? 8),
  h = 64,
  w = 128;
const m = benchNet(net, classes);
const x = tf.randomNormal([batch, h, w, 3], 0, 1, 'float32', 1) as tf.Tensor4D;
const labels = tf.randomUniformInt([batch, h, w], 0, classes, 2) as tf.Tensor3D;
const host = {
  images: { data: x.dataSync() as Float32Array, shape: x.shape },
  labels: { data: labels.dataSync() as Int32Array, shape: labels.shape },
};
const opt = new SGD([{ params: m.params, lrMult: 1 }]);
let step: () => number;
let dp: DataParallel | null = null;
if (threads === 1)
  step = () =>
    tf.tidy(() => {
      const { value, grads } = gradients(() => benchLoss(m, x, labels), m.params);
      opt.step(grads, 1e-3);
      return value.dataSync()[0]!;
    });
else {
  dp = await DataParallel.start({
    threads,
    backend: 'wasm',
    program: { module: new URL('./step-program.ts', import.meta.url).href, description: { net, classes } },
    replica: m,
  });
  step = () => {
    const { losses, grads } = dp!.gradients(host, {}, m.params);
    opt.step(grads, 1e-3);
    tf.dispose([...grads.values()]);
    return losses.total!;
  };
}
const ls = [];
const times = [];
for (let i = 0; i < 20; i++) {
  const t0 = performance.now();
  ls.push(step());
  times.push(performance.now() - t0);
}
console.log(net, threads, 'losses', ls.map((l) => l.toFixed(6)).join(' '));
console.log('ms', times.map((t) => t.toFixed(0)).join(' '), 'tensors', tf.memory().numTensors);
await dp?.close();

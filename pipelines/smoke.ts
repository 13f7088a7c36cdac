/**
 * Smoke run of what exists until the full SPCL pipeline lands: picks a backend, builds the small
 * DeepLab-v2, trains it for a few SGD steps on a generated stripe scene (classes are colours), and
 * prints loss, accuracy and step time. Exits 1 if the loss did not fall.
 *
 *   node pipelines/smoke.ts [--backend auto|tensorflow|wasm|cpu] [--steps 30] [--batch 4] [--size 64x128]
 */
import * as tf from '@tensorflow/tfjs';
import { parseCli, parseIntFlag, parseSize } from '../src/cli.ts';
import { BACKEND_REQUESTS, selectBackend, type BackendRequest } from '../src/ops/backend.ts';
import { deeplabV2 } from '../src/ops/model/deeplab.ts';
import { segCrossEntropy } from '../src/ops/losses.ts';
import { SGD, gradients, polyLR } from '../src/ops/optim.ts';

const USAGE = `usage: node pipelines/smoke.ts [options]
  --backend NAME   auto | tensorflow | wasm | cpu (default auto)
  --steps N        training steps (default 30)
  --batch N        images per step (default 4)
  --size HxW       image size (default 64x128)
  --classes K      classes in the generated scene (default 6)
  -h, --help       this text`;

const cli = parseCli('smoke', USAGE, {
  backend: { type: 'string', default: 'auto' },
  steps: { type: 'string', default: '30' },
  batch: { type: 'string', default: '4' },
  size: { type: 'string', default: '64x128' },
  classes: { type: 'string', default: '6' },
});
const args = cli.values;
const fail: (message: string) => never = cli.fail;
const int = (flag: string, v: string, min: number) => parseIntFlag(v, flag, min, fail)!;
if (!BACKEND_REQUESTS.includes(args.backend as BackendRequest))
  fail(`--backend must be one of ${BACKEND_REQUESTS.join(', ')}, got '${args.backend}'`);
const steps = int('steps', args.steps, 6); // the loss check compares the first and last 3 steps
const batch = int('batch', args.batch, 1);
const classes = int('classes', args.classes, 2);
const [height, width] = parseSize(args.size, 'size', '64x128', fail);
if (height < 16 || width < 16) fail(`--size must be at least 16x16, got '${args.size}'`);

const backend = await selectBackend(args.backend as BackendRequest).catch((err: Error) => fail(err.message));

/** A scene of vertical stripes, 16 px wide; the class sets the colour; some pixels ignored. */
function scene(seed: number): { images: tf.Tensor4D; labels: tf.Tensor3D } {
  const cls = new Int32Array(batch * height * width);
  for (let i = 0; i < cls.length; i++) {
    const image = Math.floor(i / (height * width));
    cls[i] = (Math.floor((i % width) / 16) + image + seed) % classes;
  }
  return tf.tidy(() => {
    const labels = tf.tensor3d(cls, [batch, height, width], 'int32');
    const palette = tf.randomUniform([classes, 3], -1.5, 1.5, 'float32', 7);
    const images = tf.add(tf.gather(palette, labels), tf.randomNormal([batch, height, width, 3], 0, 0.3, 'float32', seed)) as tf.Tensor4D;
    const ignore = tf.randomUniform([batch, height, width], 0, 1, 'float32', seed + 1).less(0.05);
    return { images, labels: tf.where(ignore, tf.fill(labels.shape, 255, 'int32'), labels) as tf.Tensor3D };
  });
}

const model = deeplabV2({ backbone: 'small', numClasses: classes, seed: 0 });
const params = model.trainableParams();
const optimizer = new SGD([
  { params: params.filter((p) => p.group === 'backbone'), lrMult: 1 },
  { params: params.filter((p) => p.group === 'classifier'), lrMult: 10 },
]);
const tensorsAtStart = tf.memory().numTensors;
const losses: number[] = [];
const t0 = performance.now();
for (let step = 0; step < steps; step++) {
  const { images, labels } = scene(step);
  const loss = tf.tidy(() => {
    const { value, grads } = gradients(() => {
      const { logits } = model.forward(images, { training: true });
      return segCrossEntropy(tf.image.resizeBilinear(logits, [height, width], true), labels);
    }, params);
    optimizer.step(grads, polyLR(0.01, step, steps));
    return value.dataSync()[0]!;
  });
  tf.dispose([images, labels]);
  losses.push(loss);
  if (step % 5 === 0 || step === steps - 1) {
    const ms = (performance.now() - t0) / (step + 1);
    process.stderr.write(`step ${String(step + 1).padStart(4)}/${steps}  loss ${loss.toFixed(4)}  ${ms.toFixed(0)} ms/step\n`);
  }
}
const msPerStep = (performance.now() - t0) / steps;
const evalScene = scene(1000);
const accuracy = tf.tidy(() => {
  const pred = tf.image.resizeBilinear(model.forward(evalScene.images).logits, [height, width], true).argMax(-1);
  const valid = evalScene.labels.notEqual(255);
  return pred.equal(evalScene.labels).logicalAnd(valid).sum().toFloat().div(valid.sum().toFloat()).dataSync()[0]!;
});
tf.dispose([evalScene.images, evalScene.labels]);
const first = losses.slice(0, 3).reduce((a, b) => a + b) / 3;
const last = losses.slice(-3).reduce((a, b) => a + b) / 3;
console.log(
  JSON.stringify({
    backend,
    steps,
    batch,
    size: [height, width],
    classes,
    lossFirst: +first.toFixed(4),
    lossLast: +last.toFixed(4),
    pixelAccuracy: +accuracy.toFixed(4),
    msPerStep: +msPerStep.toFixed(1),
    tensorsLeaked: tf.memory().numTensors - tensorsAtStart,
  }),
);
optimizer.dispose();
model.dispose();
if (!(last < first)) {
  process.stderr.write(`smoke: loss did not fall (${first.toFixed(4)} -> ${last.toFixed(4)})\n`);
  process.exit(1);
}

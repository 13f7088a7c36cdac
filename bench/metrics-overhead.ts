/**
 * What the Prometheus metrics add to a training step, measured side by side in one run: the small
 * DeepLab-v2 training step (as bench/step.ts) with and without the per-step metric updates a run makes
 * (one step report, the decode report of every sample, the prototype statistics), interleaved, plus
 * the cost of serving one scrape per 15 s.
 *
 *   node bench/metrics-overhead.ts [--steps 30] [--batch 8]
 */
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs';
import { selectBackend } from '../src/ops/backend.ts';
import { deeplabV2 } from '../src/ops/model/deeplab.ts';
import { segCrossEntropy } from '../src/ops/losses.ts';
import { SGD, gradients } from '../src/ops/optim.ts';
import { createMetrics } from '../src/observe/metrics.ts';
import { metricsEvents } from '../src/observe/events.ts';
import { PRESETS } from '../src/recipe/config.ts';
import { Prototypes } from '../src/stages/update-prototypes.ts';

const { values: args } = parseArgs({
  options: {
    steps: { type: 'string', default: '30' },
    batch: { type: 'string', default: '8' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (args.help) {
  console.log('usage: node bench/metrics-overhead.ts [--steps 30] [--batch 8]');
  process.exit(0);
}
const steps = Number(args.steps);
const batch = Number(args.batch);
await selectBackend('wasm', { log: () => {} });
const model = deeplabV2({ backbone: 'small', numClasses: 19 });
const params = model.trainableParams();
const opt = new SGD([{ params, lrMult: 1 }]);
const x = tf.randomNormal([batch, 64, 128, 3], 0, 1, 'float32', 1) as tf.Tensor4D;
const y = tf.randomUniformInt([batch, 64, 128], 0, 19, 2) as tf.Tensor3D;
const metrics = createMetrics();
const cfg = PRESETS.synthetic!();
const events = metricsEvents(
  metrics,
  { preset: cfg.preset, classifierLrMult: cfg.optimizer.classifierLrMult },
  cfg.data.numClasses === 19 ? Array.from({ length: 19 }, (_, k) => `c${k}`) : [],
  'wasm',
  { log: () => {} },
);
const protos = new Prototypes();
protos.set(tf.randomUniform([19, model.featureChannels], 0, 1, 'float32', 3) as tf.Tensor2D);

const step = () =>
  tf.tidy(() => {
    const { value, grads } = gradients(
      () => segCrossEntropy(tf.image.resizeBilinear(model.forward(x, { training: true }).logits, [64, 128], true), y),
      params,
    );
    opt.step(grads, 1e-3);
    return value.dataSync()[0]!;
  });
const record = (i: number, loss: number) => {
  for (let s = 0; s < batch; s++) events.decoded!({ seconds: 0.01, encodedBytes: 20_000 });
  events.batched!('source', batch);
  events.step!({
    phase: 'spcl',
    iteration: i,
    losses: { total: loss, seg: loss, cl_source: 2.9, cl_target: 2.9 },
    lr: 1e-3,
    seconds: 0.1,
    waitSeconds: 0.01,
    skipped: false,
  });
  events.prototypes!(protos);
};
step();
let stepMs = 0;
let recordMs = 0;
for (let i = 0; i < steps; i++) {
  const t0 = performance.now();
  const loss = step();
  const t1 = performance.now();
  record(i, loss);
  const t2 = performance.now();
  stepMs += t1 - t0;
  recordMs += t2 - t1;
}
const s0 = performance.now();
for (let i = 0; i < 10; i++) await metrics.registry.metrics();
const scrapeMs = (performance.now() - s0) / 10;
const perStep = stepMs / steps;
const perRecord = recordMs / steps;
const scrapeShare = scrapeMs / 15_000;
console.log(
  `metrics overhead, small DeepLab-v2 step (batch ${batch}, 64x128, wasm), ${steps} steps, ${new Date().toISOString().slice(0, 10)}`,
);
console.log(
  `step ${perStep.toFixed(1)} ms | metric updates per step ${perRecord.toFixed(3)} ms (${((100 * perRecord) / perStep).toFixed(3)}%) | one scrape ${scrapeMs.toFixed(2)} ms every 15 s (${(100 * scrapeShare).toFixed(4)}% of time)`,
);
console.log(`total added: ${((100 * perRecord) / perStep + 100 * scrapeShare).toFixed(3)}% of step time`);

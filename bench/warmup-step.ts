/**
 * What the warm-up's adversarial term costs (issue 14): the warm-up step (`warmupStep`, the very
 * function the one-thread warm-up runs) with and without the output-space discriminator, at the
 * synthetic preset's sizes, and the parts of the difference: the target batch's forward + backward
 * through the segmentation net (the adversarial gradient has to reach the net's weights: the term's
 * own cost, whatever the discriminator), the discriminator's forward + input gradient inside it, and
 * the discriminator's own update (a forward + backward pass on the source prediction, a backward pass on
 * the target's: its forward is the adversarial term's, kept).
 *
 * And what no implementation on this core could beat: D's multiply-adds per step (counted from its
 * layer shapes) at this core's wasm SIMD multiply-add peak, measured in the same run
 * (bench/multiply-add-peak.ts), added to the step without D and the target's pass through the net:
 * `boundRatio`, the lowest ratio a discriminator of this width and input size can have here.
 *
 *   npm run bench:warmup -- [--batch 4] [--source 72x128] [--target 64x128] [--ndf 16] [--steps 10] [--kernel-threads 1] [--json]
 */
import * as tf from '@tensorflow/tfjs';
import { parseCli, parseIntFlag, parseSize } from '../src/cli.ts';
import { selectBackend, BACKEND_REQUESTS, type BackendRequest } from '../src/ops/backend.ts';
import { bceWithLogits } from '../src/ops/losses.ts';
import { deeplabV2 } from '../src/ops/model/deeplab.ts';
import { discriminator, discriminatorMaps, disposeTrace } from '../src/ops/model/discriminator.ts';
import { Adam, SGD, gradients } from '../src/ops/optim.ts';
import { warmupStep, type WarmupNets, type WarmupStepOptions } from '../src/methods/warmup.ts';
import { discriminatorLoss } from '../src/methods/warmup-adversarial-shard.ts';
import { wasmThreadCount } from '../src/ops/wasm-threads.ts';
import { discriminatorStepMultiplyAdds } from './discriminator-cost.ts';
import { multiplyAddPeak } from './multiply-add-peak.ts';

const USAGE = `usage: npm run bench:warmup -- [options]
  --batch N        images per domain and step (default 4, the synthetic preset's)
  --source HxW     source crop (default 72x128)
  --target HxW     target crop (default 64x128)
  --classes K      classes (default 19)
  --ndf N          discriminator width (default 16, the synthetic preset's; the paper's is 64)
  --bn MODE        trainable (the synthetic preset) | frozen (the paper) (default trainable)
  --steps N        timed steps per variant, median reported (default 10)
  --backend NAME   auto | tensorflow | wasm | cpu (default wasm)
  --kernel-threads K  wasm kernel threads (tfjs-wasm's threaded build; default 1); the bound then
                   counts K cores at the one-core peak
  --json           print one JSON object instead of the table
  -h, --help       this text
Prints ms per warm-up step without and with the discriminator, the parts of the difference, the ratios,
and the lowest ratio D's arithmetic allows on this core (its multiply-adds at the measured wasm SIMD peak).`;

const cli = parseCli('bench:warmup', USAGE, {
  batch: { type: 'string', default: '4' },
  source: { type: 'string', default: '72x128' },
  target: { type: 'string', default: '64x128' },
  classes: { type: 'string', default: '19' },
  ndf: { type: 'string', default: '16' },
  bn: { type: 'string', default: 'trainable' },
  steps: { type: 'string', default: '10' },
  backend: { type: 'string', default: 'wasm' },
  'kernel-threads': { type: 'string', default: '1' },
  json: { type: 'boolean', default: false },
});
const a = cli.values;
const int = (flag: string, v: string, min = 1) => parseIntFlag(v, flag, min, cli.fail)!;
const batch = int('batch', a.batch);
const classes = int('classes', a.classes, 2);
const ndf = int('ndf', a.ndf);
const steps = int('steps', a.steps);
const kernelThreadsAsked = int('kernel-threads', a['kernel-threads']);
const [sh, sw] = parseSize(a.source, 'source', '72x128', cli.fail);
const [th, tw] = parseSize(a.target, 'target', '64x128', cli.fail);
if (a.bn !== 'trainable' && a.bn !== 'frozen') cli.fail(`--bn must be trainable or frozen, got '${a.bn}'`);
for (const [flag, size] of [
  ['source', [sh, sw]],
  ['target', [th, tw]],
] as const) {
  const [ph, pw] = discriminatorMaps(size).at(-1)!;
  if (ph < 1 || pw < 1)
    cli.fail(`--${flag} ${size[0]}x${size[1]} leaves the discriminator a ${ph}x${pw} patch map: at least 32 pixels a side`);
}
if (!BACKEND_REQUESTS.includes(a.backend as BackendRequest))
  cli.fail(`--backend must be one of ${BACKEND_REQUESTS.join(', ')}, got '${a.backend}'`);
const backend = await selectBackend(a.backend as BackendRequest, { log: () => {}, wasmThreads: kernelThreadsAsked });
/** The kernel threads the backend runs (1 off wasm, or where the threaded build could not start). */
const kernelThreads = backend === 'wasm' ? await wasmThreadCount() : 1;

const model = deeplabV2({ backbone: 'small', numClasses: classes, seed: 0, bn: a.bn as 'trainable' | 'frozen' });
const params = model.trainableParams();
const disc = discriminator({ numClasses: classes, ndf, seed: 17 });
const dParams = [...disc.store.params.values()];
const opt = new SGD([{ params, lrMult: 1 }]);
const dOpt = new Adam([{ params: dParams, lrMult: 1 }], { beta1: 0.9, beta2: 0.99 });
const source = tf.randomNormal([batch, sh, sw, 3], 0, 1, 'float32', 1) as tf.Tensor4D;
const labels = tf.randomUniformInt([batch, sh, sw], 0, classes, 2) as tf.Tensor3D;
const target = tf.randomNormal([batch, th, tw, 3], 0, 1, 'float32', 3) as tf.Tensor4D;
const probsS = tf.softmax(tf.randomNormal([batch, sh, sw, classes], 0, 1, 'float32', 4)) as tf.Tensor4D;
const probsT = tf.softmax(tf.randomNormal([batch, th, tw, classes], 0, 1, 'float32', 5)) as tf.Tensor4D;

/** Median ms of `steps` calls after two untimed ones; every result is read back (the work is done). */
function time(f: () => tf.Tensor | number): number {
  const run = () =>
    tf.tidy(() => {
      const r = f();
      if (typeof r !== 'number') r.dataSync();
    });
  run();
  run();
  const ms: number[] = [];
  for (let i = 0; i < steps; i++) {
    const t0 = performance.now();
    run();
    ms.push(performance.now() - t0);
  }
  return ms.sort((x, y) => x - y)[Math.floor(ms.length / 2)]!;
}

const base: Omit<WarmupStepOptions, 'targetStats'> = { lr: 1e-4, lrD: 1e-5, lambdaAdv: 0.001, temperature: 1.8, trackSource: false };
const plain: WarmupNets = { model, params, opt, disc: null };
const adversarialNets: WarmupNets = { ...plain, disc: { net: disc, params: dParams, opt: dOpt } };
const step = (nets: WarmupNets, withTarget: boolean, targetStats: boolean) => () =>
  warmupStep(nets, { source, labels, target: withTarget ? target : null }, { ...base, targetStats }).losses.total!;

const sourceOnly = time(step(plain, false, false));
const targetStats = time(step(plain, true, true));
const adversarial = time(step(adversarialNets, true, false));
// the parts: the target's pass through the net with a stand-in loss (no discriminator), the
// discriminator's forward + gradient w.r.t. its input, and its own update on the two predictions
const weights = tf.randomUniform([batch, th, tw, classes], 0, 1, 'float32', 6);
const targetPass = time(
  () =>
    gradients(() => {
      const lt = tf.image.resizeBilinear(model.forward(target, { training: true, trackStats: false }).logits, [th, tw], true);
      return tf.mean(tf.mul(tf.softmax(lt), weights)) as tf.Scalar;
    }, params).value,
);
// D's forward on the target prediction is run once (disc.trace) and serves both the input gradient
// and D's update (the step's way): it counts in the first part, the update reads the kept trace
const discInputGrad = time(() => {
  const t = disc.trace(probsT);
  const dx = disc.inputGradient(t, tf.grad((z: tf.Tensor) => bceWithLogits(z as tf.Tensor4D, 0))(t.logits) as tf.Tensor4D);
  disposeTrace(t);
  return dx;
});
const trace = disc.trace(probsT);
const discUpdate = time(() => gradients(() => discriminatorLoss(disc, { source: probsS, target: probsT, trace }), dParams).value);
disposeTrace(trace);
const noDisc = a.bn === 'trainable' ? targetStats : sourceOnly;
const dMultiplyAdds = discriminatorStepMultiplyAdds(classes, ndf, batch, [sh, sw], [th, tw]);
const peak = multiplyAddPeak();
/** D's multiply-adds at the fused peak (the faster of the two) on every kernel thread's core, in ms. */
const discAtPeak = dMultiplyAdds / (peak.fused * kernelThreads) / 1e6;
const result = {
  backend,
  batch,
  source: [sh, sw],
  target: [th, tw],
  ndf,
  bn: a.bn,
  kernelThreads,
  msPerStep: { sourceOnly, targetStats, adversarial },
  parts: { targetPassThroughNet: targetPass, discriminatorForwardAndInputGradient: discInputGrad, discriminatorUpdate: discUpdate },
  /** The step with the discriminator over the step without it (the preset's: target BN statistics with trainable BN). */
  ratio: adversarial / noDisc,
  /** The same ratio if the discriminator cost nothing: the source step plus the target's pass through the net. */
  floorRatio: (sourceOnly + targetPass) / noDisc,
  /** D's multiply-adds in one warm-up step (`discriminatorStepMultiplyAdds`). */
  discriminatorMultiplyAdds: dMultiplyAdds,
  /** D's rate in this run: its multiply-adds over the time of its two parts, GMAC/s. */
  discriminatorGmacPerS: dMultiplyAdds / (discInputGrad + discUpdate) / 1e6,
  /** One core's wasm SIMD multiply-add peak, measured in this run, GMAC/s (multiply then add; fused). */
  peakGmacPerS: peak,
  /** The floor plus D's multiply-adds at the fused peak of `kernelThreads` cores: no discriminator of this size runs below it here. */
  boundRatio: (sourceOnly + targetPass + discAtPeak) / noDisc,
};
if (a.json) {
  console.log(JSON.stringify(result));
} else {
  const f = (x: number) => x.toFixed(1);
  console.log(
    `warm-up step, small DeepLab-v2, ${a.bn} BN, batch ${batch}, source ${sh}x${sw}, target ${th}x${tw}, ndf ${ndf}, ${backend}` +
      (kernelThreads > 1 ? `, ${kernelThreads} kernel threads` : ''),
  );
  console.log(`step | ms (median of ${steps})`);
  console.log(`source CE only (the paper's step without the term) | ${f(sourceOnly)}`);
  console.log(`+ target forward for BN statistics (the synthetic preset's) | ${f(targetStats)}`);
  console.log(`with the discriminator (lambda_adv > 0) | ${f(adversarial)}`);
  console.log(`  part: target forward + backward through the net (no D) | ${f(targetPass)}`);
  console.log(`  part: D forward + gradient w.r.t. its input | ${f(discInputGrad)}`);
  console.log(`  part: D update (source forward + backward, target backward) | ${f(discUpdate)}`);
  console.log(`with / without the discriminator: ${result.ratio.toFixed(2)}x; floor if D were free: ${result.floorRatio.toFixed(2)}x`);
  console.log(
    `D: ${f(dMultiplyAdds / 1e6)} M multiply-adds a step, ${f(result.discriminatorGmacPerS)} GMAC/s here; one core's wasm SIMD peak ` +
      `${f(peak.separate)} GMAC/s (multiply, add), ${f(peak.fused)} (fused): D >= ${f(discAtPeak)} ms on ${kernelThreads} core(s), ratio >= ${result.boundRatio.toFixed(2)}x`,
  );
}
tf.dispose([source, labels, target, probsS, probsT, weights]);
opt.dispose();
dOpt.dispose();
disc.dispose();
model.dispose();

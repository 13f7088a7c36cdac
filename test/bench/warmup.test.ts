/**
 * bench:warmup's bound on the discriminator's cost (issue 14): D's multiply-adds counted from its layer
 * shapes against a hand computation and against the convolutions a real warm-up step runs, the wasm SIMD
 * peak loops' arithmetic and committed bytes, and the bound in the bench's report recomputed from its
 * own fields.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import wabtInit from 'wabt';
import { discriminatorStepMultiplyAdds } from '../../bench/discriminator-cost.ts';
import { MULTIPLY_ADDS_PER_STEP, multiplyAddPeak, peakLoops } from '../../bench/multiply-add-peak.ts';
import { warmupStep } from '../../src/methods/warmup.ts';
import { deeplabV2 } from '../../src/ops/model/deeplab.ts';
import { discriminator, discriminatorMultiplyAdds, disposeTrace } from '../../src/ops/model/discriminator.ts';
import { Adam, SGD } from '../../src/ops/optim.ts';
import { useBackend } from '../helpers.ts';

const root = new URL('../../', import.meta.url).pathname;

test('discriminatorMultiplyAdds: output pixels x out channels x 16 taps x in channels per conv, by hand and by the traced shapes', async () => {
  await useBackend('cpu');
  // K = 3, ndf = 2, two 32x32 maps: convs to 16x16x2, 8x8x4, 4x4x8, 2x2x16, 1x1x1
  const counts = discriminatorMultiplyAdds(3, 2, [2, 32, 32]);
  assert.deepEqual(counts, [
    2 * 16 * 16 * 2 * 16 * 3,
    2 * 8 * 8 * 4 * 16 * 2,
    2 * 4 * 4 * 8 * 16 * 4,
    2 * 2 * 2 * 16 * 16 * 8,
    2 * 1 * 1 * 1 * 16 * 16,
  ]);
  assert.deepEqual(counts, [49_152, 16_384, 16_384, 16_384, 512]);
  // odd sizes round down as the convs do: 18x20 -> 9x10 -> 4x5 -> 2x2 -> 1x1 -> 0x0 (nothing left to multiply)
  const disc = discriminator({ numClasses: 3, ndf: 2, seed: 1 });
  const probs = tf.softmax(tf.randomNormal([1, 18, 20, 3], 0, 1, 'float32', 2)) as tf.Tensor4D;
  const t = disc.trace(probs);
  const outs = [...t.pre, t.logits];
  const widthsIn = [3, 2, 4, 8, 16];
  assert.deepEqual(
    discriminatorMultiplyAdds(3, 2, [1, 18, 20]),
    outs.map((o, i) => o.size * 16 * widthsIn[i]!),
  );
  assert.deepEqual(discriminatorMultiplyAdds(3, 2, [1, 18, 20]), [
    9 * 10 * 2 * 16 * 3,
    4 * 5 * 4 * 16 * 2,
    2 * 2 * 8 * 16 * 4,
    1 * 1 * 16 * 16 * 8,
    0,
  ]);
  disposeTrace(t);
  tf.dispose(probs);
  disc.dispose();
});

test("discriminatorStepMultiplyAdds counts the multiply-adds of every convolution of D's that a warm-up step runs", async () => {
  await useBackend('wasm');
  // ndf 5: D's (in, out) channel pairs (5, 5), (5, 10), (10, 20), (20, 40), (40, 1) are none of the net's
  const [classes, ndf, batch] = [5, 5, 2];
  const model = deeplabV2({ backbone: 'small', numClasses: classes, seed: 3 });
  const params = model.trainableParams();
  const disc = discriminator({ numClasses: classes, ndf, seed: 4 });
  const dParams = [...disc.store.params.values()];
  const opt = new SGD([{ params, lrMult: 1 }]);
  const dOpt = new Adam([{ params: dParams, lrMult: 1 }], { beta1: 0.9, beta2: 0.99 });
  const source = tf.randomNormal([batch, 40, 48, 3], 0, 1, 'float32', 5) as tf.Tensor4D;
  const labels = tf.randomUniformInt([batch, 40, 48], 0, classes, 6) as tf.Tensor3D;
  const target = tf.randomNormal([batch, 32, 64, 3], 0, 1, 'float32', 7) as tf.Tensor4D;
  const options = { lr: 1e-4, lrD: 1e-5, lambdaAdv: 0.001, temperature: 1.8, trackSource: false, targetStats: false };
  const nets = { model, params, opt, disc: { net: disc, params: dParams, opt: dOpt } };
  const info = await tf.profile(() => {
    tf.tidy(() => {
      warmupStep(nets, { source, labels, target }, options);
    });
  });
  // D's forward and input-gradient convs are the step's only ones with 4x4 filters (the net has 1x1, 3x3
  // and 7x7; the stacked convs inside an input gradient are 2x2 and are not counted twice); its weight
  // gradients are the ones whose x and dy have D's channel pairs
  const sizeOf = (s: number[]) => s.reduce((p, q) => p * q, 1);
  const pairs = new Set(['5,5', '5,10', '10,20', '20,40', '40,1']);
  let counted = 0;
  const calls: Record<string, number> = {};
  for (const k of info.kernels) {
    const shapes = k.inputShapes as number[][];
    let macs = 0;
    if (k.name === 'Conv2D' && shapes[1]![0] === 4 && shapes[1]![1] === 4) {
      const [, , cin, cout] = shapes[1]!;
      const [n, h, w] = shapes[0]!;
      macs = n! * Math.floor(h! / 2) * Math.floor(w! / 2) * cout! * 16 * cin!; // a 4x4 stride-2 pad-1 conv halves h and w (floor)
    } else if (k.name === 'Conv2DBackpropInput' && shapes[1]![0] === 4 && shapes[1]![1] === 4) {
      macs = sizeOf(shapes[0]!) * 16 * shapes[1]![2]!; // dy's elements x taps x input channels
    } else if (k.name === 'Conv2DBackpropFilter' && pairs.has(`${shapes[0]![3]},${shapes[1]![3]}`)) {
      const [, , , cin] = shapes[0]!;
      macs = sizeOf(shapes[1]!) * 16 * cin!; // dy's elements x taps x input channels
    } else continue;
    calls[k.name] = (calls[k.name] ?? 0) + 1;
    counted += macs;
  }
  // 2 forwards of 5 convs; input gradients: 5 (target, adversarial) + 4 + 4 (D's update); weight gradients 5 + 5
  assert.deepEqual(calls, { Conv2D: 10, Conv2DBackpropInput: 13, Conv2DBackpropFilter: 10 });
  assert.equal(counted, discriminatorStepMultiplyAdds(classes, ndf, batch, [40, 48], [32, 64]));
  tf.dispose([source, labels, target]);
  opt.dispose();
  dOpt.dispose();
  disc.dispose();
  model.dispose();
});

test('the multiply-add peak loops: 66 + 12 n c with m = 1 in both, the committed bytes what wabt assembles, rates measured', async () => {
  const loops = peakLoops();
  for (const loop of [loops.separate, loops.fused]) {
    assert.equal(loop(0, 1, 0.5), 66);
    assert.equal(loop(3, 1, 0.5), 66 + 12 * 3 * 0.5);
    assert.equal(loop(1000, 1, 0.25), 66 + 12 * 1000 * 0.25);
    // m = 2, c = 1, one step: a_k = 2k + 1, summed over k < 12
    assert.equal(loop(1, 2, 1), 2 * 66 + 12);
  }
  const wabt = await wabtInit();
  const dir = join(root, 'bench/wasm');
  const module = wabt.parseWat('multiply-add-peak.wat', readFileSync(join(dir, 'multiply-add-peak.wat'), 'utf8'), { relaxed_simd: true });
  const { buffer } = module.toBinary({});
  module.destroy();
  assert.deepEqual(new Uint8Array(buffer), new Uint8Array(readFileSync(join(dir, 'multiply-add-peak.wasm'))));
  assert.equal(MULTIPLY_ADDS_PER_STEP, 12 * 4);
  const peak = multiplyAddPeak(5, 1);
  assert.ok(peak.separate > 0.1 && peak.fused > 0.1, JSON.stringify(peak));
});

test('bench:warmup --json at 2 kernel threads: D counted for the sizes asked, its bound recomputed from the report', () => {
  const r = spawnSync(
    process.execPath,
    [
      join(root, 'bench/warmup-step.ts'),
      '--batch',
      '1',
      '--source',
      '40x32',
      '--target',
      '32x32',
      '--classes',
      '4',
      '--ndf',
      '4',
      '--steps',
      '1',
      '--kernel-threads',
      '2',
      '--json',
    ],
    { cwd: root, encoding: 'utf8', timeout: 120_000 },
  );
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.equal(out.discriminatorMultiplyAdds, discriminatorStepMultiplyAdds(4, 4, 1, [40, 32], [32, 32]));
  const { sourceOnly, targetStats } = out.msPerStep;
  const { targetPassThroughNet, discriminatorForwardAndInputGradient, discriminatorUpdate } = out.parts;
  assert.ok(out.peakGmacPerS.separate > 0 && out.peakGmacPerS.fused > 0);
  assert.equal(out.kernelThreads, 2);
  // D at the fused peak of one core, on each of the two kernel threads' cores
  const atPeak = out.discriminatorMultiplyAdds / (out.peakGmacPerS.fused * 2) / 1e6;
  assert.ok(Math.abs(out.boundRatio - (sourceOnly + targetPassThroughNet + atPeak) / targetStats) < 1e-12);
  assert.ok(
    Math.abs(
      out.discriminatorGmacPerS - out.discriminatorMultiplyAdds / (discriminatorForwardAndInputGradient + discriminatorUpdate) / 1e6,
    ) < 1e-12,
  );
  assert.ok(out.boundRatio > out.floorRatio);
});

test('bench:warmup refuses a crop that leaves the discriminator no patch, naming the flag (exit 2, before any backend starts)', () => {
  const r = spawnSync(process.execPath, [join(root, 'bench/warmup-step.ts'), '--target', '16x32', '--steps', '1'], {
    cwd: root,
    encoding: 'utf8',
    timeout: 60_000,
  });
  assert.equal(r.status, 2, r.stderr);
  assert.equal(r.stderr.split('\n')[0], 'bench:warmup: --target 16x32 leaves the discriminator a 0x1 patch map: at least 32 pixels a side');
  assert.equal(r.stdout, '');
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { deeplabV2, type SegModel } from '../../src/ops/model/deeplab.ts';
import { discriminator, disposeTrace } from '../../src/ops/model/discriminator.ts';
import { batchNormLayer, setHostBatchNorm, setHostRunningStats, type BatchNormState } from '../../src/ops/model/layers.ts';
import { ParamStore } from '../../src/ops/model/params.ts';
import { SGD, gradients } from '../../src/ops/optim.ts';
import { segCrossEntropy } from '../../src/ops/losses.ts';
import { assertClose, assertSameBits, seededValues, useBackend, withSwitch } from '../helpers.ts';

function countParams(m: SegModel, group: 'backbone' | 'classifier'): number {
  let n = 0;
  for (const p of m.store.params.values()) if (p.group === group && p.role !== 'bn-stat') n += p.variable.size;
  return n;
}

test('parameter counts equal torchvision (ResNet-101/50 without fc, VGG-16 features + fc6/fc7) and the ASPP', async () => {
  await useBackend('cpu');
  const cases: [Parameters<typeof deeplabV2>[0]['backbone'], number, number][] = [
    // torchvision resnet101: 44,549,160 params minus fc (2048*1000 + 1000).
    ['resnet101', 44_549_160 - 2_049_000, 2048],
    ['resnet50', 25_557_032 - 2_049_000, 2048],
    // VGG-16 convs 14,714,688 + fc6 (3*3*512*1024 + 1024) + fc7 (3*3*1024*1024 + 1024).
    ['vgg16', 14_714_688 + 4_719_616 + 9_438_208, 1024],
  ];
  for (const [backbone, expected, channels] of cases) {
    const m = deeplabV2({ backbone, numClasses: 19 });
    assert.equal(countParams(m, 'backbone'), expected, backbone);
    assert.equal(m.featureChannels, channels);
    // ASPP: 4 x (3*3*C*K + K)
    assert.equal(countParams(m, 'classifier'), 4 * (9 * channels * 19 + 19), `${backbone} ASPP`);
    m.dispose();
  }
  assert.equal(tf.memory().numTensors, 0);
});

test('torchvision names and HWIO shapes, layer4 first block has a 1x1 stride-1 projection', async () => {
  await useBackend('cpu');
  const m = deeplabV2({ backbone: 'resnet50', numClasses: 19 });
  const shape = (n: string) => m.store.get(n).shape;
  assert.deepEqual(shape('backbone.conv1.weight'), [7, 7, 3, 64]);
  assert.deepEqual(shape('backbone.layer1.0.downsample.0.weight'), [1, 1, 64, 256]);
  assert.deepEqual(shape('backbone.layer3.5.conv2.weight'), [3, 3, 256, 256]);
  assert.deepEqual(shape('backbone.layer4.0.downsample.1.running_var'), [2048]);
  assert.deepEqual(shape('backbone.layer4.2.conv3.weight'), [1, 1, 512, 2048]);
  assert.deepEqual(shape('classifier.conv2d_list.3.bias'), [19]);
  assert.equal(m.store.params.has('backbone.layer3.1.downsample.0.weight'), false);
  m.dispose();
});

test('output stride 8 with PyTorch floor arithmetic: 720x1280 -> 90x160, 512x1024 -> 64x128, odd sizes', async () => {
  await useBackend('wasm');
  const small = deeplabV2({ backbone: 'small', numClasses: 19 });
  for (const [h, w, fh, fw] of [
    [720, 1280, 90, 160],
    [512, 1024, 64, 128],
    [65, 97, 9, 13],
  ] as const) {
    const out = tf.tidy(() => {
      const r = small.forward(tf.zeros([1, h, w, 3]) as tf.Tensor4D);
      return [r.features.shape, r.logits.shape];
    });
    assert.deepEqual(out[0], [1, fh, fw, 256]);
    assert.deepEqual(out[1], [1, fh, fw, 19]);
  }
  small.dispose();
  const r101 = deeplabV2({ backbone: 'resnet101', numClasses: 19 });
  const shapes = tf.tidy(() => {
    const r = r101.forward(tf.randomNormal([1, 65, 97, 3], 0, 1, 'float32', 3) as tf.Tensor4D);
    // features are post-ReLU
    assert.ok(r.features.min().dataSync()[0]! >= 0);
    return [r.features.shape, r.logits.shape];
  });
  assert.deepEqual(shapes, [
    [1, 9, 13, 2048],
    [1, 9, 13, 19],
  ]);
  r101.dispose();
  const vgg = deeplabV2({ backbone: 'vgg16', numClasses: 16, vggWidthDivisor: 16 });
  const vshape = tf.tidy(() => vgg.forward(tf.zeros([1, 64, 128, 3]) as tf.Tensor4D).logits.shape);
  assert.deepEqual(vshape, [1, 8, 16, 16]);
  vgg.dispose();
});

test('frozen BN is eps-free y = x*w/sqrt(var) + (b - mean*w/sqrt(var)); trainable BN uses batch stats and momentum 0.1', async () => {
  await useBackend('cpu');
  const store = new ParamStore(0);
  const state: BatchNormState = { mode: 'frozen', training: true, track: true };
  const bn = batchNormLayer(store, 'bn', 'backbone', 2, state);
  store.get('bn.weight').assign(tf.tensor1d([2, 0.5]));
  store.get('bn.bias').assign(tf.tensor1d([1, -1]));
  store.get('bn.running_mean').assign(tf.tensor1d([0.5, -2]));
  store.get('bn.running_var').assign(tf.tensor1d([4, 0.25]));
  const xs = [1, 3, -1, 0, 2, 5, 0.5, -4]; // [1,2,2,2]
  const x = tf.tensor4d(xs, [1, 2, 2, 2]);
  const frozen = bn(x).dataSync();
  const expectFrozen = xs.map((v, i) => (i % 2 === 0 ? ((v - 0.5) * 2) / 2 + 1 : ((v + 2) * 0.5) / 0.5 - 1));
  assertClose(frozen, expectFrozen, 1e-6, 'frozen BN');
  state.mode = 'trainable';
  const trained = bn(x).dataSync();
  // channel 0 values 1,-1,2,0.5: mean 0.625, biased var; channel 1: 3,0,5,-4
  const ch = [
    [1, -1, 2, 0.5],
    [3, 0, 5, -4],
  ];
  const stats = ch.map((v) => {
    const m = v.reduce((a, b) => a + b) / 4;
    const varB = v.reduce((a, b) => a + (b - m) ** 2, 0) / 4;
    return { m, varB, varU: (varB * 4) / 3 };
  });
  const expectTrained = xs.map((v, i) => {
    const c = i % 2;
    const s = stats[c]!;
    return ((v - s.m) / Math.sqrt(s.varB + 1e-5)) * [2, 0.5][c]! + [1, -1][c]!;
  });
  assertClose(trained, expectTrained, 1e-5, 'trainable BN');
  assertClose(store.get('bn.running_mean').dataSync(), [0.9 * 0.5 + 0.1 * stats[0]!.m, 0.9 * -2 + 0.1 * stats[1]!.m], 1e-6, 'running mean');
  assertClose(
    store.get('bn.running_var').dataSync(),
    [0.9 * 4 + 0.1 * stats[0]!.varU, 0.9 * 0.25 + 0.1 * stats[1]!.varU],
    1e-6,
    'running var',
  );
  // track = false (a source batch under model.bnStats 'target'): the same batch-statistics output, buffers untouched
  const meanBefore = Array.from(store.get('bn.running_mean').dataSync());
  const varBefore = Array.from(store.get('bn.running_var').dataSync());
  state.track = false;
  assertClose(bn(x).dataSync(), expectTrained, 1e-5, 'trainable BN without tracking');
  assert.deepEqual(Array.from(store.get('bn.running_mean').dataSync()), meanBefore);
  assert.deepEqual(Array.from(store.get('bn.running_var').dataSync()), varBefore);
  tf.dispose(x);
  store.dispose();
});

test('trainable BN in training mode: its one-formula gradient (dx, d gamma, d beta) equals tfjs autodiff through moments + batchNorm4d, and finite differences; with a one-replica sum too', async () => {
  await useBackend('cpu');
  const store = new ParamStore(0);
  const state: BatchNormState = { mode: 'trainable', training: true, track: false };
  const bn = batchNormLayer(store, 'bn', 'backbone', 3, state);
  const [gamma, beta] = [store.get('bn.weight'), store.get('bn.bias')];
  gamma.assign(tf.tensor1d([0.7, 1.3, -0.4]));
  beta.assign(tf.tensor1d([0.1, -0.2, 0.3]));
  gamma.trainable = true;
  beta.trainable = true;
  const x = tf.variable(
    tf.tensor4d(
      seededValues(2 * 3 * 4 * 3, 11).map((v) => 3 * v + 1),
      [2, 3, 4, 3],
    ),
    true,
  );
  const w = tf.tensor4d(seededValues(2 * 3 * 4 * 3, 12), [2, 3, 4, 3]);
  // a loss that is not linear in the BN output, so every term of the gradient matters
  const lossOf = (f: (x: tf.Tensor4D) => tf.Tensor4D, xx: tf.Tensor4D = x as tf.Tensor4D) =>
    tf.sum(tf.mul(tf.square(tf.relu(f(xx))), w)) as tf.Scalar;
  const reference = (xx: tf.Tensor4D) => {
    const m = tf.moments(xx, [0, 1, 2]);
    return tf.batchNorm4d(xx, m.mean as tf.Tensor1D, m.variance as tf.Tensor1D, beta as tf.Tensor1D, gamma as tf.Tensor1D, 1e-5);
  };
  const grads = (f: (x: tf.Tensor4D) => tf.Tensor4D) => {
    const { grads: g } = tf.variableGrads(() => lossOf(f), [x, gamma, beta]);
    return [x, gamma, beta].map((v) => Array.from(g[v.name]!.dataSync()));
  };
  const [ours, ref] = [grads(bn), grads(reference)];
  state.sum = (v) => Float32Array.from(v);
  const synced = grads(bn);
  state.sum = null;
  for (const [i, name] of ['dx', 'd gamma', 'd beta'].entries()) {
    assertClose(ours[i]!, ref[i]!, 1e-4, `${name}: formula vs autodiff`);
    assertClose(synced[i]!, ref[i]!, 1e-4, `${name}: one-replica sum vs autodiff`);
  }
  // central finite differences on a few input entries (float32: h 1e-2, loose tolerance)
  const f = (values: Float32Array) =>
    tf.tidy(() => lossOf(bn, tf.tensor4d(values, x.shape as [number, number, number, number])).dataSync()[0]!);
  const flat = x.dataSync() as Float32Array;
  for (const i of [0, 7, 29, 70]) {
    const h = 1e-2;
    const plus = flat.slice();
    const minus = flat.slice();
    plus[i]! += h;
    minus[i]! -= h;
    const fd = (f(plus) - f(minus)) / (2 * h);
    assert.ok(
      Math.abs(fd - ours[0]![i]!) < 2e-2 * Math.max(1, Math.abs(fd)),
      `dx[${i}]: formula ${ours[0]![i]} vs finite difference ${fd}`,
    );
  }
  tf.dispose([x, w]);
  store.dispose();
});

for (const backend of ['cpu', 'wasm'] as const) {
  test(`trainable BN on ${backend}: the running statistics' host loop gives its six kernels' bits over four batches (257 channels, one far from zero)`, async () => {
    await useBackend(backend);
    const run = (host: boolean) =>
      withSwitch(setHostRunningStats, host, () => {
        const store = new ParamStore(0);
        const state: BatchNormState = { mode: 'trainable', training: true, track: true };
        const bn = batchNormLayer(store, 'bn', 'backbone', 257, state);
        tf.tidy(() => {
          store.get('bn.running_mean').assign(tf.tensor1d(seededValues(257, 5).map((v) => 3 * v)));
          store.get('bn.running_var').assign(tf.tensor1d(seededValues(257, 6).map((v) => v * v + 0.5)));
        });
        for (const seed of [7, 8, 9, 10]) {
          tf.tidy(() => {
            const x = tf.tensor4d(
              seededValues(2 * 3 * 5 * 257, seed).map((v, i) => 2.5 * v + (i % 257 === 4 ? 300 : 0.1)),
              [2, 3, 5, 257],
            );
            bn(x);
          });
        }
        const out = ['running_mean', 'running_var'].map((n) => store.get(`bn.${n}`).dataSync().slice());
        store.dispose();
        return out;
      });
    const before = tf.memory().numTensors;
    const host = run(true);
    assert.equal(tf.memory().numTensors, before, 'the host loop leaks tensors');
    const kernels = run(false);
    for (const [i, name] of ['running mean', 'running var'].entries()) {
      const k = host[i]!.findIndex((v, j) => !Object.is(v, kernels[i]![j]));
      assert.equal(k, -1, `${name}[${k}]: ${host[i]![k]} from the loop, ${kernels[i]![k]} from the kernels`);
    }
    assert.ok(
      Math.abs(host[0]![4]! - 0.6561 * 3 * seededValues(257, 5)[4]! - 0.3439 * 300) < 1,
      `running mean of the offset channel: ${host[0]![4]}`,
    );
  });

  test(`trainable BN on ${backend}: the host loops equal the tensor formula (output, running statistics, dx, d gamma, d beta), an offset input and a replica sum included`, async () => {
    await useBackend(backend);
    const shape: [number, number, number, number] = [3, 5, 7, 6];
    const size = shape.reduce((a, b) => a * b);
    // channel 2 sits far from zero (mean ~100, std ~3): the shift must not cancel away the signal
    const xs = seededValues(size, 31).map((v, i) => 3 * v + (i % 6 === 2 ? 100 : 0.5));
    const w = tf.tensor4d(seededValues(size, 32), shape);
    const run = (host: boolean, sum: ((v: Float32Array) => Float32Array) | null) => {
      setHostBatchNorm(host);
      const store = new ParamStore(0);
      try {
        const state: BatchNormState = { mode: 'trainable', training: true, track: true, sum };
        const bn = batchNormLayer(store, 'bn', 'backbone', 6, state);
        const [gamma, beta] = [store.get('bn.weight'), store.get('bn.bias')];
        gamma.assign(tf.tensor1d([0.7, 1.3, -0.4, 2, 0.05, 1]));
        beta.assign(tf.tensor1d([0.1, -0.2, 0.3, 0, 1, -1]));
        gamma.trainable = true;
        beta.trainable = true;
        const x = tf.variable(tf.tensor4d(xs, shape), true);
        let y: number[] = [];
        const before = tf.memory().numTensors;
        const { value, grads } = tf.variableGrads(() => {
          const out = bn(x as tf.Tensor4D);
          y = Array.from(out.dataSync());
          return tf.sum(tf.mul(tf.square(tf.relu(out)), w)) as tf.Scalar;
        }, [x, gamma, beta]);
        const g = [x, gamma, beta].map((v) => Array.from(grads[v.name]!.dataSync()));
        tf.dispose([value, ...Object.values(grads)]);
        assert.equal(tf.memory().numTensors, before, `a training step through BN leaves no tensor behind (host ${host})`);
        const running = ['bn.running_mean', 'bn.running_var'].map((n) => Array.from(store.get(n).dataSync()));
        x.dispose();
        return { y, g, running };
      } finally {
        store.dispose();
        setHostBatchNorm(true);
      }
    };
    for (const sum of [null, (v: Float32Array) => Float32Array.from(v)]) {
      const [host, formula] = [run(true, sum), run(false, sum)];
      const what = sum ? 'with a one-replica sum' : 'alone';
      assertClose(host.y, formula.y, 2e-5, `y ${what}`);
      assertClose(host.running[0]!, formula.running[0]!, 1e-6, `running mean ${what}`);
      assertClose(host.running[1]!, formula.running[1]!, 1e-5, `running var ${what}`);
      for (const [i, name] of ['dx', 'd gamma', 'd beta'].entries()) assertClose(host.g[i]!, formula.g[i]!, 2e-4, `${name} ${what}`);
    }
    w.dispose();
  });
}

test('deeplabV2.forward trackStats: false leaves every running statistic as it was; true moves them', async () => {
  await useBackend('cpu');
  const m = deeplabV2({ backbone: 'small', numClasses: 5, bn: 'trainable' });
  const stats = () => [...m.store.params.values()].filter((p) => p.role === 'bn-stat').map((p) => Array.from(p.variable.dataSync()));
  const x = tf.randomNormal([2, 32, 32, 3], 0, 1, 'float32', 3) as tf.Tensor4D;
  const before = stats();
  tf.dispose(Object.values(m.forward(x, { training: true, trackStats: false })));
  assert.deepEqual(stats(), before);
  tf.dispose(Object.values(m.forward(x, { training: true })));
  const after = stats();
  assert.equal(after.length, before.length);
  assert.ok(
    after.every((s, i) => s.some((v, j) => v !== before[i]![j])),
    'a tracked training forward updates every BN layer',
  );
  tf.dispose(x);
  m.dispose();
});

test('BN switch: trainable mode adds BN gamma/beta to the trained parameters', async () => {
  await useBackend('cpu');
  const m = deeplabV2({ backbone: 'small', numClasses: 5 });
  const frozenCount = m.trainableParams().length;
  m.setBatchNorm('trainable');
  const bnAffine = [...m.store.params.values()].filter((p) => p.role === 'bn-affine').length;
  assert.equal(m.trainableParams().length, frozenCount + bnAffine);
  assert.ok(bnAffine > 0);
  m.dispose();
});

/** One SGD step of the small model on the current backend; returns gradients by name and the loss. */
function smallModelStep(steps: number) {
  const m = deeplabV2({ backbone: 'small', numClasses: 7, seed: 5 });
  const params = m.trainableParams();
  const opt = new SGD([
    { params: params.filter((p) => p.group === 'backbone'), lrMult: 1 },
    { params: params.filter((p) => p.group === 'classifier'), lrMult: 10 },
  ]);
  // A learnable scene: 8-pixel-wide vertical stripes whose class sets the colour, plus noise; a few
  // pixels ignored (255).
  const noise = seededValues(2 * 32 * 48 * 4, 11);
  const labelValues: number[] = [];
  const pixels: number[] = [];
  for (let i = 0; i < 2 * 32 * 48; i++) {
    const col = i % 48;
    const img = Math.floor(i / (32 * 48));
    const cls = (Math.floor(col / 8) + img) % 7;
    labelValues.push(noise[4 * i + 3]! > 0.9 ? 255 : cls);
    for (let c = 0; c < 3; c++) pixels.push(Math.cos(cls * (c + 1)) + 0.3 * noise[4 * i + c]!);
  }
  const x = tf.tensor4d(pixels, [2, 32, 48, 3]);
  const labels = tf.tensor3d(labelValues, [2, 32, 48], 'int32');
  const before = tf.memory().numTensors;
  const losses: number[] = [];
  let firstGrads: Map<string, Float32Array> | null = null;
  for (let i = 0; i < steps; i++) {
    tf.tidy(() => {
      const { value, grads } = gradients(() => {
        const { logits } = m.forward(x, { training: true });
        return segCrossEntropy(tf.image.resizeBilinear(logits, [32, 48], true), labels);
      }, params);
      if (!firstGrads) firstGrads = new Map([...grads].map(([k, g]) => [k, g.dataSync() as Float32Array]));
      opt.step(grads, 0.05);
      losses.push(value.dataSync()[0]!);
    });
  }
  const after = tf.memory().numTensors;
  tf.dispose([x, labels]);
  opt.dispose();
  m.dispose();
  return { grads: firstGrads! as Map<string, Float32Array>, losses, before, after };
}

test('a full forward+backward+SGD step of the small model gives the same gradients on wasm and cpu', async () => {
  await useBackend('cpu');
  const ref = smallModelStep(1);
  await useBackend('wasm');
  const got = smallModelStep(1);
  assert.equal(got.grads.size, ref.grads.size);
  // 17 backbone convs (stem, 4 x 3 bottleneck convs, 4 projections) + 4 ASPP weights and biases.
  assert.equal(ref.grads.size, 25);
  for (const [name, g] of ref.grads) assertClose(got.grads.get(name)!, g, 1e-4, name);
  assertClose(got.losses, ref.losses, 1e-5, 'loss');
});

test('tf.memory().numTensors is identical before and after 20 training steps on wasm, and the loss falls', async () => {
  await useBackend('wasm');
  const r = smallModelStep(20);
  assert.equal(r.after, r.before);
  assert.ok(r.losses[19]! < r.losses[0]! * 0.7, `loss ${r.losses[0]} -> ${r.losses[19]}`);
});

test('discriminator: five 4x4/2 convs, patch logits 16x32 for 512x1024 and 22x40 for 720x1280', async () => {
  await useBackend('wasm');
  const d = discriminator({ numClasses: 19, ndf: 2 });
  for (const [h, w, oh, ow] of [
    [512, 1024, 16, 32],
    [720, 1280, 22, 40],
  ] as const) {
    const s = tf.tidy(() => d.forward(tf.fill([1, h, w, 19], 1 / 19) as tf.Tensor4D).shape);
    assert.deepEqual(s, [1, oh, ow, 1]);
  }
  assert.deepEqual(d.store.get('conv4.weight').shape, [4, 4, 8, 16]);
  assert.throws(
    () => d.forward(tf.zeros([1, 8, 8, 3]) as tf.Tensor4D),
    /discriminator: expected softmax maps \[B,H,W,19\], got shape \[1,8,8,3\]/,
  );
  d.dispose();
  const full = discriminator({ numClasses: 19 });
  let n = 0;
  for (const p of full.store.params.values()) n += p.variable.size;
  // AdaptSegNet FCDiscriminator with K=19: sum of 4*4*cin*cout + cout
  const widths = [19, 64, 128, 256, 512, 1];
  assert.equal(
    n,
    widths.slice(0, 5).reduce((a, cin, i) => a + 16 * cin * widths[i + 1]! + widths[i + 1]!, 0),
  );
  full.dispose();
});

test('discriminator trace: its two backward passes are the bits of tfjs autodiff through forward (wasm and cpu)', async () => {
  for (const backend of ['wasm', 'cpu'] as const) {
    await useBackend(backend);
    const d = discriminator({ numClasses: 5, ndf: 4, seed: 3 });
    const vars = [...d.store.params.values()].map((p) => p.variable);
    const probs = tf.softmax(tf.mul(tf.tensor4d(seededValues(2 * 32 * 64 * 5, 7), [2, 32, 64, 5]), 3)) as tf.Tensor4D;
    // a loss whose gradient reaches every patch differently: sum(logits * u)
    const u = tf.tensor4d(seededValues(2 * 1 * 2 * 1, 8), [2, 1, 2, 1]);
    const loss = (logits: tf.Tensor4D) => tf.sum(tf.mul(logits, u)) as tf.Scalar;
    const t = d.trace(probs);
    assert.deepEqual(t.logits.shape, [2, 1, 2, 1]);
    assert.deepEqual(
      t.pre.map((x) => x.shape),
      [
        [2, 16, 32, 4],
        [2, 8, 16, 8],
        [2, 4, 8, 16],
        [2, 2, 4, 32],
      ],
    );
    const expectLogits = d.forward(probs);
    assertSameBits(t.logits, expectLogits, `${backend}: traced logits`);
    const dLogits = tf.grad((z: tf.Tensor) => loss(z as tf.Tensor4D))(t.logits) as tf.Tensor4D;
    // d loss / d input, D's weights fixed
    const expectDx = tf.grad((p: tf.Tensor) => loss(d.forward(p as tf.Tensor4D)))(probs);
    const dx = d.inputGradient(t, dLogits);
    assert.ok(tf.max(tf.abs(expectDx)).dataSync()[0]! > 0);
    assertSameBits(dx, expectDx, `${backend}: input gradient`);
    // d loss / d weights
    const expect = tf.variableGrads(() => loss(d.forward(probs)), vars).grads;
    const grads = d.weightGradients(t, dLogits);
    assert.equal(grads.size, 10);
    for (const [name, g] of grads) {
      const e = expect[d.store.get(name).name]!;
      assertSameBits(g, e, `${backend}: ${name}`);
    }
    // and the weights' gradient is the right one: a finite difference on one tap of conv2
    const w = d.store.get('conv2.weight');
    const at = 37;
    const base = w.dataSync().slice();
    const eps = 1e-3;
    const lossAt = (delta: number) => {
      const v = base.slice();
      v[at]! += delta;
      w.assign(tf.tensor(v, w.shape));
      return loss(d.forward(probs)).dataSync()[0]!;
    };
    const fd = (lossAt(eps) - lossAt(-eps)) / (2 * eps);
    w.assign(tf.tensor(base, w.shape));
    assertClose([grads.get('conv2.weight')!.dataSync()[at]!], [fd], 1e-3, `${backend}: finite difference`);
    disposeTrace(t);
    assert.equal(t.inputs[0]!.isDisposed, false, 'the traced input stays the caller');
    tf.dispose([probs, u, expectLogits, dLogits, expectDx, dx, ...Object.values(expect), ...grads.values()]);
    d.dispose();
  }
});

test('deeplabV2 rejects bad configuration and input with clear messages', async () => {
  await useBackend('cpu');
  assert.throws(
    () => deeplabV2({ backbone: 'resnet18' as 'small', numClasses: 19 }),
    /unknown backbone 'resnet18', expected one of resnet101, resnet50, vgg16, small/,
  );
  assert.throws(() => deeplabV2({ backbone: 'small', numClasses: 1 }), /numClasses must be an integer in 2..254, got 1/);
  const m = deeplabV2({ backbone: 'small', numClasses: 3 });
  assert.throws(
    () => m.forward(tf.zeros([1, 3, 32, 32]) as tf.Tensor4D),
    /expected images \[B,H,W,3\] \(NHWC, normalised RGB\), got shape \[1,3,32,32\]/,
  );
  m.dispose();
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { selectBackend, type BackendRequest } from '../../src/ops/backend.ts';
import { setMaxPoolGradWasm, stockWasmKernel } from '../../src/ops/wasm-kernels.ts';
import { setChannelOpsWasm } from '../../src/ops/channel-ops-wasm.ts';
import { assertSameBits, seededValues, withSwitch } from '../helpers.ts';
import { assertAssembled } from './wasm-assembly.ts';

async function tensorflowInstalled(): Promise<boolean> {
  for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
    try {
      await import(pkg);
      return true;
    } catch {
      // not installed or libtensorflow missing
    }
  }
  return false;
}

test('auto prefers tensorflow, else wasm, and logs the choice with the reason for skipping', async () => {
  const lines: string[] = [];
  const name = await selectBackend('auto', { log: (l) => lines.push(l) });
  assert.equal(tf.getBackend(), name);
  if (await tensorflowInstalled()) {
    assert.equal(name, 'tensorflow');
    assert.deepEqual(lines, ['backend: tensorflow (auto)']);
  } else {
    assert.equal(name, 'wasm');
    assert.equal(lines.length, 1);
    assert.match(
      lines[0]!,
      /^backend: wasm \(auto\) \(skipped: tensorflow: @tensorflow\/tfjs-node-gpu is not installed; @tensorflow\/tfjs-node is not installed\)$/,
    );
  }
});

test('an explicitly requested backend that is unavailable fails with how to install it', async (t) => {
  if (await tensorflowInstalled()) return t.skip('tensorflow backend is installed here');
  await assert.rejects(
    selectBackend('tensorflow', { log: () => {} }),
    /^Error: backend 'tensorflow' is unavailable: @tensorflow\/tfjs-node-gpu is not installed; @tensorflow\/tfjs-node is not installed\. To use it, install it with `npm install @tensorflow\/tfjs-node-gpu` on a machine with CUDA 11\.2 \+ cuDNN 8\.1/,
  );
});

test('explicit wasm and cpu switch the backend; an unknown name is rejected', async () => {
  assert.equal(await selectBackend('cpu', { log: () => {} }), 'cpu');
  assert.equal(tf.getBackend(), 'cpu');
  assert.equal(await selectBackend('wasm', { log: () => {} }), 'wasm');
  assert.equal(tf.getBackend(), 'wasm');
  // the registered wasm training kernels are present
  assert.ok(tf.getKernel('Conv2DBackpropFilter', 'wasm'));
  await assert.rejects(
    selectBackend('webgpu' as BackendRequest),
    /backend: unknown backend 'webgpu', expected one of auto, tensorflow, wasm, cpu/,
  );
});

test('wasm Sum over the leading axes (batch-norm statistics, bias gradients) gives the bits of the stock kernel without its transpose (wasm SIMD and JS loop)', async () => {
  await selectBackend('wasm', { log: () => {} });
  for (const simd of [true, false]) withSwitch(setChannelOpsWasm, simd, () => sumsAgainstStock(simd ? 'SIMD' : 'JS loop'));
  // other sums keep the stock kernel: innermost, middle axes, int32
  const x = tf.tensor3d([1, 2, 3, 4, 5, 6, 7, 8], [2, 2, 2]);
  assert.deepEqual([...tf.sum(x, 2).dataSync()], [3, 7, 11, 15]);
  assert.deepEqual([...tf.sum(x, 1).dataSync()], [4, 6, 12, 14]);
  assert.deepEqual([...tf.sum(tf.cast(x, 'int32'), [0, 1]).dataSync()], [16, 20]);
  x.dispose();
});

function sumsAgainstStock(how: string): void {
  for (const [i, shape] of [
    [2, 36, 64, 16],
    [4, 9, 16, 64],
    [1, 1, 1, 7],
    [3, 5, 19],
    [8, 33],
    [2, 72, 128, 19],
  ].entries()) {
    tf.tidy(() => {
      const x = tf.mul(tf.randomNormal(shape, 0, 1, 'float32', i + 1), 1e3);
      const leading = shape.slice(0, -1).map((_, a) => a);
      // the stock kernel's own path: channels first, then its in-order sum over the innermost axes
      const stock = tf.sum(
        tf.transpose(x, [shape.length - 1, ...leading]),
        leading.map((a) => a + 1),
      );
      const ours = tf.sum(x, leading);
      assertSameBits(ours, stock, `${how} [${shape}]: channel sums against the stock kernel's`);
      // and it is the sum: within float32 rounding of a float64 one
      const values = x.dataSync();
      const channels = shape.at(-1)!;
      for (let c = 0; c < channels; c += Math.max(1, channels >> 2)) {
        let exact = 0;
        for (let j = c; j < values.length; j += channels) exact += values[j]!;
        assert.ok(
          Math.abs(ours.dataSync()[c]! - exact) <= 1e-4 * (values.length / channels) * 1e3,
          `[${shape}] channel ${c}: ${ours.dataSync()[c]} vs ${exact}`,
        );
      }
      assert.deepEqual(tf.sum(x, leading, true).shape, [...leading.map(() => 1), channels]);
    });
  }
}

test("wasm MaxPoolGrad sends each window's gradient to its first maximum (a plain loop, bit for bit); the stock kernel's bits where maxima are unique and positive", async () => {
  await selectBackend('wasm', { log: () => {} });
  const stock = stockWasmKernel('MaxPoolGrad');
  assert.ok(stock, 'the stock MaxPoolGrad was replaced and kept');
  const stockGrad = (x: tf.Tensor4D, y: tf.Tensor4D, dy: tf.Tensor4D, size: number, stride: number, pad: number | 'same' | 'valid') =>
    tf.engine().makeTensorFromTensorInfo(
      stock!.kernelFunc({
        inputs: { dy, input: x, output: y },
        backend: tf.backend(),
        attrs: { filterSize: size, strides: stride, pad } as unknown as tf.NamedAttrMap,
      }) as tf.TensorInfo,
    );
  const cases: [[number, number, number, number], number, number, number | 'same' | 'valid'][] = [
    [[4, 32, 64, 16], 3, 2, 1], // the ResNet / small-DeepLab stem
    [[2, 9, 7, 3], 3, 2, 1], // odd sizes: windows clipped at the bottom and right
    [[2, 8, 12, 5], 2, 2, 'valid'], // VGG
    [[1, 6, 5, 4], 3, 1, 'same'],
  ];
  for (const [i, [shape, size, stride, pad]] of [...cases, ...cases].entries()) {
    // each case twice: wasm SIMD (the default), then the JS loop
    const loop = i < cases.length ? 'SIMD' : 'JS loop';
    setMaxPoolGradWasm(i < cases.length);
    tf.tidy(() => {
      // values on a coarse grid, negative ones too: windows with tied maxima and windows with no positive value
      const x = tf.round(tf.mul(tf.randomNormal(shape, 0, 1, 'float32', 40 + i), 2)) as tf.Tensor4D;
      const y = tf.maxPool(x, size, stride, pad);
      const [, oh, ow] = y.shape;
      const dy = tf.randomNormal(y.shape, 0, 1, 'float32', 50 + i) as tf.Tensor4D;
      const ours = tf.grad((t: tf.Tensor) => tf.mul(tf.maxPool(t as tf.Tensor4D, size, stride, pad), dy))(x);
      const [n, h, w, c] = shape;
      // 'same' pads (size - 1) in total, the smaller half first
      const p = pad === 'valid' ? 0 : pad === 'same' ? Math.floor(Math.max((oh - 1) * stride + size - h, 0) / 2) : pad;
      const xv = x.dataSync();
      const gv = dy.dataSync();
      const want = new Float32Array(xv.length);
      for (let b = 0; b < n; b++)
        for (let r = 0; r < oh; r++)
          for (let q = 0; q < ow; q++)
            for (let k = 0; k < c; k++) {
              let best = -Infinity;
              let at = -1;
              for (let u = 0; u < size; u++)
                for (let v = 0; v < size; v++) {
                  const hr = r * stride - p + u;
                  const wq = q * stride - p + v;
                  if (hr < 0 || hr >= h || wq < 0 || wq >= w) continue;
                  const j = ((b * h + hr) * w + wq) * c + k;
                  if (xv[j]! > best) {
                    best = xv[j]!;
                    at = j;
                  }
                }
              want[at]! += gv[((b * oh + r) * ow + q) * c + k]!;
            }
      assertSameBits(ours, tf.tensor(want, shape), `${loop} [${shape}] pool ${size} stride ${stride} pad ${pad}: against a plain loop`);
      // unique positive maxima (continuous values above 0): the stock kernel's bits, same choice, same sums
      const xp = tf.add(tf.abs(tf.randomNormal(shape, 0, 1, 'float32', 60 + i)), 0.1) as tf.Tensor4D;
      const yp = tf.maxPool(xp, size, stride, pad);
      const oursP = tf.grad((t: tf.Tensor) => tf.mul(tf.maxPool(t as tf.Tensor4D, size, stride, pad), dy))(xp);
      assertSameBits(
        oursP,
        stockGrad(xp, yp, dy, size, stride, pad),
        `${loop} [${shape}] pool ${size} stride ${stride} pad ${pad}: against the stock kernel`,
      );
    });
  }
  setMaxPoolGradWasm(true);
  // why it is replaced: a window of negative values [-3, -1; -2, -5], maximum -1 (the second element)
  tf.tidy(() => {
    const x = tf.tensor4d([-3, -1, -2, -5], [1, 2, 2, 1]);
    const y = tf.maxPool(x, 2, 2, 'valid');
    assert.deepEqual(
      [
        ...tf
          .grad((t: tf.Tensor) => tf.maxPool(t as tf.Tensor4D, 2, 2, 'valid'))(x)
          .dataSync(),
      ],
      [0, 1, 0, 0],
    );
    assert.deepEqual(
      [...stockGrad(x, y, tf.onesLike(y) as tf.Tensor4D, 2, 2, 'valid').dataSync()],
      [1, 0, 0, 0],
      'the stock kernel (tfjs 4.22) picks the first element',
    );
  });
});

test('wasm MaxPoolGrad: its SIMD loop (max-pool-grad.wasm) and its JS loop agree bit for bit with NaNs (a first NaN stays the maximum), -0, ties and empty windows; the .wasm is what wabt assembles', async () => {
  await selectBackend('wasm', { log: () => {} });
  const cases: [[number, number, number, number], number, number, number | 'same' | 'valid'][] = [
    [[2, 11, 13, 21], 3, 2, 1], // five steps of four channels and one more
    [[1, 7, 9, 3], 3, 2, 1], // fewer channels than a step
    [[2, 6, 6, 8], 2, 2, 'valid'],
    [[1, 5, 5, 4], 3, 1, 'same'],
    [[1, 4, 4, 4], 1, 3, 'same'], // 1x1 windows, stride 3
  ];
  for (const [i, [shape, size, stride, pad]] of cases.entries()) {
    const n = shape.reduce((a, b) => a * b, 1);
    // a coarse grid (ties), with NaN, -0 and -Infinity sprinkled in
    const v = Float32Array.from(seededValues(n, 70 + i), (x, j) =>
      j % 17 === 3 ? Number.NaN : j % 13 === 5 ? -0 : j % 29 === 7 ? Number.NEGATIVE_INFINITY : Math.round(2 * x),
    );
    const run = (simd: boolean) =>
      withSwitch(setMaxPoolGradWasm, simd, () =>
        tf.tidy(() => {
          const x = tf.tensor4d(v, shape);
          const dy = tf.tensor4d(seededValues(tf.maxPool(x, size, stride, pad).size, 80 + i), tf.maxPool(x, size, stride, pad).shape);
          return tf.grad((t: tf.Tensor) => tf.mul(tf.maxPool(t as tf.Tensor4D, size, stride, pad), dy))(x);
        }),
      );
    const [simd, js] = [run(true), run(false)];
    assertSameBits(simd, js, `[${shape}] pool ${size} stride ${stride} pad ${pad}: SIMD against the JS loop`);
    assert.ok(
      simd.dataSync().some((g) => g !== 0),
      `[${shape}]: some gradient reaches x`,
    );
    tf.dispose([simd, js]);
  }
  await assertAssembled('max-pool-grad', { unshared: true });
});

test('wasm Identity (clone, and every tensor the engine saves for a backward pass) is a second reference, not a copy: no new bytes, the values outlive the original, freed with the last reference', async () => {
  await selectBackend('wasm', { log: () => {} });
  const x = tf.tensor4d(
    Float32Array.from({ length: 2 * 3 * 4 * 5 }, (_, i) => i * 0.5 - 7),
    [2, 3, 4, 5],
  );
  const before = tf.memory() as { numBytes: number; numDataBuffers: number };
  const y = x.clone();
  const after = tf.memory() as { numBytes: number; numDataBuffers: number };
  assert.equal(after.numDataBuffers, before.numDataBuffers, 'no new buffer');
  assert.equal(
    after.numBytes,
    before.numBytes + 2 * 3 * 4 * 5 * 4,
    'tfjs counts the tensor (bytes per tensor), the backend holds one buffer',
  );
  assert.equal(y.dataId, x.dataId);
  x.dispose();
  assert.deepEqual(Array.from(y.dataSync()).slice(0, 4), [-7, -6.5, -6, -5.5]);
  assert.equal(y.dataSync()[119], 119 * 0.5 - 7);
  y.dispose();
  assert.equal((tf.memory() as { numDataBuffers: number }).numDataBuffers, before.numDataBuffers - 1, 'freed with the last reference');
  // the stock kernel copies (what this replaced); strings still go to it
  const stock = stockWasmKernel('Identity');
  assert.ok(stock, 'the stock Identity is kept');
  const s = tf.tensor1d(['a', 'b'], 'string');
  assert.deepEqual(s.clone().dataSync(), ['a', 'b']);
  // a gradient through saved tensors: the same values as the cpu backend's (which always aliased)
  const grad = () =>
    tf.tidy(() =>
      Array.from(
        tf
          .grad((a: tf.Tensor) => tf.relu(a).mul(a).exp().sum())(tf.tensor1d([-1, 0.5, 2, -0.25]))
          .dataSync(),
      ),
    );
  const onWasm = grad();
  await selectBackend('cpu', { log: () => {} });
  assert.deepEqual(onWasm, grad());
});

/**
 * ReLU's and LeakyReLU's gradients as one wasm SIMD pass each (src/ops/relu-grad-wasm.ts driving
 * src/ops/wasm/relu-grad.wat) against tfjs's three kernels, mul(dy, cast(step(x), 'float32')) and
 * where(greater(x, 0), dy, mul(dy, alpha)), element for element.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { leakyReluGradWasm, reluGradWasm, setReluGradWasm } from '../../src/ops/relu-grad-wasm.ts';
import { assertSameValues, seededValues, useBackend, withSwitch } from '../helpers.ts';
import { assertAssembled, onFreshMemories } from './wasm-assembly.ts';

/** A NaN with the sign bit set (JS arithmetic makes only the positive quiet NaN). */
const NEG_NAN = new Float32Array(new Uint32Array([0xffc0_0000]).buffer)[0]!;
const SPECIAL = [NaN, NEG_NAN, 0, -0, Infinity, -Infinity, 1e-45, -1e-45, 3e38, -3e38];

/** `n` seeded values in [-4, 4) with the special values at the front, wrapped to fit. */
function valuesWithSpecials(n: number, seed: number, offset: number): Float32Array {
  const v = seededValues(n, seed).map((x) => x * 4);
  for (let i = 0; i < Math.min(n, SPECIAL.length); i++) v[i] = SPECIAL[(i + offset) % SPECIAL.length]!;
  return v;
}

/** tfjs's formula written out: dy * s, s = x for NaN x, 1 for x > 0, 0 otherwise (float32 products). */
function reference(dy: Float32Array, x: Float32Array): Float32Array {
  return dy.map((g, i) => {
    const v = x[i]!;
    return Math.fround(g * (Number.isNaN(v) ? v : v > 0 ? 1 : 0));
  });
}

/** tfjs's LeakyReLU formula written out: dy where x > 0, else dy * alpha (alpha and the product float32). */
function leakyReference(dy: Float32Array, x: Float32Array, alpha: number): Float32Array {
  return dy.map((g, i) => (x[i]! > 0 ? g : Math.fround(g * Math.fround(alpha))));
}

/** The gradient of relu (or leakyRelu with `alpha`) at `x` for `dy` through tf.grad, and the kernels the backward pass ran. */
async function reluGrad(x: tf.Tensor, dy: tf.Tensor, alpha: number | null = null): Promise<{ values: Float32Array; kernels: string[] }> {
  let values = new Float32Array(0);
  const info = await tf.profile(() => {
    values = tf
      .tidy(
        () =>
          tf
            .grad((v) => (alpha === null ? tf.relu(v) : tf.leakyRelu(v, alpha)))(x, dy)
            .dataSync() as Float32Array,
      )
      .slice();
  });
  return { values, kernels: info.kernels.map((k) => k.name) };
}

test('relu on wasm: the gradient from the module has the bits of tfjs Step, Cast and Multiply (NaN of either sign, infinities, signed zeros, denormals, every tail of n % 4)', async () => {
  await useBackend('wasm');
  const shapes = [[1], [2], [3], [4], [5], [7], [9], [11], [2, 3, 5, 7], [8, 16, 32, 32]];
  for (const [s, shape] of shapes.entries()) {
    const n = shape.reduce((a, b) => a * b, 1);
    const x = tf.tensor(valuesWithSpecials(n, 10 + s, 0), shape);
    // dy's specials shifted against x's: every pairing of the ten meets over the shapes
    const dy = tf.tensor(valuesWithSpecials(n, 20 + s, s), shape);
    const stock = await withSwitch(setReluGradWasm, false, () => reluGrad(x, dy));
    const ours = await reluGrad(x, dy);
    const what = `shape ${JSON.stringify(shape)}`;
    assert.ok(stock.kernels.includes('Step'), `${what}: switched off, tfjs's Step runs`);
    assert.ok(
      !ours.kernels.includes('Step') && !ours.kernels.includes('Multiply'),
      `${what}: the module runs instead (kernels: ${ours.kernels})`,
    );
    assertSameValues(ours.values, stock.values, what);
    assertSameValues(ours.values, reference(dy.dataSync() as Float32Array, x.dataSync() as Float32Array), `${what}: the formula`);
    tf.dispose([x, dy]);
  }
});

test('leakyRelu on wasm: the gradient from the module has the bits of tfjs Greater, Multiply and Select (alphas 0.2, 0.01, 1.5; NaN of either sign, infinities, signed zeros, denormals, every tail of n % 4)', async () => {
  await useBackend('wasm');
  const shapes = [[1], [3], [4], [5], [7], [9], [2, 3, 5, 7], [4, 16, 32, 16]];
  for (const alpha of [0.2, 0.01, 1.5]) {
    for (const [s, shape] of shapes.entries()) {
      const n = shape.reduce((a, b) => a * b, 1);
      const x = tf.tensor(valuesWithSpecials(n, 50 + s, 0), shape);
      const dy = tf.tensor(valuesWithSpecials(n, 60 + s, s + 1), shape);
      const stock = await withSwitch(setReluGradWasm, false, () => reluGrad(x, dy, alpha));
      const ours = await reluGrad(x, dy, alpha);
      const what = `alpha ${alpha}, shape ${JSON.stringify(shape)}`;
      assert.ok(stock.kernels.includes('Select') && stock.kernels.includes('Greater'), `${what}: switched off, tfjs's kernels run`);
      assert.ok(
        !ours.kernels.includes('Select') && !ours.kernels.includes('Greater'),
        `${what}: the module runs instead (kernels: ${ours.kernels})`,
      );
      assertSameValues(ours.values, stock.values, what);
      assertSameValues(
        ours.values,
        leakyReference(dy.dataSync() as Float32Array, x.dataSync() as Float32Array, alpha),
        `${what}: the formula`,
      );
      tf.dispose([x, dy]);
    }
  }
});

test('reluGradWasm runs on float32 wasm tensors of one shape only (not int32, not other shapes, not the cpu backend, not switched off)', async () => {
  await useBackend('wasm');
  tf.tidy(() => {
    const x = tf.tensor1d([1, -1, 2, 0]);
    assert.ok(reluGradWasm(tf.ones([4]), x) instanceof tf.Tensor);
    assert.equal(reluGradWasm(tf.ones([4], 'int32'), x), null, 'int32 dy');
    assert.equal(reluGradWasm(tf.ones([2, 2]), x), null, 'another shape');
    assert.equal(
      withSwitch(setReluGradWasm, false, () => reluGradWasm(tf.ones([4]), x)),
      null,
      'switched off',
    );
    assert.ok(leakyReluGradWasm(tf.ones([4]), x, 0.2) instanceof tf.Tensor);
    assert.equal(leakyReluGradWasm(tf.ones([4], 'int32'), x, 0.2), null, 'leaky: int32 dy');
    assert.equal(leakyReluGradWasm(tf.ones([2, 2]), x, 0.2), null, 'leaky: another shape');
    assert.equal(
      withSwitch(setReluGradWasm, false, () => leakyReluGradWasm(tf.ones([4]), x, 0.2)),
      null,
      'leaky: switched off',
    );
  });
  await useBackend('cpu');
  tf.tidy(() => {
    const x = tf.tensor1d([1, -1, NaN, 0]);
    assert.equal(reluGradWasm(tf.ones([4]), x), null, 'cpu');
    const g = tf.grad((v) => tf.relu(v))(x, tf.tensor1d([2, 3, 4, -5]));
    assertSameValues(g.dataSync(), [2, 0, NaN, -0], 'cpu: tfjs formula');
    assert.equal(leakyReluGradWasm(tf.ones([4]), x, 0.2), null, 'leaky: cpu');
    const l = tf.grad((v) => tf.leakyRelu(v, 0.5))(x, tf.tensor1d([2, 3, 4, -5]));
    assertSameValues(l.dataSync(), [2, 1.5, 2, -2.5], 'cpu: tfjs leaky formula');
  });
});

test('relu-grad.wasm (shared memory) and relu-grad-unshared.wasm give the formulas (relu and leaky) at unaligned offsets, in place too, nothing past out; both are what wabt assembles', async () => {
  for (const { file, memory, exports: m } of onFreshMemories('relu-grad', 2)) {
    for (const n of [0, 1, 3, 4, 6, 37, 1000]) {
      const x = valuesWithSpecials(n, 30 + n, 3);
      const dy = valuesWithSpecials(n, 40 + n, 7);
      // dy, x, out one after the other from byte 4 (4-byte, not 16-byte, aligned); garbage in out, a sentinel past it
      const [pd, px, po] = [4, 4 + 4 * n, 4 + 8 * n];
      const f32 = new Float32Array(memory.buffer);
      f32.set(dy, pd / 4);
      f32.set(x, px / 4);
      f32.fill(9.25, po / 4, po / 4 + n + 4);
      m.run(pd, px, n, po);
      const what = `${file}: ${n} elements`;
      const expected = reference(dy, x);
      assertSameValues(f32.slice(po / 4, po / 4 + n), expected, what);
      assertSameValues(f32.slice(po / 4 + n, po / 4 + n + 4), new Float32Array(4).fill(9.25), `${what}: past out`);
      // out over dy (an element's inputs are read before its output is written)
      m.run(pd, px, n, pd);
      assertSameValues(f32.slice(pd / 4, pd / 4 + n), expected, `${what}: in place`);
      // leaky, the same layout: dy again, garbage in out
      f32.set(dy, pd / 4);
      f32.fill(9.25, po / 4, po / 4 + n + 4);
      m.leaky(pd, px, n, po, 0.2);
      const leaky = leakyReference(dy, x, 0.2);
      assertSameValues(f32.slice(po / 4, po / 4 + n), leaky, `${what}: leaky`);
      assertSameValues(f32.slice(po / 4 + n, po / 4 + n + 4), new Float32Array(4).fill(9.25), `${what}: leaky, past out`);
      m.leaky(pd, px, n, pd, 0.2);
      assertSameValues(f32.slice(pd / 4, pd / 4 + n), leaky, `${what}: leaky in place`);
    }
  }
  await assertAssembled('relu-grad', { unshared: true });
});

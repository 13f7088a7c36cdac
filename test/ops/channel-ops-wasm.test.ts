/**
 * The per-channel loops of src/ops/channel-ops-wasm.ts (src/ops/wasm/channel-ops.wat): a bias added over
 * NHWC rows against tfjs-wasm's Add, and the module's two loops against float32 arithmetic written out.
 * (Its sums over the leading axes are held to the stock Sum kernel in backend.test.ts.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { addBiasWasm, setChannelOpsWasm } from '../../src/ops/channel-ops-wasm.ts';
import { assertSameValues, seededValues, useBackend, withSwitch } from '../helpers.ts';
import { assertAssembled, onFreshMemories } from './wasm-assembly.ts';

const SPECIAL = [NaN, 0, -0, Infinity, -Infinity, 1e-45, 3e38, -3e38];

/** `n` seeded values in [-10, 10) with the special values spread over the front. */
function values(n: number, seed: number): Float32Array {
  const v = seededValues(n, seed).map((x) => x * 10);
  SPECIAL.forEach((s, i) => {
    if (i * 3 < n) v[i * 3] = s;
  });
  return v;
}

/** The values of `a + b` with the module on and off (the stock kernel). */
function addBoth(a: tf.Tensor, b: tf.Tensor): [Float32Array, Float32Array] {
  const run = (on: boolean) => withSwitch(setChannelOpsWasm, on, () => tf.tidy(() => tf.add(a, b).dataSync() as Float32Array).slice());
  return [run(true), run(false)];
}

test('wasm Add of a bias over the rows gives the stock kernel bits ([c] and [1, .., 1, c] biases, c = 1 to 64, NaN, infinities, signed zeros)', async () => {
  await useBackend('wasm');
  for (const [i, [aShape, bShape]] of [
    [[5], [5]],
    [[3, 1], [1]],
    [[2, 3, 4, 7], [7]],
    [
      [2, 3, 4, 8],
      [1, 1, 1, 8],
    ],
    [
      [4, 16],
      [1, 16],
    ],
    [[2, 9, 17, 19], [19]],
    [[2, 8, 8, 64], [64]],
  ].entries()) {
    const size = (s: number[]) => s.reduce((p, q) => p * q, 1);
    const a = tf.tensor(values(size(aShape), 10 + i), aShape);
    const b = tf.tensor(values(size(bShape), 20 + i).reverse(), bShape);
    const out = addBiasWasm({ inputs: { a, b }, backend: tf.backend() });
    assert.ok(out, `[${aShape}] + [${bShape}]: the module takes it`);
    tf.engine().makeTensorFromTensorInfo(out).dispose();
    const [ours, stock] = addBoth(a, b);
    assertSameValues(ours, stock, `[${aShape}] + [${bShape}]`);
    const expected = (a.dataSync() as Float32Array).map((v, j) => Math.fround(v + b.dataSync()[j % size(bShape)]!));
    assertSameValues(ours, expected, `[${aShape}] + [${bShape}]: float32 adds`);
    tf.dispose([a, b]);
  }
});

test('addBiasWasm takes float32 a + bias of its last dimension only; every other Add is the stock kernel', async () => {
  await useBackend('wasm');
  tf.tidy(() => {
    const backend = tf.backend();
    const take = (a: tf.Tensor, b: tf.Tensor) => {
      const out = addBiasWasm({ inputs: { a, b }, backend });
      if (out) tf.engine().makeTensorFromTensorInfo(out).dispose();
      return out !== null;
    };
    const x = tf.ones([2, 3, 4]);
    assert.equal(take(x, tf.ones([4])), true, '[2,3,4] + [4]');
    assert.equal(take(x, tf.ones([1, 1, 4])), true, '[2,3,4] + [1,1,4]');
    assert.equal(take(x, tf.ones([3, 4])), false, 'a [3, 4] operand is not a bias');
    assert.equal(take(tf.ones([4]), x), false, 'the bias first (the output is not a shaped)');
    assert.equal(take(x, tf.ones([2, 3, 4])), false, 'same shapes');
    assert.equal(take(x, tf.ones([1, 1, 1, 4])), false, 'a bias of higher rank');
    assert.equal(take(x, tf.ones([1])), false, 'a scalar-like [1] over 4 channels');
    assert.equal(take(tf.ones([2, 4], 'int32'), tf.ones([4], 'int32')), false, 'int32');
    assert.equal(
      withSwitch(setChannelOpsWasm, false, () => take(x, tf.ones([4]))),
      false,
      'switched off',
    );
    // and those Adds are still right
    assert.deepEqual(Array.from(tf.add(tf.tensor1d([1, 2]), tf.tensor2d([10, 20, 30, 40], [2, 2])).dataSync()), [11, 22, 31, 42]);
  });
});

test('channel-ops.wasm and channel-ops-unshared.wasm: sum_rows and add_rows give float32 adds in row order (c = 1 to 13, tiles of 1 row to all, unaligned, in place, nothing past out); both are what wabt assembles', async () => {
  for (const { file, memory, exports: m } of onFreshMemories('channel-ops', 2)) {
    for (const c of [1, 3, 4, 5, 8, 13]) {
      const rows = 37;
      const n = rows * c;
      const x = values(n, 30 + c);
      const b = values(c, 40 + c).reverse();
      // x, b (or acc), out from byte 4 (4-byte, not 16-byte, aligned)
      const [px, pb, po] = [4, 4 + 4 * n, 4 + 4 * (n + c)];
      const heap = new Float32Array(memory.buffer);
      const what = `${file}, ${c} channels`;
      for (const tile of [1, 4, 36, 37, 100]) {
        const start = seededValues(c, 50 + c);
        const expected = Float32Array.from(start);
        for (let r = 0; r < rows; r++) for (let k = 0; k < c; k++) expected[k] = Math.fround(expected[k]! + x[r * c + k]!);
        heap.set(x, px / 4);
        heap.set(start, pb / 4);
        heap.fill(9.25, pb / 4 + c, pb / 4 + c + 4);
        m.sum_rows(px, rows, c, tile, pb);
        assertSameValues(heap.slice(pb / 4, pb / 4 + c), expected, `${what}: sum_rows, tiles of ${tile} rows`);
        assertSameValues(heap.slice(pb / 4 + c, pb / 4 + c + 4), new Float32Array(4).fill(9.25), `${what}: sum_rows, past acc`);
      }
      const added = x.map((v, i) => Math.fround(v + b[i % c]!));
      heap.set(b, pb / 4);
      heap.fill(9.25, po / 4, po / 4 + n + 4);
      m.add_rows(px, rows, c, pb, po);
      assertSameValues(heap.slice(po / 4, po / 4 + n), added, `${what}: add_rows`);
      assertSameValues(heap.slice(po / 4 + n, po / 4 + n + 4), new Float32Array(4).fill(9.25), `${what}: add_rows, past out`);
      m.add_rows(px, rows, c, pb, px);
      assertSameValues(heap.slice(px / 4, px / 4 + n), added, `${what}: add_rows in place`);
    }
  }
  await assertAssembled('channel-ops', { unshared: true });
});

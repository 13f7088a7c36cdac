import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { hostBatchNorm, hostBatchStats } from '../../src/ops/model/batch-norm-host.ts';
import { setBatchNormWasm, wasmLoopsFor } from '../../src/ops/model/batch-norm-wasm.ts';
import { hostView } from '../../src/ops/host-memory.ts';
import { assertSameValues, randTensor, seededValues, useBackend } from '../helpers.ts';
import { assertAssembled, onFreshMemories } from './wasm-assembly.ts';

/**
 * The batch-norm loops written the plain way: every channel of a row, row after row, sums in float64
 * (what batch-norm-host.ts ran before its loops went by tiles and four channels at a time).
 */
function plainBatchNorm(x: Float32Array, c: number, gamma: Float32Array, beta: Float32Array, dy: Float32Array, eps: number) {
  const count = x.length / c;
  const sum = new Float64Array(c);
  for (let i = 0; i < x.length; i += c) for (let k = 0; k < c; k++) sum[k]! += x[i + k]!;
  const mean = sum.map((s) => s / count);
  const squares = new Float64Array(c);
  for (let i = 0; i < x.length; i += c)
    for (let k = 0; k < c; k++) {
      const d = x[i + k]! - mean[k]!;
      squares[k]! += d * d;
    }
  const variance = squares.map((s) => s / count);
  const invStd = variance.map((v) => 1 / Math.sqrt(v + eps));
  const scale = new Float64Array(c);
  const shift = new Float64Array(c);
  for (let k = 0; k < c; k++) {
    scale[k] = gamma[k]! * invStd[k]!;
    shift[k] = beta[k]! - mean[k]! * scale[k]!;
  }
  const y = new Float32Array(x.length);
  for (let i = 0; i < x.length; i += c) for (let k = 0; k < c; k++) y[i + k] = x[i + k]! * scale[k]! + shift[k]!;
  const sumDy = new Float64Array(c);
  const sumDyXc = new Float64Array(c);
  for (let i = 0; i < x.length; i += c)
    for (let k = 0; k < c; k++) {
      sumDy[k]! += dy[i + k]!;
      sumDyXc[k]! += dy[i + k]! * (x[i + k]! - mean[k]!);
    }
  const dGamma = new Float32Array(c);
  for (let k = 0; k < c; k++) dGamma[k] = sumDyXc[k]! * invStd[k]!;
  const dBeta = Float32Array.from(sumDy);
  const dx = new Float32Array(x.length);
  for (let i = 0; i < x.length; i += c)
    for (let k = 0; k < c; k++) {
      const bx = (-scale[k]! * invStd[k]! * dGamma[k]!) / count;
      const c0 = (-scale[k]! * dBeta[k]!) / count;
      dx[i + k] = scale[k]! * dy[i + k]! + bx * (x[i + k]! - mean[k]!) + c0;
    }
  return { mean, variance, y, dx, dGamma, dBeta };
}

for (const [backend, simd] of [
  ['wasm', true],
  ['wasm', false],
  ['cpu', false],
] as const) {
  const how = backend === 'wasm' ? (simd ? ' (wasm SIMD loops where channels are a multiple of 4)' : ' (JS loops)') : '';
  test(`host batch norm on ${backend}${how}: tiled four-channel loops give the plain loops' bits (statistics, output, dx, d gamma, d beta; channels 3, 19, 16, 256, 1027, 4, 8, 12)`, async () => {
    await useBackend(backend);
    setBatchNormWasm(simd);
    // 1027 channels: one row is a tile and three channels are left after the groups of four;
    // [8, 8, 16, 256]: 64 tiles of 16 rows; 19: 215 rows a tile and a partial last one; 4, 8 and 12
    // channels: 1024, 512 and 341 rows a tile, the last partial (1105, 1105 and 189 rows)
    const shapes: [number, number, number, number][] = [
      [2, 5, 7, 3],
      [4, 8, 16, 19],
      [8, 16, 32, 16],
      [8, 8, 16, 256],
      [1, 3, 5, 1027],
      [5, 13, 17, 4],
      [5, 13, 17, 8],
      [3, 7, 9, 12],
    ];
    for (const [s, shape] of shapes.entries()) {
      const c = shape[3];
      const eps = 1e-5;
      const what = `[${shape}]`;
      const x = randTensor<tf.Tensor4D>(shape, 10 + s, 3);
      const gamma = randTensor<tf.Tensor1D>([c], 20 + s);
      const beta = randTensor<tf.Tensor1D>([c], 30 + s);
      const dy = randTensor<tf.Tensor4D>(shape, 40 + s);
      const want = plainBatchNorm(
        x.dataSync() as Float32Array,
        c,
        gamma.dataSync() as Float32Array,
        beta.dataSync() as Float32Array,
        dy.dataSync() as Float32Array,
        eps,
      );
      const stats = hostBatchStats(x, null);
      assertSameValues(stats.mean, want.mean, `${what} mean`);
      assertSameValues(stats.variance, want.variance, `${what} variance`);
      assert.equal(stats.count, x.size / c);
      const [y, dx, dGamma, dBeta] = tf.tidy(() => {
        const f = (a: tf.Tensor, g: tf.Tensor, b: tf.Tensor) =>
          hostBatchNorm(a as tf.Tensor4D, stats, g as tf.Tensor1D, b as tf.Tensor1D, eps, null);
        const out = f(x, gamma, beta);
        const grads = tf.grads((a: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => f(a, g, b).mul(dy).sum())([x, gamma, beta]);
        return [out, ...grads].map((t) => t.dataSync().slice());
      });
      assertSameValues(y!, want.y, `${what} output`);
      assertSameValues(dx!, want.dx, `${what} dx`);
      assertSameValues(dGamma!, want.dGamma, `${what} d gamma`);
      assertSameValues(dBeta!, want.dBeta, `${what} d beta`);
      tf.dispose([x, gamma, beta, dy]);
    }
    setBatchNormWasm(true);
  });
}

test('batch norm wasm loops: taken on the wasm backend for channels a multiple of 4 (up to 8192), not for 19, not on cpu, not when disabled', async () => {
  await useBackend('wasm');
  const take = (c: number) => tf.tidy(() => wasmLoopsFor(hostView(tf.zeros([1, 2, 2, c])), c) !== null);
  assert.deepEqual([4, 16, 256, 8192].map(take), [true, true, true, true]);
  assert.deepEqual([3, 19, 1027, 8196].map(take), [false, false, false, false]);
  setBatchNormWasm(false);
  assert.equal(take(16), false);
  setBatchNormWasm(true);
  // a view that is not the backend's memory (a copy) runs the JS loops
  assert.equal(wasmLoopsFor(new Float32Array(64), 16), null);
  await useBackend('cpu');
  assert.equal(take(16), false);
});

/** The five loops written out in JS on one layer's data: what both .wasm variants must give, bit for bit. */
function referenceLoops(x: Float32Array, dy: Float32Array, c: number, terms: Float64Array[]) {
  const [mean, scale, shift, bx] = terms as [Float64Array, Float64Array, Float64Array, Float64Array];
  const sums = new Float64Array(c);
  const squares = new Float64Array(c);
  const sdy = new Float64Array(c);
  const sdx = new Float64Array(c);
  const y = new Float32Array(x.length);
  const dx = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const k = i % c;
    sums[k]! += x[i]!;
    const d = x[i]! - mean[k]!;
    squares[k]! += d * d;
    y[i] = x[i]! * scale[k]! + shift[k]!;
    sdy[k]! += dy[i]!;
    sdx[k]! += dy[i]! * (x[i]! - mean[k]!);
    dx[i] = scale[k]! * dy[i]! + bx[k]! * (x[i]! - mean[k]!) + shift[k]!;
  }
  return { sums, squares, y, sdy, sdx, dx };
}

test('batch-norm.wasm (shared memory, the threaded build) and batch-norm-unshared.wasm (one-thread build) give the JS loops bits, and are what wabt assembles from batch-norm.wat', async () => {
  const [rows, c, tile] = [1105, 12, 341]; // a partial last tile
  const n = rows * c;
  const x = seededValues(n, 71).map((v) => 3 * v + 0.5);
  const dy = seededValues(n, 72);
  const terms = [73, 74, 75, 76].map((seed) => Float64Array.from(seededValues(c, seed), (v) => v * 1.7));
  const want = referenceLoops(x, dy, c, terms);
  for (const { file, memory, exports: k } of onFreshMemories('batch-norm', 8)) {
    // layout: x, dy, y, dx (float32), then mean, scale, shift, bx (the input gradient's a, b, e, mean order
    // differs: a = scale, b = bx, e = shift, mean), then the sums (f64)
    const [px, pd, py, pdx] = [0, 4 * n, 8 * n, 12 * n];
    const pt = 16 * n; // 8-aligned
    const f32 = new Float32Array(memory.buffer);
    f32.set(x, px / 4);
    f32.set(dy, pd / 4);
    const f64 = new Float64Array(memory.buffer);
    const at = (i: number) => pt + 8 * c * i;
    const put = (i: number, a: Float64Array) => f64.set(a, at(i) / 8);
    const [mean, scale, shift, bx] = terms as [Float64Array, Float64Array, Float64Array, Float64Array];
    put(0, mean);
    put(1, new Float64Array(c)); // sums
    k.sums(px, rows, c, tile, at(1));
    put(2, new Float64Array(c)); // squares
    k.squares(px, rows, c, tile, at(0), at(2));
    put(3, scale);
    put(4, shift);
    k.scale_shift(px, rows, c, tile, at(3), at(4), py);
    put(5, new Float64Array(c));
    put(6, new Float64Array(c));
    k.grad_sums(pd, px, rows, c, tile, at(0), at(5), at(6));
    // input_grad's terms: a, b, e, mean one after the other
    put(7, scale);
    put(8, bx);
    put(9, shift);
    put(10, mean);
    k.input_grad(pd, px, rows, c, tile, at(7), pdx);
    const get = (i: number) => f64.slice(at(i) / 8, at(i) / 8 + c);
    assertSameValues(get(1), want.sums, `${file}: sums`);
    assertSameValues(get(2), want.squares, `${file}: squares`);
    assertSameValues(f32.slice(py / 4, py / 4 + n), want.y, `${file}: scale_shift`);
    assertSameValues(get(5), want.sdy, `${file}: grad_sums dy`);
    assertSameValues(get(6), want.sdx, `${file}: grad_sums dy (x - mean)`);
    assertSameValues(f32.slice(pdx / 4, pdx / 4 + n), want.dx, `${file}: input_grad`);
  }
  await assertAssembled('batch-norm', { unshared: true });
});

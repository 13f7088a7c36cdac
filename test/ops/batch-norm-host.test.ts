import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { hostBatchNorm, hostBatchStats } from '../../src/ops/model/batch-norm-host.ts';
import { randTensor, useBackend } from '../helpers.ts';

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

function sameBits(actual: ArrayLike<number>, expected: ArrayLike<number>, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) {
    if (!Object.is(actual[i], expected[i])) assert.fail(`${what}[${i}]: ${actual[i]} where the plain loop gives ${expected[i]}`);
  }
}

for (const backend of ['wasm', 'cpu'] as const) {
  test(`host batch norm on ${backend}: tiled four-channel loops give the plain loops' bits (statistics, output, dx, d gamma, d beta; channels 3, 19, 16, 256, 1027)`, async () => {
    await useBackend(backend);
    // 1027 channels: one row is a tile and three channels are left after the groups of four;
    // [8, 8, 16, 256]: 64 tiles of 16 rows; 19: 215 rows a tile and a partial last one
    const shapes: [number, number, number, number][] = [
      [2, 5, 7, 3],
      [4, 8, 16, 19],
      [8, 16, 32, 16],
      [8, 8, 16, 256],
      [1, 3, 5, 1027],
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
      sameBits(stats.mean, want.mean, `${what} mean`);
      sameBits(stats.variance, want.variance, `${what} variance`);
      assert.equal(stats.count, x.size / c);
      const [y, dx, dGamma, dBeta] = tf.tidy(() => {
        const f = (a: tf.Tensor, g: tf.Tensor, b: tf.Tensor) =>
          hostBatchNorm(a as tf.Tensor4D, stats, g as tf.Tensor1D, b as tf.Tensor1D, eps, null);
        const out = f(x, gamma, beta);
        const grads = tf.grads((a: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => f(a, g, b).mul(dy).sum())([x, gamma, beta]);
        return [out, ...grads].map((t) => t.dataSync().slice());
      });
      sameBits(y!, want.y, `${what} output`);
      sameBits(dx!, want.dx, `${what} dx`);
      sameBits(dGamma!, want.dGamma, `${what} d gamma`);
      sameBits(dBeta!, want.dBeta, `${what} d beta`);
      tf.dispose([x, gamma, beta, dy]);
    }
  });
}

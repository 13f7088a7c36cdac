import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { hostTensor, hostView, onHostBackend, rowTileLength } from '../../src/ops/host-memory.ts';
import { useBackend } from '../helpers.ts';

for (const backend of ['cpu', 'wasm'] as const) {
  test(`host memory on ${backend}: views read a tensor's values in place, hostTensor writes a new one there, nothing leaks`, async () => {
    await useBackend(backend);
    assert.equal(onHostBackend(), true);
    const before = tf.memory();
    const x = tf.tensor4d(
      Array.from({ length: 24 }, (_, i) => i * 0.5 - 3),
      [1, 2, 3, 4],
    );
    const labels = tf.tensor1d([0, 3, 255, -1], 'int32');
    const view = hostView(x);
    assert.deepEqual(Array.from(view), Array.from(x.dataSync()));
    assert.ok(view instanceof Float32Array);
    const ints = hostView<Int32Array>(labels);
    assert.ok(ints instanceof Int32Array);
    assert.deepEqual(Array.from(ints), [0, 3, 255, -1]);
    // in place: on wasm the view is the heap itself (no copy), on cpu the backend's own array
    if (backend === 'wasm') assert.equal(view.buffer, hostView(labels).buffer, 'two views of one heap');
    else assert.equal(view, x.dataSync(), 'the backend array itself');
    const y = hostTensor<tf.Rank.R4>([1, 2, 3, 4], (out) => {
      const src = hostView(x); // taken after the output's allocation
      for (let i = 0; i < out.length; i++) out[i] = 2 * src[i]! + 1;
    });
    assert.deepEqual(y.shape, [1, 2, 3, 4]);
    assert.equal(y.dtype, 'float32');
    assert.deepEqual(
      Array.from(y.dataSync()),
      Array.from(x.dataSync(), (v) => 2 * v + 1),
    );
    // the new tensor works in ops and is freed like any other
    // x holds -3, -2.5, ..., 8.5 (sum 66)
    assert.equal(
      tf.tidy(() => tf.sum(y).dataSync()[0]),
      2 * 66 + 24,
    );
    tf.dispose([x, labels, y]);
    const after = tf.memory();
    assert.equal(after.numTensors, before.numTensors);
    assert.equal(after.numBytes, before.numBytes);
  });
}

test('rowTileLength: whole rows of ~4096 values, at least one row', () => {
  assert.equal(rowTileLength(16), 4096);
  assert.equal(rowTileLength(256), 4096);
  assert.equal(rowTileLength(19), 215 * 19); // 4085: the rows that fit, not a partial one
  assert.equal(rowTileLength(3), 1365 * 3);
  assert.equal(rowTileLength(1027), 3 * 1027);
  assert.equal(rowTileLength(5000), 5000); // a row longer than a tile is a tile
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { selectBackend, type BackendRequest } from '../../src/ops/backend.ts';
import { assertSameBits } from '../helpers.ts';

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

test('wasm Sum over the leading axes (batch-norm statistics, bias gradients) gives the bits of the stock kernel without its transpose', async () => {
  await selectBackend('wasm', { log: () => {} });
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
      assertSameBits(ours, stock, `[${shape}]: channel sums against the stock kernel's`);
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
  // other sums keep the stock kernel: innermost, middle axes, int32
  const x = tf.tensor3d([1, 2, 3, 4, 5, 6, 7, 8], [2, 2, 2]);
  assert.deepEqual([...tf.sum(x, 2).dataSync()], [3, 7, 11, 15]);
  assert.deepEqual([...tf.sum(x, 1).dataSync()], [4, 6, 12, 14]);
  assert.deepEqual([...tf.sum(tf.cast(x, 'int32'), [0, 1]).dataSync()], [16, 20]);
  x.dispose();
});

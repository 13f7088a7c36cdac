import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { selectBackend, type BackendRequest } from '../../src/ops/backend.ts';

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

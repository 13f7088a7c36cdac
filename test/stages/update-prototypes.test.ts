import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { Prototypes } from '../../src/stages/update-prototypes.ts';
import { useBackend, assertClose } from '../helpers.ts';

test('Prototypes: EMA update with the batch, update norm reported; unset prototypes are a clear error', async () => {
  await useBackend('cpu');
  const p = new Prototypes();
  assert.throws(() => p.tensor, /prototypes: not initialised/);
  p.set(
    tf.tensor2d([
      [1, 0],
      [0, 1],
    ]),
  );
  // one pixel of class 0 with feature (0, 2) -> normalised (0, 1); P0 <- 0.1 (1,0) + 0.9 (0,1)
  const f = tf.tensor4d([0, 2], [1, 1, 1, 2]);
  const m = tf.tensor3d([0], [1, 1, 1], 'int32');
  p.update(f, m, { alpha: 0.1, absent: 'keep' });
  assertClose(p.tensor.dataSync(), [0.1, 0.9, 0, 1], 1e-6, 'prototypes');
  assert.ok(Math.abs(p.lastUpdateNorm - Math.hypot(0.9, 0.9)) < 1e-6);
  p.dispose();
  tf.dispose([f, m]);
});

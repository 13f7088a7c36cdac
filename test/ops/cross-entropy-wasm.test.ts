/**
 * The cross-entropy gradient loop as wasm SIMD (src/ops/cross-entropy-wasm.ts driving
 * src/ops/wasm/cross-entropy.wat) against the JS loop of losses.ts, element for element.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { crossEntropyGradWasm, setCrossEntropyWasm } from '../../src/ops/cross-entropy-wasm.ts';
import { hostView } from '../../src/ops/host-memory.ts';
import { segCrossEntropy } from '../../src/ops/losses.ts';
import { assertSameValues, seededValues, useBackend, withSwitch } from '../helpers.ts';
import { assertAssembled, onFreshMemories } from './wasm-assembly.ts';

/** Labels in 0..k-1 with every fifth pixel ignored (255) and a -1 and a k among them. */
function labelsFor(n: number, k: number, seed: number): Int32Array {
  const y = Int32Array.from(seededValues(n, seed), (v, i) => (i % 5 === 4 ? 255 : Math.floor(((v + 1) / 2) * k)));
  [y[1], y[2]] = [-1, k];
  return y;
}

/** The JS loop of losses.ts's gradient, written out: float64 products rounded on the store. */
function referenceGrad(p: Float32Array, y: Int32Array, w: Float32Array | undefined, k: number, scale: number): Float32Array {
  const g = new Float32Array(p.length);
  for (let i = 0; i < y.length; i++) {
    const c = y[i]!;
    if (!(c >= 0 && c < k)) continue;
    const s = w ? w[i]! * scale : scale;
    for (let j = i * k; j < (i + 1) * k; j++) g[j] = p[j]! * s;
    g[i * k + c] = g[i * k + c]! - s;
  }
  return g;
}

test('segCrossEntropy on wasm: the gradient from the wasm loop has the JS loop bits (19, 8 and 3 classes; temperature, weights, ignored rows)', async () => {
  await useBackend('wasm');
  for (const k of [19, 8, 3]) {
    const [b, h, w] = [2, 12, 20];
    const n = b * h * w;
    const logits = tf.tensor4d(
      seededValues(n * k, 30 + k).map((x) => x * 5),
      [b, h, w, k],
    );
    const labels = tf.tensor3d(labelsFor(n, k, 40 + k), [b, h, w], 'int32');
    const pixelWeights = tf.tensor3d(
      seededValues(n, 50 + k).map((x) => (x + 1) / 2),
      [b, h, w],
    );
    for (const opts of [{}, { temperature: 1.8 }, { pixelWeights }]) {
      const grad = (simd: boolean) =>
        withSwitch(setCrossEntropyWasm, simd, () =>
          tf.tidy(() =>
            tf
              .grad((x) => tf.mul(segCrossEntropy(x as tf.Tensor4D, labels, opts), 3) as tf.Scalar)(logits)
              .dataSync()
              .slice(),
          ),
        );
      const what = `${k} classes ${JSON.stringify(Object.keys(opts))}`;
      const [js, simd] = [grad(false), grad(true)];
      assertSameValues(simd, js, what);
      assert.ok(
        js.some((v) => v !== 0),
        `${what}: a gradient that is not all zeros`,
      );
    }
    tf.dispose([logits, labels, pixelWeights]);
  }
});

test('crossEntropyGradWasm takes views of the wasm heap only (not JS arrays, not the cpu backend, not when switched off)', async () => {
  await useBackend('wasm');
  const [n, k] = [40, 19];
  tf.tidy(() => {
    const p = tf.softmax(tf.tensor2d(seededValues(n * k, 3), [n, k]));
    const y = tf.tensor1d(labelsFor(n, k, 4), 'int32');
    const g = tf.zeros([n, k]);
    const [pv, yv, gv] = [hostView(p), hostView<Int32Array>(y), hostView(g)];
    assert.equal(crossEntropyGradWasm(pv, yv, undefined, k, 0.5, gv), true);
    assertSameValues(hostView(g), referenceGrad(hostView(p), hostView<Int32Array>(y), undefined, k, 0.5), 'written in place');
    assert.equal(crossEntropyGradWasm(pv.slice(), yv, undefined, k, 0.5, gv), false, 'a copy of p');
    assert.equal(crossEntropyGradWasm(pv, yv, new Float32Array(n), k, 0.5, gv), false, 'weights off the heap');
    assert.equal(
      withSwitch(setCrossEntropyWasm, false, () => crossEntropyGradWasm(pv, yv, undefined, k, 0.5, gv)),
      false,
      'switched off',
    );
  });
  await useBackend('cpu');
  tf.tidy(() => {
    const p = tf.ones([4, 3]);
    assert.equal(crossEntropyGradWasm(hostView(p), new Int32Array(4), undefined, 3, 1, hostView(tf.zeros([4, 3]))), false, 'cpu');
  });
});

test('cross-entropy.wasm (shared memory) and cross-entropy-unshared.wasm give the JS loop bits at unaligned offsets; both are what wabt assembles', async () => {
  for (const { file, memory, exports: m } of onFreshMemories('cross-entropy', 4)) {
    for (const [k, weighted] of [
      [19, false],
      [19, true],
      [8, true],
      [1, false],
      [6, true],
    ] as const) {
      const n = 301;
      const p = seededValues(n * k, 60 + k).map((x) => (x + 1) / 2);
      const y = labelsFor(n, k, 70 + k);
      const w = seededValues(n, 80 + k).map((x) => x + 1.5);
      // p, y, w, g one after the other from byte 4 (4-byte, not 16-byte, aligned); garbage in g, a sentinel past it
      const [pp, py, pw, pg] = [4, 4 + 4 * n * k, 4 + 4 * n * (k + 1), 4 + 4 * n * (k + 2)];
      const f32 = new Float32Array(memory.buffer);
      f32.set(p, pp / 4);
      new Int32Array(memory.buffer).set(y, py / 4);
      f32.set(w, pw / 4);
      f32.fill(9.25, pg / 4, pg / 4 + n * k + 4);
      const scale = 3 / 1234.5;
      m.grad(pp, py, pw, weighted ? 1 : 0, n, k, scale, pg);
      const what = `${file}: ${k} classes${weighted ? ', weighted' : ''}`;
      assertSameValues(f32.slice(pg / 4, pg / 4 + n * k), referenceGrad(p, y, weighted ? w : undefined, k, scale), what);
      assertSameValues(f32.slice(pg / 4 + n * k, pg / 4 + n * k + 4), new Float32Array(4).fill(9.25), `${what}: past g`);
    }
  }
  await assertAssembled('cross-entropy', { unshared: true });
});

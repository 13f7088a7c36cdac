/**
 * The gradient of the bilinear resize on wasm (src/ops/resize-grad-wasm.ts driving
 * src/ops/wasm/resize-grad.wat) against tfjs-wasm's own kernel, element for element, and both against
 * that kernel's arithmetic written out here.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { resizeBilinearGradWasm, setResizeGradWasm } from '../../src/ops/resize-grad-wasm.ts';
import { stockWasmKernel } from '../../src/ops/wasm-kernels.ts';
import { assertSameValues, seededValues, useBackend, withSwitch } from '../helpers.ts';
import { assertAssembled, onFreshMemories } from './wasm-assembly.ts';

type Geometry = { batch: number; h: number; w: number; c: number; H: number; W: number; align: boolean };

/** [batch, h, w, c] <- [batch, H, W, c]: the training one (logits upsampled to the labels), then edges. */
const GEOMETRIES: Geometry[] = [
  { batch: 2, h: 9, w: 16, c: 19, H: 72, W: 128, align: true },
  { batch: 2, h: 9, w: 16, c: 19, H: 72, W: 128, align: false },
  { batch: 1, h: 33, w: 65, c: 8, H: 17, W: 20, align: true }, // a downscale
  { batch: 1, h: 4, w: 4, c: 4, H: 7, W: 7, align: true }, // scale 1/2: whole-pixel positions, left = right
  { batch: 3, h: 4, w: 4, c: 5, H: 16, W: 16, align: false },
  { batch: 1, h: 5, w: 7, c: 3, H: 33, W: 29, align: true }, // fewer channels than a step of four
  { batch: 2, h: 10, w: 12, c: 13, H: 5, W: 6, align: true },
  { batch: 1, h: 8, w: 8, c: 2, H: 1, W: 1, align: true }, // one output pixel: no corner to align
  { batch: 1, h: 8, w: 8, c: 2, H: 1, W: 1, align: false },
  { batch: 2, h: 1, w: 1, c: 7, H: 5, W: 6, align: true },
  { batch: 1, h: 3, w: 3, c: 1, H: 9, W: 9, align: true },
];

const f = Math.fround;

/**
 * tfjs-wasm's ResizeBilinearGrad (tfjs 4.22, C++) written out: float32 scales and lerps, double literals
 * (1.0 - lerp) that make three of the four products float64, the sums rounded to float32 (a float32
 * `+=` of a double), the bottom-right product and its sum in float32; every dy element in order.
 */
function referenceGrad(dy: Float32Array, g: Geometry): Float32Array {
  const { batch, h, w, c, H, W, align } = g;
  const dx = new Float32Array(batch * h * w * c);
  const a = (out: number) => (align && out > 1 ? 1 : 0);
  const hs = f(f(h - a(H)) / f(H - a(H)));
  const ws = f(f(w - a(W)) / f(W - a(W)));
  for (let b = 0; b < batch; b++) {
    for (let r = 0; r < H; r++) {
      const y = f(r * hs);
      const [top, bottom, yl] = [Math.trunc(y), Math.min(Math.ceil(y), h - 1), f(y - Math.floor(y))];
      for (let col = 0; col < W; col++) {
        const x = f(col * ws);
        const [left, right, xl] = [Math.trunc(x), Math.min(Math.ceil(x), w - 1), f(x - Math.floor(x))];
        const at = (row: number, column: number) => ((b * h + row) * w + column) * c;
        const [tl, tr, bl, br] = [at(top, left), at(top, right), at(bottom, left), at(bottom, right)];
        const o = ((b * H + r) * W + col) * c;
        for (let k = 0; k < c; k++) {
          const v = dy[o + k]!;
          dx[tl + k] = dx[tl + k]! + v * (1 - yl) * (1 - xl);
          dx[tr + k] = dx[tr + k]! + v * (1 - yl) * xl;
          dx[bl + k] = dx[bl + k]! + f(v * yl) * (1 - xl);
          dx[br + k] = f(dx[br + k]! + f(f(v * yl) * xl));
        }
      }
    }
  }
  return dx;
}

/** dy's values: seeded, with a -0, huge, tiny, infinite and NaN element in the larger ones. */
function dyValues(g: Geometry, seed: number): Float32Array {
  const v = seededValues(g.batch * g.H * g.W * g.c, seed).map((x) => 3 * x);
  if (v.length > 64) [v[3], v[10], v[17], v[40], v[51]] = [-0, 3e38, 1e-41, Number.POSITIVE_INFINITY, Number.NaN];
  return v;
}

const name = (g: Geometry) => `${g.batch}x${g.h}x${g.w}x${g.c} <- ${g.H}x${g.W}${g.align ? ' aligned' : ''}`;

test("ResizeBilinearGrad on wasm: ours, tfjs-wasm's own kernel and the arithmetic written out agree bit for bit", async () => {
  await useBackend('wasm');
  const stock = stockWasmKernel('ResizeBilinearGrad');
  assert.ok(stock, 'tfjs-wasm ships a ResizeBilinearGrad');
  assert.notEqual(tf.getKernel('ResizeBilinearGrad', 'wasm')!.kernelFunc, stock.kernelFunc, 'ours is registered in its place');
  for (const [i, g] of GEOMETRIES.entries()) {
    const values = dyValues(g, 90 + i);
    const want = referenceGrad(values, g);
    tf.tidy(() => {
      const images = tf.zeros([g.batch, g.h, g.w, g.c]);
      const dy = tf.tensor4d(values, [g.batch, g.H, g.W, g.c]);
      const args = { inputs: { images, dy }, backend: tf.backend(), attrs: { alignCorners: g.align } };
      const info = stock.kernelFunc(args as unknown as Parameters<typeof stock.kernelFunc>[0]) as tf.TensorInfo;
      assertSameValues(tf.engine().makeTensorFromTensorInfo(info).dataSync(), want, `stock kernel, ${name(g)}`);
      const ours = resizeBilinearGradWasm(args);
      assert.ok(ours, `ours takes float32 ${name(g)}`);
      assertSameValues(tf.engine().makeTensorFromTensorInfo(ours).dataSync(), want, `ours, ${name(g)}`);
      // through the op's gradient, as training runs it
      const grad = tf.grad((x) => tf.mul(tf.image.resizeBilinear(x as tf.Tensor4D, [g.H, g.W], g.align), dy).sum())(images);
      assertSameValues(grad.dataSync(), want, `tf.grad of resizeBilinear, ${name(g)}`);
    });
  }
});

test('ResizeBilinearGrad on wasm: int32 images, the switch off and the cpu backend are left to the stock kernels', async () => {
  await useBackend('wasm');
  const g = GEOMETRIES[0]!;
  tf.tidy(() => {
    const dy = tf.tensor4d(dyValues(g, 7), [g.batch, g.H, g.W, g.c]);
    const float = tf.zeros([g.batch, g.h, g.w, g.c]);
    const args = (images: tf.Tensor) => ({ inputs: { images, dy }, backend: tf.backend(), attrs: { alignCorners: true } });
    assert.equal(resizeBilinearGradWasm(args(tf.zeros([g.batch, g.h, g.w, g.c], 'int32'))), null);
    assert.equal(
      withSwitch(setResizeGradWasm, false, () => resizeBilinearGradWasm(args(float))),
      null,
    );
    assert.notEqual(resizeBilinearGradWasm(args(float)), null);
  });
  await useBackend('cpu');
  tf.tidy(() => {
    const args = {
      inputs: { images: tf.zeros([1, 2, 2, 4]), dy: tf.ones([1, 3, 3, 4]) },
      backend: tf.backend(),
      attrs: { alignCorners: true },
    };
    assert.equal(resizeBilinearGradWasm(args), null);
  });
});

test('resize-grad.wasm (shared memory) and resize-grad-unshared.wasm zero dx, write nothing outside it (empty dx or dy included) and give the reference bits; both are what wabt assembles', async () => {
  for (const { file, memory, exports: k } of onFreshMemories('resize-grad', 64)) {
    // and empty ones (not given to tfjs-wasm's kernel: it would write outside dx for an empty dx)
    const empty: Geometry[] = [
      { batch: 1, h: 0, w: 4, c: 3, H: 5, W: 6, align: true },
      { batch: 1, h: 4, w: 0, c: 3, H: 5, W: 6, align: false },
      { batch: 1, h: 4, w: 4, c: 3, H: 0, W: 6, align: true },
    ];
    for (const [i, g] of [...GEOMETRIES, ...empty].entries()) {
      const values = dyValues(g, 40 + i);
      const n = g.batch * g.h * g.w * g.c;
      const f32 = new Float32Array(memory.buffer);
      // dy at 16 bytes, dx after it at a 4-byte (not 16-byte) offset, garbage in dx and a sentinel past it
      const [pdy, pdx] = [16, 16 + 4 * values.length + 4];
      f32.set(values, pdy / 4);
      f32.fill(7.5, pdx / 4, pdx / 4 + n + 8);
      k.run(pdy, pdx, g.batch, g.H, g.W, g.h, g.w, g.c, g.align ? 1 : 0);
      assertSameValues(f32.slice(pdx / 4, pdx / 4 + n), referenceGrad(values, g), `${file}: ${name(g)}`);
      assertSameValues(f32.slice(pdx / 4 + n, pdx / 4 + n + 8), new Float32Array(8).fill(7.5), `${file}: past dx, ${name(g)}`);
      assertSameValues(f32.slice(pdy / 4, pdy / 4 + values.length), values, `${file}: dy unchanged, ${name(g)}`);
    }
  }
  await assertAssembled('resize-grad', { unshared: true });
});

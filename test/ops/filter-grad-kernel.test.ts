/**
 * Our wasm filter-gradient kernel (src/ops/filter-grad-kernel.ts): every element of dW is the float32 sum,
 * in the order (image, output row, output column), of x * dy over the pixels whose tap lies inside the
 * image; checked bit for bit against that sum written out in JS, on both host backends, for the
 * geometries the nets use and the odd ones (strides, dilations, asymmetric padding, rectangular kernels,
 * channel counts that leave partial blocks or need padding to the register tile, rows longer than one
 * call's pixels).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { convFilterGrad, setFilterGradKernel, type ConvGeometry } from '../../src/ops/conv.ts';
import {
  filterGradHelperJobs,
  filterGradHelpers,
  kernelFilterGrad,
  kernelTakes,
  useFilterGradHelpers,
} from '../../src/ops/filter-grad-kernel.ts';
import { useBackend, seededValues } from '../helpers.ts';
import { assertAssembled } from './wasm-assembly.ts';

interface Case {
  name: string;
  x: [number, number, number, number];
  k: [number, number];
  cout: number;
  strides: [number, number];
  dilations: [number, number];
  pad: [number, number, number, number];
}

const cases: Case[] = [
  { name: '3x3 s1 pad 1', x: [2, 9, 11, 8], k: [3, 3], cout: 16, strides: [1, 1], dilations: [1, 1], pad: [1, 1, 1, 1] },
  { name: '3x3 s2 pad 1, odd sizes', x: [3, 13, 10, 4], k: [3, 3], cout: 8, strides: [2, 2], dilations: [1, 1], pad: [1, 1, 1, 1] },
  {
    name: "4x4 s2 pad 1 (the discriminator's)",
    x: [2, 16, 20, 16],
    k: [4, 4],
    cout: 32,
    strides: [2, 2],
    dilations: [1, 1],
    pad: [1, 1, 1, 1],
  },
  { name: '1x1 s1', x: [2, 7, 9, 12], k: [1, 1], cout: 24, strides: [1, 1], dilations: [1, 1], pad: [0, 0, 0, 0] },
  { name: '1x1 s2', x: [2, 8, 7, 4], k: [1, 1], cout: 8, strides: [2, 2], dilations: [1, 1], pad: [0, 0, 0, 0] },
  { name: '3x3 dilation 2 pad 2', x: [2, 12, 12, 8], k: [3, 3], cout: 8, strides: [1, 1], dilations: [2, 2], pad: [2, 2, 2, 2] },
  { name: 'asymmetric padding, stride 2', x: [1, 9, 9, 4], k: [3, 3], cout: 8, strides: [2, 2], dilations: [1, 1], pad: [0, 2, 1, 0] },
  {
    name: '5x3, strides (2, 1), dilations (1, 3)',
    x: [2, 11, 14, 4],
    k: [5, 3],
    cout: 8,
    strides: [2, 1],
    dilations: [1, 3],
    pad: [2, 2, 3, 3],
  },
  {
    name: 'channels 20 -> 40 (partial blocks of 16)',
    x: [2, 6, 7, 20],
    k: [3, 3],
    cout: 40,
    strides: [1, 1],
    dilations: [1, 1],
    pad: [1, 1, 1, 1],
  },
  {
    name: 'rows of 400 pixels (several calls a row)',
    x: [1, 3, 400, 4],
    k: [3, 3],
    cout: 8,
    strides: [1, 1],
    dilations: [1, 1],
    pad: [1, 1, 1, 1],
  },
  {
    name: '3 input channels (padded to 4), 7x7 stride 2 (a stem)',
    x: [2, 12, 14, 3],
    k: [7, 7],
    cout: 16,
    strides: [2, 2],
    dilations: [1, 1],
    pad: [3, 3, 3, 3],
  },
  {
    name: "19 -> 16 (the discriminator's first conv)",
    x: [2, 10, 12, 19],
    k: [4, 4],
    cout: 16,
    strides: [2, 2],
    dilations: [1, 1],
    pad: [1, 1, 1, 1],
  },
  {
    name: "16 -> 1 (the discriminator's classifier)",
    x: [1, 6, 8, 16],
    k: [4, 4],
    cout: 1,
    strides: [2, 2],
    dilations: [1, 1],
    pad: [1, 1, 1, 1],
  },
  {
    name: '6 -> 19 (an ASPP branch into 19 classes), dilation 3',
    x: [2, 8, 9, 6],
    k: [3, 3],
    cout: 19,
    strides: [1, 1],
    dilations: [3, 3],
    pad: [3, 3, 3, 3],
  },
  {
    name: 'a tap that never lies inside (pad 3 on 3x3)',
    x: [1, 2, 2, 4],
    k: [3, 3],
    cout: 8,
    strides: [1, 1],
    dilations: [1, 1],
    pad: [3, 3, 3, 3],
  },
];

const outSize = (size: number, k: number, s: number, d: number, lo: number, hi: number) =>
  Math.floor((size + lo + hi - (k - 1) * d - 1) / s) + 1;

/** dW as the documented float32 sums: over (b, y, xo) in that order, fround after every multiply and add. */
function reference(c: Case, x: Float32Array, dy: Float32Array, ho: number, wo: number): Float32Array {
  const [n, h, w, cin] = c.x;
  const [kh, kw] = c.k;
  const out = new Float32Array(kh * kw * cin * c.cout);
  for (let i = 0; i < kh; i++)
    for (let j = 0; j < kw; j++)
      for (let ci = 0; ci < cin; ci++)
        for (let co = 0; co < c.cout; co++) {
          let sum = 0;
          for (let b = 0; b < n; b++)
            for (let y = 0; y < ho; y++)
              for (let xo = 0; xo < wo; xo++) {
                const r = y * c.strides[0] + i * c.dilations[0] - c.pad[0];
                const q = xo * c.strides[1] + j * c.dilations[1] - c.pad[2];
                if (r < 0 || r >= h || q < 0 || q >= w) continue;
                const v = Math.fround(x[((b * h + r) * w + q) * cin + ci]! * dy[((b * ho + y) * wo + xo) * c.cout + co]!);
                sum = Math.fround(sum + v);
              }
          out[((i * kw + j) * cin + ci) * c.cout + co] = sum;
        }
  return out;
}

for (const backend of ['wasm', 'cpu'] as const) {
  test(`filter-gradient kernel on ${backend}: the float32 sum in (image, row, column) order, bit for bit, ${cases.length} geometries`, async () => {
    await useBackend(backend);
    for (const [ci, c] of cases.entries()) {
      const [n, h, w] = c.x;
      const ho = outSize(h, c.k[0], c.strides[0], c.dilations[0], c.pad[0], c.pad[1]);
      const wo = outSize(w, c.k[1], c.strides[1], c.dilations[1], c.pad[2], c.pad[3]);
      const xv = seededValues(
        c.x.reduce((a, b) => a * b, 1),
        10 + ci,
      );
      const dyv = seededValues(n * ho * wo * c.cout, 50 + ci);
      const want = reference(c, xv, dyv, ho, wo);
      const got = tf.tidy(() => {
        const x = tf.tensor4d(xv, c.x);
        const dy = tf.tensor4d(dyv, [n, ho, wo, c.cout]);
        const g: ConvGeometry = { strides: c.strides, dilations: c.dilations, pad: c.pad };
        const direct = kernelFilterGrad(x, dy, [...c.k, c.x[3], c.cout], g);
        // convFilterGrad takes the kernel for these channels: the same tensor values
        const through = convFilterGrad(x, dy, [...c.k, c.x[3], c.cout], g);
        assert.deepEqual(through.shape, [...c.k, c.x[3], c.cout]);
        return { direct: direct.dataSync().slice(), through: through.dataSync().slice() };
      });
      assert.equal(got.direct.length, want.length, c.name);
      for (let i = 0; i < want.length; i++) {
        if (!Object.is(got.direct[i], want[i])) assert.fail(`${c.name}: element ${i} is ${got.direct[i]}, the float32 sum ${want[i]}`);
      }
      assert.deepEqual(got.through, got.direct, c.name);
    }
  });
}

/** Calls large enough (>= 64 M multiply-adds, padded channels counted) for the helper threads, with their job counts worked out by hand. */
const shared: { c: Case; jobs: number; shares: { 2: number[]; 4: number[] } }[] = [
  // 4 x 32 x 48 pixels x 9 taps x 32 x 48 = 84.9 M; taps 9 x input blocks 2 (32 channels) x output blocks 3 (48):
  // 54 jobs; 2 parties [0, 27) [27, 54), 4 parties at floor(54 r / 4) = 0, 13, 27, 40: the helpers run 14, 13, 14
  {
    c: { name: '3x3 s1 32 -> 48', x: [4, 32, 48, 32], k: [3, 3], cout: 48, strides: [1, 1], dilations: [1, 1], pad: [1, 1, 1, 1] },
    jobs: 54,
    shares: { 2: [27], 4: [14, 13, 14] },
  },
  // the discriminator's first layer: 8 x 40 x 64 pixels x 16 taps x 20 (19 padded) x 16 = 104.9 M;
  // 2 input blocks, 1 output block, 16 taps: 32 jobs
  {
    c: { name: '4x4 s2 19 -> 16', x: [8, 80, 128, 19], k: [4, 4], cout: 16, strides: [2, 2], dilations: [1, 1], pad: [1, 1, 1, 1] },
    jobs: 32,
    shares: { 2: [16], 4: [8, 8, 8] },
  },
  // a classifier: 8 x 32 x 96 pixels x 128 x 24 (19 padded) = 75.5 M; 1 tap, 8 input blocks, 2 output blocks: 16 jobs
  {
    c: { name: '1x1 128 -> 19', x: [8, 32, 96, 128], k: [1, 1], cout: 19, strides: [1, 1], dilations: [1, 1], pad: [0, 0, 0, 0] },
    jobs: 16,
    shares: { 2: [8], 4: [4, 4, 4] },
  },
];
/** 2 x 32 x 40 x 9 x 32 x 48 = 35.4 M multiply-adds: under the helpers' threshold. */
const unshared: Case = {
  name: '3x3 s1 32 -> 48, small',
  x: [2, 32, 40, 32],
  k: [3, 3],
  cout: 48,
  strides: [1, 1],
  dilations: [1, 1],
  pad: [1, 1, 1, 1],
};

test('filter-gradient kernel with 1 and 3 helper threads: the same bits as alone, each helper running its share of the jobs; small calls stay on the caller', async () => {
  await useBackend('wasm');
  try {
    const run = (c: Case, seed: number) =>
      tf.tidy(() => {
        const [n, h, w] = c.x;
        const ho = outSize(h, c.k[0], c.strides[0], c.dilations[0], c.pad[0], c.pad[1]);
        const wo = outSize(w, c.k[1], c.strides[1], c.dilations[1], c.pad[2], c.pad[3]);
        const x = tf.tensor4d(seededValues(n * h * w * c.x[3], seed), c.x);
        const dy = tf.tensor4d(seededValues(n * ho * wo * c.cout, seed + 1), [n, ho, wo, c.cout]);
        const g: ConvGeometry = { strides: c.strides, dilations: c.dilations, pad: c.pad };
        return kernelFilterGrad(x, dy, [...c.k, c.x[3], c.cout], g)
          .dataSync()
          .slice();
      });
    await useFilterGradHelpers(0);
    const alone = shared.map(({ c }, i) => run(c, 100 + 2 * i));
    for (const helpers of [1, 3] as const) {
      await useFilterGradHelpers(helpers);
      assert.equal(filterGradHelpers(), helpers);
      for (const [i, { c, shares }] of shared.entries()) {
        const before = filterGradHelperJobs();
        const got = run(c, 100 + 2 * i);
        assert.deepEqual(got, alone[i], `${c.name}, ${helpers} helper(s)`);
        const ran = filterGradHelperJobs().map((v, r) => v - before[r]!);
        assert.deepEqual(ran, shares[helpers === 1 ? 2 : 4], `${c.name}: jobs each helper ran`);
      }
      // below 64 M multiply-adds the caller runs the call alone (waking a helper beside the backend's
      // spinning pool costs more than a few milliseconds of work saves)
      const before = filterGradHelperJobs();
      run(unshared, 7);
      assert.deepEqual(filterGradHelperJobs(), before);
    }
    // and the shared result is the float32 sum in (image, row, column) order
    const c = shared[2]!.c;
    const [n, h, w] = c.x;
    const ho = outSize(h, c.k[0], c.strides[0], c.dilations[0], c.pad[0], c.pad[1]);
    const wo = outSize(w, c.k[1], c.strides[1], c.dilations[1], c.pad[2], c.pad[3]);
    const want = reference(c, seededValues(n * h * w * c.x[3], 104), seededValues(n * ho * wo * c.cout, 105), ho, wo);
    assert.ok(
      alone[2]!.every((v, i) => Object.is(v, want[i])),
      'the 1x1 layer against the float32 sum',
    );
  } finally {
    await useFilterGradHelpers(0);
  }
  assert.equal(filterGradHelpers(), 0);
  await assert.rejects(useFilterGradHelpers(-1), /^Error: filter-grad kernel: helpers must be an integer in 0\.\.63, got -1$/);
  await assert.rejects(useFilterGradHelpers(1, Number.NaN), /^Error: filter-grad kernel: fromMacs must be a number >= 0, got NaN$/);
});

test('filter-gradient kernel agrees with the tensor-op path (transposes + forward conv) to float rounding, padded channels too; the switch brings that path back', async () => {
  await useBackend('wasm');
  const g: ConvGeometry = { strides: [2, 2], dilations: [1, 1], pad: [1, 1, 1, 1] };
  try {
    for (const [c, o] of [
      [8, 16],
      [3, 19],
    ] as const) {
      const x = tf.tensor4d(seededValues(2 * 10 * 12 * c, 1), [2, 10, 12, c]);
      const dy = tf.tensor4d(seededValues(2 * 5 * 6 * o, 2), [2, 5, 6, o]);
      setFilterGradKernel(true);
      const kernel = convFilterGrad(x, dy, [3, 3, c, o], g).dataSync();
      assert.deepEqual(kernel, kernelFilterGrad(x, dy, [3, 3, c, o], g).dataSync());
      setFilterGradKernel(false);
      const stock = convFilterGrad(x, dy, [3, 3, c, o], g).dataSync();
      let worst = 0;
      for (let i = 0; i < stock.length; i++) worst = Math.max(worst, Math.abs(kernel[i]! - stock[i]!) / (1 + Math.abs(stock[i]!)));
      assert.ok(worst > 0 && worst < 1e-5, `${c} -> ${o}: relative difference ${worst}`);
      tf.dispose([x, dy]);
    }
  } finally {
    setFilterGradKernel(true);
  }
});

test('filter-gradient kernel: layers beyond its memory limit (2^28 floats of x and dy, padded) are left to the tensor-op path', () => {
  assert.equal(kernelTakes(4, 8, 2 ** 28), true);
  assert.equal(kernelTakes(4, 8, 2 ** 28 + 1), false);
  // 3 channels pad to 4: 3/4 of the limit is the most it takes
  assert.equal(kernelTakes(3, 8, 0.75 * 2 ** 28), true);
  assert.equal(kernelTakes(3, 8, 0.75 * 2 ** 28 + 3), false);
});

test('the committed filter-grad.wasm is what wabt assembles from filter-grad.wat', async () => {
  await assertAssembled('filter-grad', { unshared: false });
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import {
  conv2d,
  convGeometry,
  convInputGrad,
  convOutSize,
  setHostFilterShuffle,
  setMatmulInputGrad,
  type ConvOptions,
} from '../../src/ops/conv.ts';
import { useBackend, seededValues, assertClose, finiteDiff, withSwitch } from '../helpers.ts';

type Pad = 'same' | 'valid' | [[number, number], [number, number], [number, number], [number, number]];

/** Gradients of sum(conv(x, w) * r) w.r.t. x and w with tfjs's own conv2d on the current backend. */
function nativeGrads(xs: number[], ws: number[], xv: Float32Array, wv: Float32Array, stride: number, pad: Pad) {
  return tf.tidy(() => {
    const x = tf.tensor4d(xv, xs as [number, number, number, number]);
    const w = tf.tensor4d(wv, ws as [number, number, number, number]);
    const out = tf.conv2d(x, w, stride, pad);
    const r = tf.tensor(seededValues(out.size, 99), out.shape);
    const [gx, gw] = tf.grads((a: tf.Tensor, b: tf.Tensor) =>
      tf
        .conv2d(a as tf.Tensor4D, b as tf.Tensor4D, stride, pad)
        .mul(r)
        .sum(),
    )([x, w]);
    return { gx: gx!.dataSync().slice(), gw: gw!.dataSync().slice(), out: out.dataSync().slice() };
  });
}

const cases: { name: string; x: number[]; w: number[]; stride: number; pad: Pad }[] = [
  { name: '3x3 s1 same', x: [2, 7, 6, 3], w: [3, 3, 3, 4], stride: 1, pad: 'same' },
  { name: '3x3 s2 same even', x: [2, 8, 6, 3], w: [3, 3, 3, 5], stride: 2, pad: 'same' },
  { name: '3x3 s2 valid odd', x: [1, 9, 7, 2], w: [3, 3, 2, 3], stride: 2, pad: 'valid' },
  { name: '3x3 s1 valid', x: [2, 6, 5, 2], w: [3, 3, 2, 2], stride: 1, pad: 'valid' },
  {
    name: '7x7 s2 explicit 3',
    x: [1, 12, 10, 3],
    w: [7, 7, 3, 4],
    stride: 2,
    pad: [
      [0, 0],
      [3, 3],
      [3, 3],
      [0, 0],
    ],
  },
  {
    name: '3x3 s2 explicit 1',
    x: [2, 8, 8, 3],
    w: [3, 3, 3, 4],
    stride: 2,
    pad: [
      [0, 0],
      [1, 1],
      [1, 1],
      [0, 0],
    ],
  },
  {
    name: '3x3 s1 explicit asym',
    x: [1, 6, 6, 2],
    w: [3, 3, 2, 3],
    stride: 1,
    pad: [
      [0, 0],
      [2, 0],
      [0, 1],
      [0, 0],
    ],
  },
  { name: '1x1 s1', x: [2, 5, 4, 6], w: [1, 1, 6, 3], stride: 1, pad: 'valid' },
  { name: '1x1 s2', x: [2, 8, 7, 4], w: [1, 1, 4, 3], stride: 2, pad: 'valid' },
  {
    name: '4x4 s2 explicit 1 (discriminator)',
    x: [1, 10, 8, 3],
    w: [4, 4, 3, 2],
    stride: 2,
    pad: [
      [0, 0],
      [1, 1],
      [1, 1],
      [0, 0],
    ],
  },
  {
    name: '5x5 s3 explicit asym',
    x: [2, 11, 13, 2],
    w: [5, 5, 2, 3],
    stride: 3,
    pad: [
      [0, 0],
      [2, 1],
      [0, 2],
      [0, 0],
    ],
  },
  { name: '2x2 s2 valid (stride = kernel)', x: [1, 8, 6, 3], w: [2, 2, 3, 4], stride: 2, pad: 'valid' },
];

test('wasm Conv2DBackpropFilter/Input equal the cpu backend on strides 1/2, same/valid/explicit padding', async () => {
  for (const c of cases) {
    const xv = seededValues(
      c.x.reduce((a, b) => a * b),
      1,
    );
    const wv = seededValues(
      c.w.reduce((a, b) => a * b),
      2,
    );
    await useBackend('cpu');
    const ref = nativeGrads(c.x, c.w, xv, wv, c.stride, c.pad);
    await useBackend('wasm');
    const got = nativeGrads(c.x, c.w, xv, wv, c.stride, c.pad);
    assertClose(got.out, ref.out, 1e-5, `${c.name} forward`);
    assertClose(got.gw, ref.gw, 1e-5, `${c.name} dW`);
    assertClose(got.gx, ref.gx, 1e-5, `${c.name} dX`);
  }
});

const atrous: { name: string; x: number[]; w: number[]; opts: ConvOptions }[] = [
  { name: 'dilation 2 pad 2', x: [2, 9, 8, 3], w: [3, 3, 3, 2], opts: { dilation: 2, pad: 2 } },
  { name: 'dilation 4 pad 4', x: [1, 10, 11, 2], w: [3, 3, 2, 3], opts: { dilation: 4, pad: 4 } },
  { name: 'dilation 3 no pad', x: [1, 9, 10, 2], w: [3, 3, 2, 2], opts: { dilation: 3 } },
  { name: 'dilation [2,3] asym pad', x: [1, 8, 9, 2], w: [3, 2, 2, 2], opts: { dilation: [2, 3], pad: [1, 2, 3, 0] } },
  { name: 'dilation 6 pad 6 (ASPP)', x: [1, 8, 8, 2], w: [3, 3, 2, 2], opts: { dilation: 6, pad: 6 } },
  { name: 'stride 2 pad 1 (no dilation)', x: [1, 8, 7, 2], w: [3, 3, 2, 2], opts: { stride: 2, pad: 1 } },
  // Only the centre tap ever sees the input: the filter is trimmed to 1x1.
  { name: 'dilation 24 pad 24 on 8x16 (ASPP, one live tap)', x: [2, 8, 16, 3], w: [3, 3, 3, 2], opts: { dilation: 24, pad: 24 } },
  // Tap 0 is dead and the trimmed padding goes negative: the input is cropped by one row/column.
  { name: 'dilation 5 pad [4,2,4,2] (trim with crop)', x: [1, 8, 8, 2], w: [3, 3, 2, 2], opts: { dilation: 5, pad: [4, 2, 4, 2] } },
];

for (const [backend, hostShuffle] of [
  ['wasm', true],
  ['cpu', true],
  ['cpu', false],
] as const) {
  const how = hostShuffle ? '' : ' with device-side filter shuffles (the GPU path)';
  test(`atrous conv2d on ${backend}${how}: forward equals tf.conv2d(dilation), gradients match finite differences`, async () => {
    await useBackend(backend);
    setHostFilterShuffle(hostShuffle);
    for (const c of atrous) {
      const xv = seededValues(
        c.x.reduce((a, b) => a * b),
        3,
      );
      const wv = seededValues(
        c.w.reduce((a, b) => a * b),
        4,
      );
      const xShape = c.x as [number, number, number, number];
      const wShape = c.w as [number, number, number, number];
      const d = c.opts.dilation ?? 1;
      const dil: [number, number] = typeof d === 'number' ? [d, d] : [d[0], d[1]];
      const p = c.opts.pad ?? 0;
      const pad4 = typeof p === 'number' ? [p, p, p, p] : p.length === 2 ? [p[0], p[0], p[1], p[1]] : p;
      const s = (c.opts.stride ?? 1) as number;
      const ho = convOutSize(xShape[1], wShape[0], s, dil[0], pad4[0]! + pad4[1]!);
      const wo = convOutSize(xShape[2], wShape[1], s, dil[1], pad4[2]! + pad4[3]!);
      const rv = seededValues(xShape[0] * ho * wo * wShape[3], 5);
      const loss = (a: Float32Array, b: Float32Array) =>
        tf.tidy(
          () =>
            conv2d(tf.tensor4d(a, xShape), tf.tensor4d(b, wShape), c.opts)
              .mul(tf.tensor(rv, [xShape[0], ho, wo, wShape[3]]))
              .sum()
              .dataSync()[0]!,
        );
      // Forward against tfjs's own dilated conv.
      const fwd = tf.tidy(() => {
        const x = tf.tensor4d(xv, xShape);
        const w = tf.tensor4d(wv, wShape);
        const mine = conv2d(x, w, c.opts);
        const theirs = tf.conv2d(
          x,
          w,
          s,
          [
            [0, 0],
            [pad4[0]!, pad4[1]!],
            [pad4[2]!, pad4[3]!],
            [0, 0],
          ],
          'NHWC',
          dil,
        );
        assert.deepEqual(mine.shape, [xShape[0], ho, wo, wShape[3]]);
        return [mine.dataSync().slice(), theirs.dataSync().slice()];
      });
      assertClose(fwd[0]!, fwd[1]!, 1e-6, `${c.name} forward`);
      const [gx, gw] = tf.tidy(() => {
        const g = tf.grads((a: tf.Tensor, b: tf.Tensor) =>
          conv2d(a as tf.Tensor4D, b as tf.Tensor4D, c.opts)
            .mul(tf.tensor(rv, [xShape[0], ho, wo, wShape[3]]))
            .sum(),
        );
        return g([tf.tensor4d(xv, xShape), tf.tensor4d(wv, wShape)]).map((t) => t.dataSync().slice());
      });
      // The loss is linear in x (and in w), so central differences are exact up to float32 rounding.
      const xi = [0, 7, 19, xv.length - 1, Math.floor(xv.length / 2)];
      const wi = [0, 3, wv.length - 1, Math.floor(wv.length / 3)];
      assertClose(
        xi.map((i) => gx![i]!),
        finiteDiff((a) => loss(a, wv), xv, xi, 0.25),
        2e-3,
        `${c.name} dX`,
      );
      assertClose(
        wi.map((i) => gw![i]!),
        finiteDiff((b) => loss(xv, b), wv, wi, 0.25),
        2e-3,
        `${c.name} dW`,
      );
    }
    setHostFilterShuffle(true);
  });
}

test('strided conv gradients with device-side filter shuffles and strided slices (the GPU path) equal the cpu backend', async () => {
  await useBackend('cpu');
  for (const c of cases.filter((k) => k.stride > 1)) {
    const xv = seededValues(
      c.x.reduce((a, b) => a * b),
      1,
    );
    const wv = seededValues(
      c.w.reduce((a, b) => a * b),
      2,
    );
    const ref = nativeGrads(c.x, c.w, xv, wv, c.stride, c.pad);
    await useBackend('wasm');
    setHostFilterShuffle(false);
    const got = nativeGrads(c.x, c.w, xv, wv, c.stride, c.pad);
    setHostFilterShuffle(true);
    assertClose(got.gx, ref.gx, 1e-5, `${c.name} dX`);
    assertClose(got.gw, ref.gw, 1e-5, `${c.name} dW`);
    await useBackend('cpu');
  }
});

test('1x1 filter gradient: the host rows (blocks of pixels, partial last block) give the bits of the strided-slice + transpose path, stride 1 and 2', async () => {
  await useBackend('wasm');
  // rows: 3 * 9 * 11 = 297 and 3 * 5 * 6 = 90 pixels, neither a multiple of the 32-pixel block
  const x = [3, 9, 11, 40];
  const w = [1, 1, 40, 5];
  for (const stride of [1, 2]) {
    const xv = seededValues(
      x.reduce((a, b) => a * b),
      7,
    );
    const wv = seededValues(
      w.reduce((a, b) => a * b),
      8,
    );
    const host = nativeGrads(x, w, xv, wv, stride, 'valid');
    setHostFilterShuffle(false);
    const device = nativeGrads(x, w, xv, wv, stride, 'valid');
    setHostFilterShuffle(true);
    assert.equal(host.gw.length, 40 * 5);
    assert.deepEqual(Array.from(host.gw), Array.from(device.gw), `stride ${stride} dW`);
  }
});

for (const backend of ['wasm', 'cpu'] as const) {
  test(`strided input gradient on ${backend}: one conv per phase (kernel not a multiple of the stride) and the stacked conv's host interleave (a multiple) give the bits of the stacked conv's transpose + crop, every position`, async () => {
    await useBackend(backend);
    // [x shape, filter shape, stride, padding]: the plain net's and ResNet's 3x3 and 1x1 stride 2, odd
    // sizes (rows no tap reaches), stride 3, a 5x5, a 2x3 kernel (one axis even), tfjs-'same'-style pads
    const cases: [number[], number[], number, ConvOptions['pad']][] = [
      [[2, 8, 12, 5], [3, 3, 5, 7], 2, 1],
      [[2, 9, 11, 5], [3, 3, 5, 7], 2, 1],
      [[3, 8, 10, 6], [1, 1, 6, 4], 2, 0],
      [[1, 9, 9, 3], [1, 1, 3, 5], 2, 0],
      [[2, 10, 13, 4], [3, 3, 4, 6], 3, 1],
      [[1, 11, 12, 3], [5, 5, 3, 4], 2, 2],
      [[2, 8, 9, 4], [2, 3, 4, 3], 2, [0, 1, 1, 1]],
      [[1, 7, 8, 3], [3, 3, 3, 2], 2, [0, 1, 0, 1]],
      [[1, 10, 10, 2], [3, 3, 2, 2], 2, 0],
      // kernels a multiple of the stride (one stacked conv, interleaved on the host): the discriminator's
      // 4x4 stride 2 pad 1 on even and odd sizes, 2x2 stride 2, 6x6 stride 3, 4x2 with a one-sided pad
      [[2, 8, 12, 5], [4, 4, 5, 7], 2, 1],
      [[1, 9, 11, 3], [4, 4, 3, 4], 2, 1],
      [[2, 8, 8, 3], [2, 2, 3, 4], 2, 0],
      [[1, 10, 13, 2], [6, 6, 2, 3], 3, 2],
      [[1, 7, 9, 3], [4, 2, 3, 2], 2, [0, 1, 1, 0]],
    ];
    cases.forEach(([xs, ws, stride, pad], k) => {
      const g = convGeometry({ stride, pad });
      const ho = convOutSize(xs[1]!, ws[0]!, stride, 1, g.pad[0] + g.pad[1]);
      const wo = convOutSize(xs[2]!, ws[1]!, stride, 1, g.pad[2] + g.pad[3]);
      const dy = tf.tensor4d(seededValues(xs[0]! * ho * wo * ws[3]!, 30 + k), [xs[0]!, ho, wo, ws[3]!]);
      const filter = tf.tensor4d(
        seededValues(
          ws.reduce((a, b) => a * b),
          60 + k,
        ),
        ws as [number, number, number, number],
      );
      const shape = xs as [number, number, number, number];
      const before = tf.memory().numTensors;
      const phases = convInputGrad(dy, filter, shape, g);
      assert.equal(tf.memory().numTensors, before + 1, `case ${k}: only the gradient is left`);
      setHostFilterShuffle(false);
      const stacked = convInputGrad(dy, filter, shape, g);
      setHostFilterShuffle(true);
      assert.deepEqual(phases.shape, xs);
      const [p, q] = [phases.dataSync(), stacked.dataSync()];
      const differ = p.findIndex((v, i) => !Object.is(v, q[i]));
      assert.equal(differ, -1, `case ${k} (${ws[0]}x${ws[1]} stride ${stride}): first differing element ${differ}`);
      // rows past the last one any tap reaches are zeros, not stale memory
      if (k === 8) assert.equal(p[p.length - 1], 0);
      tf.dispose([dy, filter, phases, stacked]);
    });
  });
}

test("conv gradients on wasm run no Pad kernel: the convolutions pad themselves (PadV2 on the filter gradient's layout cost as much as its conv)", async () => {
  await useBackend('wasm');
  for (const opts of [{ pad: 1 }, { stride: 2, pad: 1 }, { dilation: 2, pad: 2 }, { dilation: 6, pad: 6 }] as ConvOptions[]) {
    const x = tf.tensor4d(seededValues(2 * 12 * 16 * 3, 1), [2, 12, 16, 3]);
    const w = tf.tensor4d(seededValues(3 * 3 * 3 * 4, 2), [3, 3, 3, 4]);
    const info = await tf.profile(() => {
      const [gx, gw] = tf.grads((a: tf.Tensor, b: tf.Tensor) =>
        conv2d(a as tf.Tensor4D, b as tf.Tensor4D, opts)
          .square()
          .sum(),
      )([x, w]);
      gx!.dataSync();
      gw!.dataSync();
    });
    const names = new Set(info.kernels.map((k) => k.name));
    assert.ok(names.has('Conv2D'), `${JSON.stringify(opts)}: ${[...names]}`);
    assert.ok(!names.has('PadV2'), `${JSON.stringify(opts)}: a Pad kernel ran: ${[...names]}`);
    tf.dispose([x, w]);
  }
});

test('conv2d rejects bad shapes and options with clear messages', async () => {
  await useBackend('cpu');
  const x = tf.zeros([1, 4, 4, 3]) as tf.Tensor4D;
  assert.throws(() => conv2d(x, tf.zeros([3, 3, 2, 1]) as tf.Tensor4D), /input has 3 channels but the filter \[3,3,2,1\] expects 2/);
  assert.throws(
    () => conv2d(tf.zeros([4, 4, 3]) as unknown as tf.Tensor4D, tf.zeros([3, 3, 3, 1]) as tf.Tensor4D),
    /input must be rank 4 \(NHWC\), got shape \[4,4,3\]/,
  );
  assert.throws(
    () => conv2d(x, tf.zeros([3, 3, 3, 1]) as tf.Tensor4D, { stride: 2, dilation: 2 }),
    /stride 2,2 with dilation 2,2 is not supported/,
  );
  assert.throws(() => conv2d(x, tf.zeros([3, 3, 3, 1]) as tf.Tensor4D, { pad: -1 }), /pad must be non-negative integers, got -1/);
  tf.dispose(x);
});

/** dL/dx of a conv in float64, term by term: dx[b, oy*sh + i*dh - top, ox*sw + j*dw - left, ci] += dy[b, oy, ox, co] W[i, j, ci, co]. */
function inputGradReference(
  dy: tf.Tensor4D,
  filter: tf.Tensor4D,
  [n, h, w, cin]: number[],
  g: ReturnType<typeof convGeometry>,
): Float64Array {
  const [, ho, wo, cout] = dy.shape;
  const [kh, kw] = filter.shape;
  const [d, f] = [dy.dataSync(), filter.dataSync()];
  const dx = new Float64Array(n! * h! * w! * cin!);
  for (let b = 0; b < n!; b++)
    for (let oy = 0; oy < ho; oy++)
      for (let ox = 0; ox < wo; ox++)
        for (let i = 0; i < kh; i++)
          for (let j = 0; j < kw; j++) {
            const y = oy * g.strides[0] + i * g.dilations[0] - g.pad[0];
            const x = ox * g.strides[1] + j * g.dilations[1] - g.pad[2];
            if (y < 0 || y >= h! || x < 0 || x >= w!) continue;
            for (let ci = 0; ci < cin!; ci++)
              for (let co = 0; co < cout; co++)
                dx[((b * h! + y) * w! + x) * cin! + ci]! +=
                  d[((b * ho + oy) * wo + ox) * cout + co]! * f[((i * kw + j) * cin! + ci) * cout + co]!;
          }
  return dx;
}

for (const backend of ['wasm', 'cpu'] as const) {
  test(`input gradient as one matmul and a scatter on ${backend} (maps of at most 3x the filter's output channels in pixels): exact on integers, close to float64 on reals, convolutions past the line`, async () => {
    await useBackend(backend);
    // [x shape, filter shape, options]: the discriminator's 4x4 stride 2 pad 1 at the line (2*4*6 = 48 pixels,
    // 16 out), 3x3 stride 1, 3x3 stride 2 with a one-sided pad, a dilated 3x3, a 2x3 kernel with strides (2, 1)
    const cases: [number[], number[], ConvOptions][] = [
      [[2, 8, 12, 5], [4, 4, 5, 16], { stride: 2, pad: 1 }],
      [[1, 4, 5, 6], [3, 3, 6, 12], { pad: 1 }],
      [[1, 7, 9, 3], [3, 3, 3, 10], { stride: 2, pad: [0, 1, 1, 0] }],
      [[1, 6, 7, 4], [3, 3, 4, 24], { dilation: 2, pad: 2 }],
      [[1, 6, 5, 3], [2, 3, 3, 8], { stride: [2, 1] }],
    ];
    for (const [k, [xs, ws, opts]] of cases.entries()) {
      const g = convGeometry(opts);
      const ho = convOutSize(xs[1]!, ws[0]!, g.strides[0], g.dilations[0], g.pad[0] + g.pad[1]);
      const wo = convOutSize(xs[2]!, ws[1]!, g.strides[1], g.dilations[1], g.pad[2] + g.pad[3]);
      assert.ok(xs[0]! * ho * wo <= 3 * ws[3]!, `case ${k} is on the matmul's side of the line`);
      const shape = xs as [number, number, number, number];
      const size = (s: number[]) => s.reduce((a, b) => a * b, 1);
      for (const integers of [true, false]) {
        // small integers: every product and sum exact in float32, whatever the order: the scatter's indexing bit for bit
        const values = (n: number, seed: number) =>
          integers ? seededValues(n, seed).map((v) => Math.round(v * 2)) : seededValues(n, seed);
        const dy = tf.tensor4d(values(xs[0]! * ho * wo * ws[3]!, 70 + k), [xs[0]!, ho, wo, ws[3]!]);
        const filter = tf.tensor4d(values(size(ws), 90 + k), ws as [number, number, number, number]);
        const before = tf.memory().numTensors;
        let dx: tf.Tensor4D | null = null;
        const { kernels } = await tf.profile(() => {
          dx = convInputGrad(dy, filter, shape, g);
        });
        const names = kernels.map((x) => x.name);
        assert.ok(names.includes('BatchMatMul') && !names.includes('Conv2D'), `case ${k}: ${names}`);
        assert.equal(tf.memory().numTensors, before + 1, `case ${k}: only the gradient is left`);
        const ref = inputGradReference(dy, filter, xs, g);
        const got = dx!.dataSync();
        if (integers) assert.deepEqual(Array.from(got), Array.from(ref), `case ${k}: integers`);
        else assertClose(got, ref, 2e-6, `case ${k}`);
        const conv = withSwitch(setMatmulInputGrad, false, () => convInputGrad(dy, filter, shape, g));
        assertClose(conv.dataSync(), ref, 2e-6, `case ${k}: the convolutions`);
        tf.dispose([dy, filter, dx!, conv]);
      }
    }
    // past the line (2*4*6 = 48 pixels, 15 out channels: 48 > 45): the convolutions
    const dy = tf.tensor4d(seededValues(48 * 15, 5), [2, 4, 6, 15]);
    const filter = tf.tensor4d(seededValues(4 * 4 * 5 * 15, 6), [4, 4, 5, 15]);
    const { kernels } = await tf.profile(() => {
      convInputGrad(dy, filter, [2, 8, 12, 5], convGeometry({ stride: 2, pad: 1 })).dispose();
    });
    const names = kernels.map((x) => x.name);
    assert.ok(names.includes('Conv2D') && !names.includes('BatchMatMul'), `${names}`);
    tf.dispose([dy, filter]);
  });
}

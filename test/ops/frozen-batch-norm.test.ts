/**
 * Frozen batch norm's wasm passes (src/ops/model/frozen-batch-norm.ts, batch-norm.wat's affine_f32 and
 * scale_f32) against the tensor formula y = x * scale + shift, element for element, forward and backward.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { frozenAffineLoop, setFrozenBatchNormWasm } from '../../src/ops/model/frozen-batch-norm.ts';
import { batchNormLayer, type BatchNormState } from '../../src/ops/model/layers.ts';
import { ParamStore } from '../../src/ops/model/params.ts';
import { assertSameValues, seededValues, useBackend, withSwitch } from '../helpers.ts';
import { onFreshMemories } from './wasm-assembly.ts';

const SPECIAL = [NaN, 0, -0, Infinity, -Infinity, 1e-45, -3e38, 3e38];

/** A frozen layer of `c` channels with seeded buffers: gamma of both signs, a zero and a negative variance among them. */
function frozenLayer(c: number, seed: number) {
  const store = new ParamStore(0);
  const state: BatchNormState = { mode: 'frozen', training: false, track: false };
  const layer = batchNormLayer(store, 'bn', 'backbone', c, state);
  const variance = seededValues(c, seed + 3).map((v) => v * v * 4 + 1e-3);
  [variance[0], variance[Math.min(1, c - 1)]] = [0, c > 4 ? -1 : variance[1]!];
  const set = (name: string, values: Float32Array) => store.get(`bn.${name}`).assign(tf.tensor1d(values));
  set(
    'weight',
    seededValues(c, seed).map((v) => v * 2),
  );
  set('bias', seededValues(c, seed + 1));
  set(
    'running_mean',
    seededValues(c, seed + 2).map((v) => v * 3),
  );
  set('running_var', variance);
  return { store, layer, set };
}

/** x with the special values at the front. */
function input(shape: number[], seed: number): tf.Tensor4D {
  const v = seededValues(
    shape.reduce((a, b) => a * b, 1),
    seed,
  ).map((x) => x * 5);
  SPECIAL.forEach((s, i) => (v[i * 3] = s));
  return tf.tensor4d(v, shape as [number, number, number, number]);
}

/** y and dL/dx for `dy`, with the switch as given, and the kernels the second of two calls ran. */
function run(layer: (x: tf.Tensor4D) => tf.Tensor4D, x: tf.Tensor4D, dy: tf.Tensor4D, wasmPasses: boolean) {
  return withSwitch(setFrozenBatchNormWasm, wasmPasses, async () => {
    const once = () =>
      tf.tidy(() => {
        const y = layer(x).dataSync().slice();
        const dx = tf
          .grad((v) => layer(v as tf.Tensor4D))(x, dy)
          .dataSync()
          .slice();
        return { y, dx };
      });
    once();
    let result = once();
    const info = await tf.profile(() => {
      result = once();
    });
    return { ...result, kernels: info.kernels.map((k) => k.name) };
  });
}

test('frozen batch norm on wasm: y and dL/dx from the wasm passes have the bits of tfjs Multiply and Add (4 to 2048 channels; NaN, infinities, signed zeros; zero and negative variance)', async () => {
  await useBackend('wasm');
  for (const c of [4, 8, 12, 64, 2048]) {
    const { layer, store } = frozenLayer(c, 10 + c);
    const shape = [2, 3, c > 64 ? 2 : 5, c];
    const x = input(shape, 20 + c);
    const dy = input(shape, 30 + c);
    const formula = await run(layer, x, dy, false);
    const ours = await run(layer, x, dy, true);
    assertSameValues(ours.y, formula.y, `${c} channels: y`);
    assertSameValues(ours.dx, formula.dx, `${c} channels: dx`);
    assert.ok(formula.kernels.includes('Multiply') && formula.kernels.includes('Add'), `${c}: the formula runs Multiply and Add`);
    for (const k of ['Multiply', 'Add', 'Rsqrt', 'Sub'])
      assert.ok(!ours.kernels.includes(k), `${c} channels: no ${k} kernel once scale and shift are kept (ran: ${ours.kernels})`);
    assert.ok(ours.y.some((v) => Number.isNaN(v)) && ours.y.some((v) => v === Infinity || v === -Infinity), `${c}: specials reached y`);
    tf.dispose([x, dy]);
    store.dispose();
  }
});

test('frozen batch norm on wasm: an assign to any buffer recomputes scale and shift; no tensors are left behind', async () => {
  await useBackend('wasm');
  const c = 16;
  const { layer, store, set } = frozenLayer(c, 7);
  const x = input([2, 4, 4, c], 8);
  const dy = input([2, 4, 4, c], 9);
  for (const [name, seed] of [
    ['running_var', 40],
    ['running_mean', 41],
    ['weight', 42],
    ['bias', 43],
  ] as const) {
    const before = await run(layer, x, dy, true);
    set(
      name,
      seededValues(c, seed).map((v) => (name === 'running_var' ? v * v + 0.5 : v * 3)),
    );
    const tensors = tf.memory().numTensors;
    const [ours, formula] = [await run(layer, x, dy, true), await run(layer, x, dy, false)];
    assert.equal(tf.memory().numTensors, tensors, `after ${name}: no tensors left`);
    assertSameValues(ours.y, formula.y, `after ${name}: y`);
    assertSameValues(ours.dx, formula.dx, `after ${name}: dx`);
    assert.notDeepEqual(Array.from(ours.y), Array.from(before.y), `${name} changed y`);
  }
  tf.dispose([x, dy]);
  store.dispose();
});

test('frozen batch norm keeps the tensor formula for 3 or 19 channels, on cpu, and switched off', async () => {
  for (const [backend, c, on] of [
    ['wasm', 3, true],
    ['wasm', 19, true],
    ['wasm', 8, false],
    ['cpu', 8, true],
  ] as const) {
    await useBackend(backend);
    const { layer, store } = frozenLayer(c, 5);
    const x = input([1, 3, 3, c], 6);
    const r = await run(layer, x, x, on);
    assert.ok(r.kernels.includes('Multiply') && r.kernels.includes('Add'), `${backend}, ${c} channels, switch ${on}: Multiply and Add ran`);
    tf.dispose(x);
    store.dispose();
  }
});

test("affine_f32 and scale_f32 of batch-norm.wasm and batch-norm-unshared.wasm, and the JS loop the passes fall back to, give float32 Multiply and Add's results (unaligned, in place, nothing past out)", () => {
  const f = Math.fround;
  for (const c of [4, 8, 36]) {
    const rows = 13;
    const n = rows * c;
    const v = seededValues(n, c).map((x) => x * 7);
    SPECIAL.forEach((s, i) => (v[i * 5] = s));
    const scale = seededValues(c, c + 1).map((x) => x * 2);
    [scale[1], scale[2]] = [Infinity, -0];
    const shift = seededValues(c, c + 2);
    shift[3] = NaN;
    const expectAffine = v.map((x, i) => f(f(x * scale[i % c]!) + shift[i % c]!));
    const expectScale = v.map((x, i) => f(x * scale[i % c]!));
    const loop = new Float32Array(n);
    frozenAffineLoop(v, c, scale, shift, loop);
    assertSameValues(loop, expectAffine, `JS loop, ${c} channels: affine`);
    frozenAffineLoop(v, c, scale, null, loop);
    assertSameValues(loop, expectScale, `JS loop, ${c} channels: scale`);
    for (const { file, memory, exports: m } of onFreshMemories('batch-norm', 2)) {
      // v, scale, shift, out from byte 4 (4-byte, not 16-byte, aligned); garbage in out, a sentinel past it
      const [pv, ps, pt, po] = [4, 4 + 4 * n, 4 + 4 * (n + c), 4 + 4 * (n + 2 * c)];
      const heap = new Float32Array(memory.buffer);
      heap.set(v, pv / 4);
      heap.set(scale, ps / 4);
      heap.set(shift, pt / 4);
      const what = `${file}, ${c} channels`;
      for (const [name, call, expected] of [
        ['affine_f32', () => m.affine_f32(pv, rows, c, ps, pt, po), expectAffine],
        ['scale_f32', () => m.scale_f32(pv, rows, c, ps, po), expectScale],
      ] as const) {
        heap.fill(9.25, po / 4, po / 4 + n + 4);
        call();
        assertSameValues(heap.slice(po / 4, po / 4 + n), expected, `${what}: ${name}`);
        assertSameValues(heap.slice(po / 4 + n, po / 4 + n + 4), new Float32Array(4).fill(9.25), `${what}: ${name}, past out`);
      }
      // in place: out over v
      m.affine_f32(pv, rows, c, ps, pt, pv);
      assertSameValues(heap.slice(pv / 4, pv / 4 + n), expectAffine, `${what}: affine_f32 in place`);
      m.scale_f32(pv, 0, c, ps, po);
      assertSameValues(heap.slice(po / 4, po / 4 + 1), [expectScale[0]!], `${what}: zero rows write nothing`);
    }
  }
});

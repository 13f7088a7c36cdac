import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { deeplabV2, type SegModel } from '../../src/ops/model/deeplab.ts';
import { discriminator } from '../../src/ops/model/discriminator.ts';
import { Adam, SGD, gradients } from '../../src/ops/optim.ts';
import { decodeSafetensors, encodeSafetensors, readSafetensorsHeader, type TensorToEncode } from '../../src/ops/safetensors.ts';
import {
  applyModelState,
  disposeCheckpoint,
  loadCheckpoint,
  loadSafetensors,
  modelState,
  saveCheckpoint,
  saveModelSafetensors,
} from '../../src/io/weights.ts';
import { useBackend, seededValues, watchTidyResults } from '../helpers.ts';

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'spcl-weights-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A hand-built safetensors buffer: header JSON as given (no padding), then `data`. */
function rawFile(header: object, data: Uint8Array): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

const torchShape = (s: readonly number[]) => (s.length === 4 ? [s[3]!, s[2]!, s[0]!, s[1]!] : [...s]);

/**
 * PyTorch-style tensors for every parameter of `model`: torchvision names (no `backbone.`), ASPP as
 * `conv2d_list.*`, OIHW weights, seeded values (BN variances positive).
 */
function torchTensors(model: SegModel, seed: number): Map<string, TensorToEncode> {
  const out = new Map<string, TensorToEncode>();
  let i = 0;
  for (const p of model.store.params.values()) {
    const shape = torchShape(p.variable.shape);
    const n = shape.reduce((a, b) => a * b, 1);
    let data = seededValues(n, seed + i++);
    if (p.name.endsWith('running_var')) data = data.map((v) => v + 1.5);
    out.set(p.name.replace(/^(backbone|classifier)\./, ''), { shape, data });
  }
  return out;
}

test('safetensors: encode/decode round trip is bit-exact, metadata kept, header padded to 8 bytes', () => {
  const special = new Float32Array([0, -0, 1.5, -3.25e-38, 1e-45, 3.4028234663852886e38, Infinity, -Infinity, NaN, Math.fround(Math.PI)]);
  const tensors = new Map<string, TensorToEncode>([
    ['a.weight', { shape: [2, 5], data: special }],
    ['scalar', { shape: [], data: new Float32Array([42]) }],
    ['empty', { shape: [0, 3], data: new Float32Array(0) }],
    ['big', { shape: [3, 4, 5], data: seededValues(60, 7) }],
  ]);
  const bytes = encodeSafetensors(tensors, { note: 'hello', ü: 'ß' });
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assert.equal(n % 8, 0);
  assert.equal(bytes.length, 8 + n + (10 + 1 + 0 + 60) * 4);
  const decoded = decodeSafetensors(bytes, 'mem');
  assert.deepEqual([...decoded.keys()], ['a.weight', 'scalar', 'empty', 'big']);
  for (const [name, t] of tensors) {
    const d = decoded.get(name)!;
    assert.equal(d.dtype, 'F32');
    assert.deepEqual(d.shape, t.shape);
    assert.deepEqual(new Uint8Array(d.data.buffer, d.data.byteOffset, d.data.byteLength), new Uint8Array(t.data.buffer), name);
  }
  assert.deepEqual(readSafetensorsHeader(bytes, 'mem').metadata, { note: 'hello', ü: 'ß' });
  assert.throws(() => encodeSafetensors(new Map([['x', { shape: [2, 2], data: new Float32Array(3) }]])), {
    message: "safetensors: tensor 'x' has 3 values, expected 4 for shape [2,2]",
  });
});

test('safetensors: a hand-built file with F32, F16, BF16, F64, I64, I32, U8, BOOL tensors decodes to known values', () => {
  const data = new Uint8Array(96);
  const v = new DataView(data.buffer);
  // F64 [2] at 0..16, F32 [2,1] at 16..24, F16 [4] at 24..32, BF16 [2] at 32..36, I64 [2] at 40..56,
  // I32 [1] at 56..60, U8 [2] at 60..62, BOOL [2] at 62..64. Offsets need not be contiguous (36..40 unused).
  v.setFloat64(0, 0.1, true);
  v.setFloat64(8, -1e10, true);
  v.setFloat32(16, 2.5, true);
  v.setFloat32(20, -7, true);
  [0x3c00, 0xc100, 0x7bff, 0x0001].forEach((h, i) => v.setUint16(24 + 2 * i, h, true)); // 1, -2.5, 65504, 2^-24
  v.setUint16(32, 0x3f80, true);
  v.setUint16(34, 0xc040, true); // bf16: 1, -3
  v.setBigInt64(40, -5n, true);
  v.setBigInt64(48, 1000n, true);
  v.setInt32(56, -123456, true);
  v.setUint8(60, 200);
  v.setUint8(61, 7);
  v.setUint8(62, 1);
  v.setUint8(63, 0);
  const header = {
    __metadata__: { format: 'pt' },
    f64: { dtype: 'F64', shape: [2], data_offsets: [0, 16] },
    f32: { dtype: 'F32', shape: [2, 1], data_offsets: [16, 24] },
    f16: { dtype: 'F16', shape: [4], data_offsets: [24, 32] },
    bf16: { dtype: 'BF16', shape: [2], data_offsets: [32, 36] },
    i64: { dtype: 'I64', shape: [2], data_offsets: [40, 56] },
    i32: { dtype: 'I32', shape: [1], data_offsets: [56, 60] },
    u8: { dtype: 'U8', shape: [2], data_offsets: [60, 62] },
    bool: { dtype: 'BOOL', shape: [2], data_offsets: [62, 64] },
  };
  const d = decodeSafetensors(rawFile(header, data), 'hand');
  const values = (name: string) => [...d.get(name)!.data];
  assert.deepEqual(values('f64'), [Math.fround(0.1), -1e10]);
  assert.deepEqual(d.get('f32')!.shape, [2, 1]);
  assert.deepEqual(values('f32'), [2.5, -7]);
  assert.deepEqual(values('f16'), [1, -2.5, 65504, Math.fround(2 ** -24)]);
  assert.deepEqual(values('bf16'), [1, -3]);
  assert.deepEqual(values('i64'), [-5, 1000]);
  assert.deepEqual(values('i32'), [-123456]);
  assert.deepEqual(values('u8'), [200, 7]);
  assert.deepEqual(values('bool'), [1, 0]);
  assert.equal(d.get('f16')!.dtype, 'F16');
  assert.deepEqual(readSafetensorsHeader(rawFile(header, data), 'hand').metadata, { format: 'pt' });
});

test('safetensors: malformed buffers fail with the source and expected vs found', () => {
  const good = encodeSafetensors(
    new Map([
      ['a', { shape: [2, 3], data: seededValues(6, 1) }],
      ['b', { shape: [4], data: seededValues(4, 2) }],
    ]),
  );
  const n = Number(new DataView(good.buffer).getBigUint64(0, true));
  assert.throws(() => decodeSafetensors(good.subarray(0, 5), 'f.st'), {
    message: 'f.st: not a safetensors file: 5 bytes, expected at least 8 (the header length)',
  });
  assert.throws(() => decodeSafetensors(good.subarray(0, 8 + n - 1), 'f.st'), {
    message: `f.st: safetensors header length ${n} exceeds the ${n - 1} bytes after the length prefix (truncated file, or not safetensors)`,
  });
  assert.throws(() => decodeSafetensors(good.subarray(0, good.length - 3), 'f.st'), {
    message: "f.st: tensor 'b': data_offsets [24, 40] exceed the data buffer of 37 bytes (truncated file?)",
  });
  const badJson = good.slice();
  badJson[8] = 0x5b; // '[' instead of '{'
  assert.throws(() => decodeSafetensors(badJson, 'f.st'), /^Error: f\.st: safetensors header \(\d+ bytes\) is not valid UTF-8 JSON: /);
  assert.throws(
    () => decodeSafetensors(rawFile({ a: { dtype: 'F8_E4M3', shape: [1], data_offsets: [0, 1] } }, new Uint8Array(1)), 'f.st'),
    { message: `f.st: tensor 'a' has unsupported dtype "F8_E4M3", expected one of F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL` },
  );
  assert.throws(
    () => decodeSafetensors(rawFile({ a: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 12] } }, new Uint8Array(16)), 'f.st'),
    { message: "f.st: tensor 'a': data_offsets [0, 12] span 12 bytes, expected 16 for dtype F32 and shape [2,2]" },
  );
  assert.throws(() => decodeSafetensors(rawFile({ a: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, new Uint8Array(4)), 'f.st'), {
    message: "f.st: tensor 'a': shape must be an array of non-negative integers, found [-1]",
  });
  assert.throws(() => decodeSafetensors(rawFile({ __metadata__: { a: 1 } }, new Uint8Array(0)), 'f.st'), {
    message: "f.st: safetensors __metadata__ value 'a' must be a string, found number",
  });
});

/** Reads a variable as a flat array. */
const values = (m: SegModel, name: string) => m.store.get(name).dataSync() as Float32Array;

test('loadSafetensors: torchvision names, OIHW -> HWIO element by element, BN stats, module. stripped, fc ignored', async (t) => {
  await useBackend('cpu');
  const dir = tempDir(t);
  const m = deeplabV2({ backbone: 'small', numClasses: 5 });
  const torch = torchTensors(m, 100);
  // As a DDP state_dict: every name under `module.`, plus the ImageNet head, a BN counter and a stray tensor.
  const file = new Map<string, TensorToEncode>([...torch].map(([k, v]) => [`module.${k}`, v]));
  file.set('module.fc.weight', { shape: [1000, 256], data: new Float32Array(256_000) });
  file.set('module.fc.bias', { shape: [1000], data: new Float32Array(1000) });
  file.set('module.layer1.0.bn1.num_batches_tracked', { shape: [], data: new Float32Array([7]) });
  file.set('module.layer9.0.conv1.weight', { shape: [1], data: new Float32Array(1) });
  const path = join(dir, 'ddp.safetensors');
  writeFileSync(path, encodeSafetensors(file));
  const report = await loadSafetensors(m, path);
  assert.deepEqual(report.loaded, [...m.store.params.keys()]);
  assert.equal(report.loaded.length, 17 + 17 * 4 + 8); // 17 convs, 17 BNs x 4 tensors, ASPP
  assert.deepEqual(report.missing, []);
  assert.deepEqual(report.unexpected, ['module.layer9.0.conv1.weight']);
  assert.deepEqual(report.ignored, ['module.fc.weight', 'module.fc.bias', 'module.layer1.0.bn1.num_batches_tracked']);

  // torch w[o, i, h, w] == ours[h, w, i, o]
  for (const [name, [kh, kw, cin, cout]] of [
    ['conv1', [7, 7, 3, 16]],
    ['layer2.0.conv2', [3, 3, 16, 16]],
    ['layer4.0.downsample.0', [1, 1, 128, 256]],
  ] as const) {
    const src = torch.get(`${name}.weight`)!.data;
    const ours = values(m, `backbone.${name}.weight`);
    assert.deepEqual(m.store.get(`backbone.${name}.weight`).shape, [kh, kw, cin, cout]);
    for (const [o, i, h, w] of [
      [0, 0, 0, 0],
      [cout - 1, cin - 1, kh - 1, kw - 1],
      [Math.floor(cout / 3), cin - 1, 0, kw - 1],
      [1, Math.floor(cin / 2), kh - 1, 0],
    ]) {
      assert.equal(
        ours[((h! * kw + w!) * cin + i!) * cout + o!],
        src[((o! * cin + i!) * kh + h!) * kw + w!],
        `${name}[${o},${i},${h},${w}]`,
      );
    }
  }
  const aspp = torch.get('conv2d_list.2.weight')!.data; // [5, 256, 3, 3]
  assert.equal(values(m, 'classifier.conv2d_list.2.weight')[((2 * 3 + 1) * 256 + 200) * 5 + 4], aspp[((4 * 256 + 200) * 3 + 2) * 3 + 1]);
  assert.deepEqual(values(m, 'classifier.conv2d_list.3.bias'), torch.get('conv2d_list.3.bias')!.data);
  assert.deepEqual(values(m, 'backbone.layer3.0.bn2.running_var'), torch.get('layer3.0.bn2.running_var')!.data);
  assert.deepEqual(values(m, 'backbone.layer3.0.bn2.running_mean'), torch.get('layer3.0.bn2.running_mean')!.data);
  assert.deepEqual(values(m, 'backbone.bn1.weight'), torch.get('bn1.weight')!.data);
  m.dispose();
});

test('loadSafetensors: ImageNet backbone without ASPP loads non-strictly; strict names what is missing; export round-trips', async (t) => {
  await useBackend('cpu');
  const dir = tempDir(t);
  const m = deeplabV2({ backbone: 'small', numClasses: 5, seed: 3 });
  const torch = torchTensors(m, 200);
  const backboneOnly = new Map([...torch].filter(([k]) => !k.startsWith('conv2d_list.')));
  const path = join(dir, 'imagenet.safetensors');
  writeFileSync(path, encodeSafetensors(backboneOnly));
  const asppBefore = values(m, 'classifier.conv2d_list.0.weight').slice();
  const report = await loadSafetensors(m, path);
  assert.deepEqual(
    report.missing,
    [0, 1, 2, 3].flatMap((i) => [`classifier.conv2d_list.${i}.weight`, `classifier.conv2d_list.${i}.bias`]),
  );
  assert.equal(report.loaded.length, m.store.params.size - 8);
  assert.deepEqual(values(m, 'classifier.conv2d_list.0.weight'), asppBefore);
  await assert.rejects(loadSafetensors(m, path, { strict: true }), {
    message:
      `${path}: strict load failed: missing 8 model parameter(s): classifier.conv2d_list.0.weight, classifier.conv2d_list.0.bias, ` +
      'classifier.conv2d_list.1.weight, classifier.conv2d_list.1.bias, classifier.conv2d_list.2.weight, classifier.conv2d_list.2.bias, ' +
      'classifier.conv2d_list.3.weight, classifier.conv2d_list.3.bias',
  });

  // Export in PyTorch layout (names under backbone./classifier.) and load strictly into a fresh model.
  const exported = join(dir, 'export.safetensors');
  const tidy = watchTidyResults();
  await saveModelSafetensors(m, exported, { layout: 'pytorch' });
  tidy.restore();
  assert.deepEqual(tidy.found, [], 'no host array read inside tf.tidy');
  const header = readSafetensorsHeader(readFileSync(exported), exported);
  assert.deepEqual(header.entries.get('backbone.conv1.weight')!.shape, [16, 3, 7, 7]);
  const fresh = deeplabV2({ backbone: 'small', numClasses: 5, seed: 9 });
  const r = await loadSafetensors(fresh, exported, { strict: true });
  assert.equal(r.loaded.length, m.store.params.size);
  for (const name of m.store.params.keys()) assert.deepEqual(values(fresh, name), values(m, name), name);
  assert.deepEqual(readdirSync(dir).sort(), ['export.safetensors', 'imagenet.safetensors']);
  m.dispose();
  fresh.dispose();
  assert.equal(tf.memory().numTensors, 0);
});

test('loadSafetensors errors: truncated file, header beyond file, wrong shape, missing backbone tensor, unknown dtype; model untouched', async (t) => {
  await useBackend('cpu');
  const dir = tempDir(t);
  const m = deeplabV2({ backbone: 'small', numClasses: 5 });
  const torch = torchTensors(m, 300);
  const write = (name: string, bytes: Uint8Array) => {
    const p = join(dir, name);
    writeFileSync(p, bytes);
    return p;
  };
  const full = encodeSafetensors(torch);
  const n = Number(new DataView(full.buffer).getBigUint64(0, true));
  const dataLength = full.length - 8 - n;
  const before = values(m, 'backbone.conv1.weight').slice();

  const truncated = write('truncated.safetensors', full.subarray(0, full.length - 10));
  await assert.rejects(loadSafetensors(m, truncated), {
    message: `${truncated}: tensor 'conv2d_list.3.bias': data_offsets [${dataLength - 20}, ${dataLength}] exceed the data buffer of ${dataLength - 10} bytes (truncated file?)`,
  });
  const cut = write('cut.safetensors', full.subarray(0, 100));
  await assert.rejects(loadSafetensors(m, cut), {
    message: `${cut}: safetensors header length ${n} exceeds the 92 bytes after the length prefix (truncated file, or not safetensors)`,
  });

  const wrongShape = new Map(torch);
  wrongShape.set('layer2.0.conv2.weight', { shape: [16, 16, 1, 1], data: new Float32Array(256) });
  const ws = write('shape.safetensors', encodeSafetensors(wrongShape));
  await assert.rejects(loadSafetensors(m, ws), {
    message: `${ws}: tensor 'layer2.0.conv2.weight' has shape [16,16,1,1], expected [16,16,3,3] (OIHW) for model parameter 'backbone.layer2.0.conv2.weight'`,
  });
  const wrongBn = new Map(torch);
  wrongBn.set('bn1.running_var', { shape: [8], data: new Float32Array(8) });
  const wb = write('bn.safetensors', encodeSafetensors(wrongBn));
  await assert.rejects(loadSafetensors(m, wb), {
    message: `${wb}: tensor 'bn1.running_var' has shape [8], expected [16] for model parameter 'backbone.bn1.running_var'`,
  });

  const missing = new Map(torch);
  missing.delete('layer3.0.bn2.running_var');
  missing.delete('layer1.0.conv1.weight');
  const ms = write('missing.safetensors', encodeSafetensors(missing));
  await assert.rejects(loadSafetensors(m, ms), {
    message:
      `${ms}: missing 2 backbone tensor(s) for model parameter(s): backbone.layer1.0.conv1.weight, backbone.layer3.0.bn2.running_var ` +
      '(only the classifier may be missing; is this a small checkpoint?)',
  });

  const dt = write('dtype.safetensors', rawFile({ 'conv1.weight': { dtype: 'C64', shape: [1], data_offsets: [0, 8] } }, new Uint8Array(8)));
  await assert.rejects(loadSafetensors(m, dt), {
    message: `${dt}: tensor 'conv1.weight' has unsupported dtype "C64", expected one of F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL`,
  });
  const dup = new Map(torch);
  dup.set('backbone.conv1.weight', torch.get('conv1.weight')!);
  const dp = write('dup.safetensors', encodeSafetensors(dup));
  await assert.rejects(loadSafetensors(m, dp), {
    message: `${dp}: tensors 'conv1.weight' and 'backbone.conv1.weight' both map to model parameter 'backbone.conv1.weight'`,
  });
  // Every failure above was detected before anything was assigned.
  assert.deepEqual(values(m, 'backbone.conv1.weight'), before);
  m.dispose();
});

function torchAvailable(): boolean {
  return spawnSync('/usr/bin/python3', ['-c', 'import torch'], { stdio: 'ignore' }).status === 0;
}

test('PyTorch cross-check: weights written by PyTorch give the same features and logits (wasm)', async (t) => {
  if (!torchAvailable()) {
    t.skip('python3-torch not installed');
    return;
  }
  await useBackend('wasm');
  const dir = tempDir(t);
  const script = new URL('../fixtures/torch_small_deeplab.py', import.meta.url).pathname;
  const run = spawnSync('/usr/bin/python3', [script, dir], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(run.status, 0, `python failed: ${run.stderr}`);
  const m = deeplabV2({ backbone: 'small', numClasses: 5 });
  const report = await loadSafetensors(m, join(dir, 'weights.safetensors'), { strict: true });
  assert.equal(report.loaded.length, m.store.params.size);
  assert.deepEqual(report.unexpected, []);
  assert.equal(report.ignored.filter((n) => n.endsWith('num_batches_tracked')).length, 17);
  assert.ok(report.ignored.includes('fc.weight') && report.ignored.includes('fc.bias'));

  const io = decodeSafetensors(readFileSync(join(dir, 'io.safetensors')), 'io.safetensors');
  assert.equal(io.get('logits')!.dtype, 'F64');
  const input = io.get('input')!;
  assert.deepEqual(input.shape, [2, 3, 40, 56]);
  const [features, logits] = tf.tidy(() => {
    const x = tf.transpose(tf.tensor4d(input.data, [2, 3, 40, 56]), [0, 2, 3, 1]) as tf.Tensor4D;
    const out = m.forward(x);
    // back to NCHW to compare with PyTorch
    return [tf.transpose(out.features, [0, 3, 1, 2]), tf.transpose(out.logits, [0, 3, 1, 2])];
  });
  for (const [name, got] of [
    ['features', features!],
    ['logits', logits!],
  ] as const) {
    const want = io.get(name)!;
    assert.deepEqual(got.shape, want.shape, name);
    const g = got.dataSync();
    let maxAbs = 0;
    let maxErr = 0;
    for (let i = 0; i < g.length; i++) {
      maxAbs = Math.max(maxAbs, Math.abs(want.data[i]!));
      maxErr = Math.max(maxErr, Math.abs(g[i]! - want.data[i]!));
    }
    assert.ok(maxAbs > 0.1, `${name}: reference is degenerate (max |x| = ${maxAbs})`);
    t.diagnostic(`${name}: max |torch| ${maxAbs.toPrecision(3)}, max error ${maxErr.toExponential(2)}`);
    assert.ok(maxErr / maxAbs < 1e-4, `${name}: max error ${maxErr} relative ${maxErr / maxAbs}`);
  }
  tf.dispose([features!, logits!]);
  m.dispose();
});

test('checkpoint: model + SGD + discriminator + Adam + extra + meta round-trip exactly, atomically, without leaking tensors', async (t) => {
  await useBackend('cpu');
  const dir = tempDir(t);
  const path = join(dir, 'ckpt.safetensors');
  const m = deeplabV2({ backbone: 'small', numClasses: 5, seed: 1 });
  const d = discriminator({ numClasses: 5, ndf: 4, seed: 2 });
  const groups = (model: SegModel) => {
    const ps = model.trainableParams();
    return [
      { params: ps.filter((p) => p.group === 'backbone'), lrMult: 1 },
      { params: ps.filter((p) => p.group === 'classifier'), lrMult: 10 },
    ];
  };
  const sgd = new SGD(groups(m));
  const adam = new Adam([{ params: [...d.store.params.values()], lrMult: 1 }]);
  const x = tf.tensor4d(seededValues(2 * 24 * 24 * 3, 5), [2, 24, 24, 3]);
  tf.tidy(() => {
    const g = gradients(() => tf.mean(tf.square(m.forward(x).logits)) as tf.Scalar, m.trainableParams());
    sgd.step(g.grads, 0.01);
    const probs = tf.softmax(tf.randomNormal([1, 32, 32, 5], 0, 1, 'float32', 1)) as tf.Tensor4D;
    const gd = gradients(() => tf.mean(d.forward(probs)) as tf.Scalar, [...d.store.params.values()]);
    adam.step(gd.grads, 1e-3);
  });
  const prototypes = tf.tensor2d(seededValues(5 * 256, 9), [5, 256]);
  const meta = {
    iteration: 1,
    phase: 'warmup',
    config: { lr: 2.5e-4, crop: [512, 1024] },
    thresholds: [0.9, 0.5, 0],
    rng: [1, 2, 3, 4],
    note: null,
  };
  await saveCheckpoint(path, {
    model: modelState(m),
    optimizer: sgd.getState(),
    discriminator: modelState(d),
    discriminatorOptimizer: adam.getState(),
    extra: new Map([['prototypes', prototypes]]),
    meta,
  });
  assert.deepEqual(readdirSync(dir), ['ckpt.safetensors'], 'no temporary file remains');
  const names = [...readSafetensorsHeader(readFileSync(path), path).entries.keys()];
  assert.ok(names.includes('model/backbone.layer1.0.bn1.running_var'));
  assert.ok(names.includes('optimizer/momentum:classifier.conv2d_list.0.bias'));
  assert.ok(names.includes('discriminatorOptimizer/v:conv1.weight'));
  assert.ok(names.includes('extra/prototypes'));

  const m2 = deeplabV2({ backbone: 'small', numClasses: 5, seed: 7 });
  const d2 = discriminator({ numClasses: 5, ndf: 4, seed: 8 });
  const sgd2 = new SGD(groups(m2));
  const adam2 = new Adam([{ params: [...d2.store.params.values()], lrMult: 1 }]);
  const baseline = tf.memory().numTensors;
  for (let cycle = 0; cycle < 3; cycle++) {
    await saveCheckpoint(path, {
      model: modelState(m),
      optimizer: sgd.getState(),
      discriminator: modelState(d),
      discriminatorOptimizer: adam.getState(),
      extra: new Map([['prototypes', prototypes]]),
      meta,
    });
    const loaded = await loadCheckpoint(path);
    applyModelState(m2, loaded.model, { source: path });
    applyModelState(d2, loaded.discriminator!, { source: path });
    sgd2.setState(loaded.optimizer!);
    adam2.setState(loaded.discriminatorOptimizer!);
    assert.deepEqual(loaded.meta, meta);
    assert.deepEqual(loaded.extra!.get('prototypes')!.dataSync(), prototypes.dataSync());
    disposeCheckpoint(loaded);
    assert.equal(tf.memory().numTensors, baseline, `cycle ${cycle}`);
  }
  for (const [name, v] of modelState(m)) assert.deepEqual(m2.store.get(name).dataSync(), v.dataSync(), name);
  for (const [name, v] of modelState(d)) assert.deepEqual(d2.store.get(name).dataSync(), v.dataSync(), name);
  for (const [a, b] of [
    [sgd, sgd2],
    [adam, adam2],
  ] as const) {
    const s1 = a.getState();
    const s2 = b.getState();
    assert.equal(s2.step, 1);
    assert.deepEqual([...s2.slots.keys()].sort(), [...s1.slots.keys()].sort());
    for (const [k, v] of s1.slots) assert.deepEqual(s2.slots.get(k)!.dataSync(), v.dataSync(), k);
  }
  assert.deepEqual(readdirSync(dir), ['ckpt.safetensors']);

  await assert.rejects(saveCheckpoint(path, { model: modelState(m), meta: { loss: NaN } }), {
    message: `saveCheckpoint ${path}: meta value at key 'loss' is NaN, which JSON cannot store`,
  });
  const counts = tf.tensor1d([1, 2], 'int32');
  await assert.rejects(saveCheckpoint(path, { model: new Map(), extra: new Map([['counts', counts]]), meta: {} }), {
    message: `saveCheckpoint ${path}: tensor 'extra/counts' is int32; checkpoints hold float32 tensors (cast it, or put it in meta)`,
  });
  const other = deeplabV2({ backbone: 'small', numClasses: 3 });
  const loaded = await loadCheckpoint(path);
  assert.throws(() => applyModelState(other, loaded.model, { source: path }), {
    message: `${path}: parameter 'classifier.conv2d_list.0.weight' is float32 [3,3,256,5] in the state, expected float32 [3,3,256,3]`,
  });
  tf.dispose(loaded.model.get('backbone.bn1.bias')!);
  loaded.model.delete('backbone.bn1.bias');
  assert.throws(() => applyModelState(m2, loaded.model, { source: path }), {
    message: `${path}: state does not match the model: missing 1 parameter(s): backbone.bn1.bias`,
  });
  disposeCheckpoint(loaded);
  const weightsPath = join(dir, 'weights.safetensors');
  await saveModelSafetensors(m, weightsPath);
  await assert.rejects(loadCheckpoint(weightsPath), {
    message: `${weightsPath}: not an SPCL checkpoint (no 'spcl' key in the safetensors __metadata__); PyTorch weights load with loadSafetensors`,
  });
  tf.dispose([x, prototypes, counts]);
  for (const o of [sgd, sgd2, adam, adam2, m, m2, d, d2, other]) o.dispose();
  assert.equal(tf.memory().numTensors, 0);
});

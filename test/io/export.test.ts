import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { IMAGENET_MEAN, IMAGENET_STD, normalizeInto } from '../../src/data/augment.ts';
import { describeExport } from '../../src/io/export.ts';
import type { ExportDescription } from '../../src/io/exported-model.ts';
import { loadExportedModel } from '../../src/io/exported-model.ts';
import { modelState, saveCheckpoint, saveModelSafetensors } from '../../src/io/weights.ts';
import { deeplabV2, type SegModel } from '../../src/ops/model/deeplab.ts';
import type { BnMode } from '../../src/ops/model/layers.ts';
import { CITYSCAPES_CLASSES, SYNTHIA_CLASSES } from '../../src/ops/classes.ts';
import { readSafetensorsHeader } from '../../src/ops/safetensors.ts';
import { seededValues, useBackend } from '../helpers.ts';

const root = new URL('../../', import.meta.url).pathname;
const B = 2;
const H = 40;
const W = 56;
const K = 5;

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'spcl-export-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Runs pipelines/export.ts as a user would (a child process). */
function runExport(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(root, 'pipelines/export.ts'), ...args], { cwd: root });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

/**
 * A small DeepLab-v2 with random weights and random BN statistics. Every 4th BN channel has a tiny
 * variance (1e-4..2e-4) with a gamma to match, so the BN eps (0 frozen, 1e-5 trainable) moves its output
 * by about 5%: a wrong eps in the description shows in the logits.
 */
function model(bn: BnMode): SegModel {
  const m = deeplabV2({ backbone: 'small', numClasses: K, seed: 3, bn });
  let seed = 100;
  for (const p of m.store.params.values()) {
    if (!p.name.endsWith('.running_var')) continue;
    const bnName = p.name.slice(0, -'.running_var'.length);
    const n = p.variable.shape[0]!;
    const u = (scale: number, offset: number) => seededValues(n, seed++).map((v) => offset + scale * v);
    const variance = u(0.5, 1);
    const gamma = u(0.5, 1);
    for (let c = 0; c < n; c += 4) {
      variance[c] = 1.5e-4 + 0.5e-4 * seededValues(1, seed++)[0]!;
      gamma[c] = 0.01 * (1 + 0.3 * seededValues(1, seed++)[0]!);
    }
    const set = (suffix: string, v: Float32Array) => tf.tidy(() => m.store.get(`${bnName}.${suffix}`).assign(tf.tensor1d(v)));
    set('running_var', variance);
    set('weight', gamma);
    set('bias', u(0.2, 0));
    set('running_mean', u(0.2, 0));
  }
  return m;
}

/** A checkpoint as training writes one: model, prototypes under extra/, the trainer's meta keys. */
async function checkpoint(path: string, m: SegModel): Promise<void> {
  const prototypes = tf.tensor2d(seededValues(K * m.featureChannels, 9), [K, m.featureChannels]);
  const teacher = tf.tensor1d(seededValues(16, 10));
  const size = { source: [H, W], target: [H, W], eval: [H, W] };
  const meta = { phase: 'ssl', iteration: 300, bn: m.batchNorm, backbone: 'small', numClasses: K, size, preset: 'synthetic', seed: 3 };
  const extra = new Map<string, tf.Tensor>([
    ['prototypes', prototypes],
    ['teacher/backbone.bn1.weight', teacher],
  ]);
  await saveCheckpoint(path, { model: modelState(m), extra, meta });
  tf.dispose([prototypes, teacher]);
}

/** Fixed 8-bit RGB images [B, H, W, 3]. */
function images(): Uint8Array {
  return Uint8Array.from(seededValues(B * H * W * 3, 77), (v) => Math.floor((v + 1) * 127.999));
}

/** Our logits for `pixels`, normalised by the pipeline's own normalizeInto, NHWC as the model returns them. */
function ourLogits(m: SegModel, pixels: Uint8Array): tf.Tensor4D {
  const x = new Float32Array(pixels.length);
  for (let i = 0; i < B; i++) normalizeInto(pixels.subarray(i * H * W * 3, (i + 1) * H * W * 3), W, H, x, i * H * W * 3);
  return tf.tidy(() => m.forward(tf.tensor4d(x, [B, H, W, 3])).logits);
}

/** max |got - want| / max |want| (the infinity norm of the error, relative to the reference's). */
function relativeError(got: ArrayLike<number>, want: ArrayLike<number>): { error: number; scale: number } {
  assert.equal(got.length, want.length);
  let scale = 0;
  let err = 0;
  for (let i = 0; i < want.length; i++) {
    scale = Math.max(scale, Math.abs(want[i]!));
    err = Math.max(err, Math.abs(got[i]! - want[i]!));
  }
  return { error: err / scale, scale };
}

function torchAvailable(): boolean {
  return spawnSync('/usr/bin/python3', ['-c', 'import torch'], { stdio: 'ignore' }).status === 0;
}

test('--format pytorch: PyTorch loads the export strictly from its description, and its logits match ours (frozen and trainable BN)', async (t) => {
  if (!torchAvailable()) {
    t.skip('python3-torch not installed');
    return;
  }
  await useBackend('cpu');
  const dir = tempDir(t);
  const pixels = images();
  writeFileSync(join(dir, 'images.u8'), pixels);
  const modes: BnMode[] = ['frozen', 'trainable'];
  const exports: { weights: string; description: string; out: string }[] = [];
  const ours: Float32Array[] = [];
  for (const bn of modes) {
    const m = model(bn);
    await checkpoint(join(dir, `${bn}.ckpt.safetensors`), m);
    const logits = ourLogits(m, pixels);
    ours.push(tf.tidy(() => tf.transpose(logits, [0, 3, 1, 2]).dataSync() as Float32Array));
    tf.dispose(logits);
    m.dispose();
    const out = join(dir, `${bn}.safetensors`);
    const r = await runExport(['--checkpoint', join(dir, `${bn}.ckpt.safetensors`), '--out', out]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(
      r.stderr,
      new RegExp(
        `^export: wrote ${out} \\(\\d+\\.\\d KiB\\), ${join(dir, `${bn}.json`)} \\(\\d+\\.\\d KiB\\): small DeepLab-v2, 5 classes, 93 tensors \\(OIHW float32\\), ${bn} BN, from .*${bn}\\.ckpt\\.safetensors \\(phase ssl, iteration 300\\)\\n$`,
      ),
    );
    exports.push({ weights: out, description: join(dir, `${bn}.json`), out: join(dir, `${bn}-torch`) });
  }

  // The state dict: exactly the model's parameters, PyTorch layout, no checkpoint sections.
  const header = readSafetensorsHeader(readFileSync(exports[0]!.weights), 'export');
  const names = [...header.entries.keys()];
  const reference = deeplabV2({ backbone: 'small', numClasses: K });
  assert.deepEqual(names.sort(), [...reference.store.params.keys()].sort());
  reference.dispose();
  assert.deepEqual(header.entries.get('backbone.conv1.weight')!.shape, [16, 3, 7, 7]);
  assert.deepEqual(header.entries.get('classifier.conv2d_list.3.weight')!.shape, [K, 256, 3, 3]);

  const d = JSON.parse(readFileSync(exports[0]!.description, 'utf8')) as ExportDescription;
  assert.equal(d.backbone, 'small');
  assert.equal(d.numClasses, K);
  assert.equal(d.classNames, null, 'a 5-class checkpoint names no classes');
  assert.deepEqual(d.batchNorm, { mode: 'frozen', eps: 0 });
  assert.deepEqual(JSON.parse(readFileSync(exports[1]!.description, 'utf8')).batchNorm, { mode: 'trainable', eps: 1e-5 });
  assert.equal(d.encoder.kind, 'resnet');
  assert.deepEqual(d.encoder.kind === 'resnet' && d.encoder.layers, [
    { name: 'layer1', blocks: 1, planes: 8, stride: 1, dilations: [1], downsample: true },
    { name: 'layer2', blocks: 1, planes: 16, stride: 2, dilations: [1], downsample: true },
    { name: 'layer3', blocks: 1, planes: 32, stride: 1, dilations: [1], downsample: true },
    { name: 'layer4', blocks: 1, planes: 64, stride: 1, dilations: [2], downsample: true },
  ]);
  assert.deepEqual(d.classifier.dilations, [6, 12, 18, 24]);
  assert.deepEqual(
    { ...d.input, formula: undefined },
    {
      channels: 'RGB',
      layout: 'NCHW',
      range: [0, 255],
      mean: [...IMAGENET_MEAN],
      std: [...IMAGENET_STD],
      formula: undefined,
      size: [H, W],
    },
  );
  assert.deepEqual(d.weights.files, ['frozen.safetensors']);
  assert.deepEqual(d.source, { checkpoint: 'frozen.ckpt.safetensors', phase: 'ssl', iteration: 300 });

  const job = join(dir, 'job.json');
  writeFileSync(job, JSON.stringify({ images: join(dir, 'images.u8'), shape: [B, H, W], exports }));
  const py = spawnSync('/usr/bin/python3', [join(root, 'test/fixtures/torch_load_export.py'), job], {
    encoding: 'utf8',
    timeout: 120_000,
  });
  assert.equal(py.status, 0, `python failed: ${py.stderr}`);
  const reports = py.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  for (const [i, bn] of modes.entries()) {
    assert.deepEqual(reports[i], { missing: [], unexpected: [], tensors: 93, shape: [B, K, 5, 7] });
    const read = (suffix: string) => new Float64Array(new Uint8Array(readFileSync(`${exports[i]!.out}.${suffix}`)).buffer);
    const { error, scale } = relativeError(ours[i]!, read('logits'));
    const wrongEps = relativeError(ours[i]!, read('eps')).error;
    const wrongDilation = relativeError(ours[i]!, read('dilation')).error;
    t.diagnostic(
      `${bn} BN: max |logit| ${scale.toPrecision(3)}, relative error ${error.toExponential(2)}; ` +
        `wrong eps ${wrongEps.toExponential(2)}, layer4 undilated ${wrongDilation.toExponential(2)}`,
    );
    assert.ok(scale > 0.1, `${bn}: degenerate reference, max |logit| ${scale}`);
    assert.ok(error < 1e-4, `${bn}: relative error ${error}`);
    // the comparison would have caught wrong metadata
    assert.ok(wrongEps > 1e-2, `${bn}: the other eps gives ${wrongEps}`);
    assert.ok(wrongDilation > 1e-2, `${bn}: layer4 without dilation gives ${wrongDilation}`);
  }
});

test('--format tfjs: a weights-manifest folder that loadExportedModel turns back into the same model, bit for bit', async (t) => {
  await useBackend('cpu');
  const before = tf.memory().numTensors;
  const dir = tempDir(t);
  const pixels = images();
  const m = model('trainable');
  await checkpoint(join(dir, 'ckpt.safetensors'), m);
  const out = join(dir, 'web');
  const r = await runExport(['--checkpoint', join(dir, 'ckpt.safetensors'), '--out', out, '--format', 'tfjs']);
  assert.equal(r.status, 0, r.stderr);
  assert.match(
    r.stderr,
    /^export: wrote .*group1-shard1of1\.bin \(\d+\.\d KiB\), .*model\.json \(\d+\.\d KiB\): .* 93 tensors \(HWIO float32\), trainable BN/,
  );
  assert.deepEqual(readdirSync(out).sort(), ['group1-shard1of1.bin', 'model.json']);
  const json = JSON.parse(readFileSync(join(out, 'model.json'), 'utf8'));
  assert.equal(json.format, 'spcl-deeplabv2');
  assert.deepEqual(json.weightsManifest[0].paths, ['group1-shard1of1.bin']);
  assert.equal(json.weightsManifest[0].weights.length, 93);
  assert.deepEqual(json.weightsManifest[0].weights[0], { name: 'backbone.conv1.weight', shape: [7, 7, 3, 16], dtype: 'float32' });
  assert.equal(json.userDefinedMetadata.spcl.input.layout, 'NHWC');

  const want = ourLogits(m, pixels);
  const baseline = tf.memory().numTensors;
  const fromFolder = await loadExportedModel(out);
  assert.equal(fromFolder.model.batchNorm, 'trainable');
  assert.deepEqual(fromFolder.description.batchNorm, { mode: 'trainable', eps: 1e-5 });
  const got = ourLogits(fromFolder.model, pixels);
  assert.deepEqual(got.shape, [B, 5, 7, K]);
  assert.deepEqual(got.dataSync(), want.dataSync(), 'identical logits');
  for (const [name, v] of modelState(m)) assert.deepEqual(fromFolder.model.store.get(name).dataSync(), v.dataSync(), name);

  // The browser route: any tfjs IOHandler (here from memory, as tf.io.http would hand it over).
  const viaHandler = await loadExportedModel(
    tf.io.fromMemory({
      format: json.format,
      userDefinedMetadata: json.userDefinedMetadata,
      weightSpecs: json.weightsManifest[0].weights,
      weightData: new Uint8Array(readFileSync(join(out, 'group1-shard1of1.bin'))).buffer,
    }),
  );
  const got2 = ourLogits(viaHandler.model, pixels);
  assert.deepEqual(got2.dataSync(), want.dataSync());
  tf.dispose([got, got2]);
  fromFolder.model.dispose();
  viaHandler.model.dispose();
  assert.equal(tf.memory().numTensors, baseline, 'the loader leaks no tensor');

  // Loader errors name the file and what was expected.
  const modelJson = join(out, 'model.json');
  writeFileSync(join(dir, 'other.json'), JSON.stringify({ ...json, format: 'layers-model' }));
  await assert.rejects(loadExportedModel(join(dir, 'other.json')), {
    message: `${join(dir, 'other.json')}: format "layers-model", expected 'spcl-deeplabv2' (a model.json written by pipelines/export.ts --format tfjs)`,
  });
  await assert.rejects(loadExportedModel(join(dir, 'nowhere')), {
    message: `${join(dir, 'nowhere', 'model.json')} does not exist (expected the model.json of pipelines/export.ts --format tfjs)`,
  });
  const shard = join(out, 'group1-shard1of1.bin');
  const bytes = readFileSync(shard);
  writeFileSync(shard, bytes.subarray(0, 1000));
  await assert.rejects(loadExportedModel(out), {
    message: `${modelJson}: the weight shards hold 1000 bytes, the manifest describes ${bytes.length} (a shard truncated or missing?)`,
  });
  rmSync(shard);
  await assert.rejects(loadExportedModel(out), (err: Error) =>
    err.message.startsWith(`${modelJson}: weight shard ${shard} cannot be read: ENOENT`),
  );
  tf.dispose(want);
  m.dispose();
  assert.equal(tf.memory().numTensors, before);
});

test('export command line: usage, and errors that name the file and the expectation', async (t) => {
  await useBackend('cpu');
  const dir = tempDir(t);
  const missing = join(dir, 'nope.safetensors');
  const weights = join(dir, 'weights.safetensors');
  const m = deeplabV2({ backbone: 'small', numClasses: K });
  await saveModelSafetensors(m, weights);
  const ckpt = join(dir, 'ckpt.safetensors');
  await checkpoint(ckpt, m);
  m.dispose();
  writeFileSync(join(dir, 'afile'), '');
  const [help, noCheckpoint, noOut, format, suffix, absent, notCheckpoint, notFolder] = await Promise.all([
    runExport(['--help']),
    runExport(['--out', join(dir, 'x.safetensors')]),
    runExport(['--checkpoint', missing]),
    runExport(['--checkpoint', missing, '--out', join(dir, 'x.safetensors'), '--format', 'onnx']),
    runExport(['--checkpoint', missing, '--out', join(dir, 'x.pt')]),
    runExport(['--checkpoint', missing, '--out', join(dir, 'x.safetensors')]),
    runExport(['--checkpoint', weights, '--out', join(dir, 'x.safetensors')]),
    runExport(['--checkpoint', ckpt, '--out', join(dir, 'afile'), '--format', 'tfjs']),
  ]);
  assert.equal(help.status, 0);
  assert.ok(help.stdout.startsWith('usage: node pipelines/export.ts --checkpoint FILE --out PATH [--format pytorch|tfjs]\n'));
  const usageError = (r: typeof help, message: string) => {
    assert.equal(r.status, 2, r.stderr);
    assert.ok(r.stderr.startsWith(`export: ${message}\n\nusage: node pipelines/export.ts`), r.stderr);
  };
  usageError(noCheckpoint, '--checkpoint is required');
  usageError(noOut, '--out is required');
  usageError(format, "unknown --format 'onnx', expected one of pytorch, tfjs");
  usageError(
    suffix,
    `--out must name a .safetensors file for --format pytorch (NAME.json is written beside it), got '${join(dir, 'x.pt')}'`,
  );
  assert.equal(absent.status, 1);
  assert.equal(absent.stderr, `export: checkpoint ${missing} does not exist\n`);
  assert.equal(notCheckpoint.status, 1);
  assert.equal(
    notCheckpoint.stderr,
    `export: ${weights}: not an SPCL checkpoint (no 'spcl' key in the safetensors __metadata__); PyTorch weights load with loadSafetensors\n`,
  );
  assert.equal(notFolder.status, 1);
  assert.equal(
    notFolder.stderr,
    `export: ${join(dir, 'afile')} exists and is not a folder (the tfjs export writes a folder: model.json and weight shards)\n`,
  );
  assert.deepEqual(readdirSync(dir).sort(), ['afile', 'ckpt.safetensors', 'weights.safetensors'], 'no failed export left a file');
});

test('describeExport: class names by class count, the VGG-16 layer list with its dilations', async () => {
  await useBackend('cpu');
  const source = { checkpoint: '/runs/x/ckpt.safetensors' };
  const cityscapes = deeplabV2({ backbone: 'small', numClasses: 19 });
  const d19 = describeExport(cityscapes, source, 'tfjs', ['group1-shard1of1.bin']);
  assert.deepEqual(d19.classNames, [...CITYSCAPES_CLASSES]);
  assert.equal(d19.output.logits, '[B, ceil(H/8), ceil(W/8), 19] class scores (no softmax), from forward(x).logits');
  assert.deepEqual(d19.source, { checkpoint: 'ckpt.safetensors', phase: null, iteration: null });
  assert.throws(() => describeExport(cityscapes, { ...source, classNames: ['a', 'b'] }, 'pytorch', []), {
    message: 'export: 2 class names given for a model with 19 classes',
  });
  cityscapes.dispose();
  const vgg = deeplabV2({ backbone: 'vgg16', numClasses: 16, vggWidthDivisor: 16 });
  const d = describeExport(vgg, source, 'pytorch', ['vgg.safetensors']);
  assert.deepEqual(d.classNames, [...SYNTHIA_CLASSES]);
  assert.equal(d.encoder.kind, 'vgg16');
  const layers = d.encoder.kind === 'vgg16' ? d.encoder.layers : [];
  assert.deepEqual(
    layers.map((l) => ('maxPool' in l ? 'pool' : `${l.conv}/${l.channels}@${l.dilation}`)).join(' '),
    'features.0/4@1 features.2/4@1 pool features.5/8@1 features.7/8@1 pool features.10/16@1 features.12/16@1 features.14/16@1 pool ' +
      'features.17/32@1 features.19/32@1 features.21/32@1 features.24/32@2 features.26/32@2 features.28/32@2 fc6/64@4 fc7/64@4',
  );
  assert.equal(d.output.logits, '[B, 16, floor(H/8), floor(W/8)] class scores (no softmax)');
  vgg.dispose();
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { from, lastValueFrom, of, toArray } from 'rxjs';
import { currentGeneration, generationFile } from '../../src/data/pseudo-labels.ts';
import type { SampleReader } from '../../src/data/reader.ts';
import { Credits } from '../../src/graph/flow.ts';
import type { SegModel } from '../../src/ops/model/deeplab.ts';
import { SGD } from '../../src/ops/optim.ts';
import type { Param } from '../../src/ops/model/params.ts';
import { CheckpointStore } from '../../src/stages/checkpoint.ts';
import { collate, type Batch } from '../../src/stages/collate.ts';
import type { DecodedSample } from '../../src/stages/decode-augment.ts';
import { estimateThresholds } from '../../src/stages/estimate-thresholds.ts';
import { evaluate } from '../../src/stages/evaluate.ts';
import { applyIfFinite, trainStep } from '../../src/stages/train-step.ts';
import { Prototypes } from '../../src/stages/update-prototypes.ts';
import { writeGeneration } from '../../src/stages/write-pseudo-labels.ts';
import { useBackend, assertClose } from '../helpers.ts';

const recycled: DecodedSample[] = [];
const fakeReader = { recycle: (s: DecodedSample) => recycled.push(s) } as unknown as SampleReader;

function sample(key: string, v: number, h = 2, w = 3, label = true): DecodedSample {
  return {
    key, width: w, height: h, image: new Float32Array(h * w * 3).fill(v), labelWidth: w, labelHeight: h,
    label: label ? new Uint8Array(h * w).fill(v) : null, spare: null, seconds: 0.5, encodedBytes: 0,
    info: {} as DecodedSample['info'], ref: {} as DecodedSample['ref'], repaired: null,
  };
}

test('collate: batches in order with NHWC copies, int32 labels; release recycles and returns credits; drop_last or partial', async () => {
  recycled.length = 0;
  const credits = new Credits(5);
  for (let i = 0; i < 5; i++) credits.taken();
  const batches = await lastValueFrom(from([1, 2, 3, 4, 5].map((v) => sample(`k${v}`, v))).pipe(collate(2, { reader: fakeReader, credits }), toArray()));
  assert.equal(batches.length, 2);
  assert.deepEqual(batches[1]!.keys, ['k3', 'k4']);
  assert.deepEqual([batches[0]!.images[0], batches[0]!.images[2 * 3 * 3]], [1, 2]);
  assert.ok(batches[0]!.labels instanceof Int32Array);
  assert.deepEqual([batches[1]!.labels![0], batches[1]!.labels![6]], [3, 4]);
  assert.equal(batches[0]!.decodeSeconds, 1);
  // k5 was dropped (drop_last): its buffers went back and its credit too
  assert.deepEqual(recycled.map((s) => s.key), ['k5']);
  assert.equal(credits.inFlight, 4);
  batches[0]!.release();
  batches[0]!.release(); // idempotent
  assert.equal(credits.inFlight, 2);
  const partial = await lastValueFrom(from([sample('a', 1), sample('b', 2), sample('c', 3, 2, 3, false)]).pipe(
    collate(2, { reader: fakeReader, credits: new Credits(3), partial: true }), toArray()));
  assert.deepEqual(partial.map((b) => b.n), [2, 1]);
  assert.equal(partial[1]!.labels, null);
  await assert.rejects(lastValueFrom(from([sample('a', 1), sample('b', 2, 4, 4)]).pipe(collate(2, { reader: fakeReader, credits: new Credits(2) }))),
    /collate: sample 'b' is 4x4 \(label 4x4\) but the batch is 2x3 \(label 2x3\)/);
});

test('trainStep: counts iterations from the resume point, releases every batch, reports losses; an error releases too', async () => {
  const released: number[] = [];
  const reports = await lastValueFrom(of(10, 20, 30).pipe(
    trainStep({ phase: 'p', startIteration: 5, step: (b, it) => ({ losses: { total: b + it }, lr: 0.1 }), release: (b) => released.push(b) }),
    toArray(),
  ));
  assert.deepEqual(reports.map((r) => [r.iteration, r.losses.total]), [[6, 15], [7, 26], [8, 37]]);
  assert.deepEqual(released, [10, 20, 30]);
  assert.ok(reports.every((r) => r.waitSeconds >= 0 && r.seconds >= 0 && r.phase === 'p'));
  const rel: number[] = [];
  await assert.rejects(lastValueFrom(of(1, 2).pipe(trainStep({
    phase: 'p', startIteration: 0, step: (b) => { if (b === 2) throw new Error('boom'); return { losses: {}, lr: 0 }; }, release: (b) => rel.push(b),
  }))), /boom/);
  assert.deepEqual(rel, [1, 2]);
});

test('applyIfFinite: a NaN loss leaves the weights untouched; a finite one steps; no tensor leaks', async () => {
  await useBackend('cpu');
  const v = tf.variable(tf.tensor1d([1, 2]), true, `w-${Math.random()}`);
  const p: Param = { name: 'w', group: 'backbone', role: 'weight', variable: v };
  const opt = new SGD([{ params: [p], lrMult: 1 }], { momentum: 0, weightDecay: 0 });
  const before = tf.memory().numTensors;
  const bad = applyIfFinite(() => {
    const l = tf.sum(tf.mul(v, tf.scalar(NaN))) as tf.Scalar;
    return { total: l, terms: { l } };
  }, [p], opt, 0.5);
  assert.equal(bad.finite, false);
  assert.ok(Number.isNaN(bad.losses.total!));
  assert.deepEqual(Array.from(v.dataSync()), [1, 2]);
  const good = applyIfFinite(() => {
    const l = tf.sum(tf.square(v)) as tf.Scalar; // grad 2v
    return { total: l, terms: { sq: l } };
  }, [p], opt, 0.5);
  assert.equal(good.finite, true);
  assert.deepEqual(good.losses, { total: 5, sq: 5 });
  assertClose(v.dataSync(), [0, 0], 1e-7, 'w - 0.5 * 2w');
  assert.equal(tf.memory().numTensors, before);
  opt.dispose();
  v.dispose();
});

test('Prototypes: EMA update with the batch, update norm reported; unset prototypes are a clear error', async () => {
  await useBackend('cpu');
  const p = new Prototypes();
  assert.throws(() => p.tensor, /prototypes: not initialised/);
  p.set(tf.tensor2d([[1, 0], [0, 1]]));
  // one pixel of class 0 with feature (0, 2) -> normalised (0, 1); P0 <- 0.1 (1,0) + 0.9 (0,1)
  const f = tf.tensor4d([0, 2], [1, 1, 1, 2]);
  const m = tf.tensor3d([0], [1, 1, 1], 'int32');
  p.update(f, m, { alpha: 0.1, absent: 'keep' });
  assertClose(p.tensor.dataSync(), [0.1, 0.9, 0, 1], 1e-6, 'prototypes');
  assert.ok(Math.abs(p.lastUpdateNorm - Math.hypot(0.9, 0.9)) < 1e-6);
  p.dispose();
  tf.dispose([f, m]);
});

/** A stand-in model: channel 0 of the image holds the class; logits are 10 * one-hot of it, at full size. */
function oracleModel(numClasses: number, flipEvery = 0): SegModel {
  return {
    forward: (x: tf.Tensor4D) => tf.tidy(() => {
      let cls = x.slice([0, 0, 0, 0], [-1, -1, -1, 1]).squeeze([3]).toInt();
      if (flipEvery) cls = tf.where(tf.equal(tf.mod(tf.range(0, x.shape[2], 1, 'int32'), flipEvery), 0), tf.onesLike(cls), cls);
      const logits = tf.mul(tf.oneHot(cls.flatten(), numClasses, 1, 0, 'int32').toFloat(), 10).reshape([...x.shape.slice(0, 3), numClasses]) as tf.Tensor4D;
      return { features: logits, logits };
    }),
  } as unknown as SegModel;
}

function batchOf(classes: number[][], keys: string[], withLabels = true): Batch {
  const h = 1;
  const w = classes[0]!.length;
  const images = new Float32Array(classes.length * h * w * 3);
  classes.forEach((row, b) => row.forEach((c, x) => { images[(b * w + x) * 3] = c; }));
  return {
    n: classes.length, height: h, width: w, images, labelHeight: h, labelWidth: w,
    labels: withLabels ? Int32Array.from(classes.flat()) : null, keys, decodeSeconds: 0, release: () => {},
  };
}

test('evaluate: a perfect model scores IoU 1 on present classes; one wrong column gives the hand-computed IoU', async () => {
  await useBackend('cpu');
  const b = batchOf([[0, 0, 1, 1], [2, 2, 2, 255]], ['a', 'b']);
  const perfect = await lastValueFrom(of(b).pipe(evaluate({ model: oracleModel(3), numClasses: 3, release: () => {} })));
  assert.deepEqual(perfect.classIoU.map((v) => +v.toFixed(6)), [1, 1, 1]);
  assert.equal(perfect.images, 2);
  // flipEvery 2: columns 0 and 2 are predicted as class 1
  const wrong = await lastValueFrom(of(b).pipe(evaluate({ model: oracleModel(3, 2), numClasses: 3, release: () => {} })));
  // labels: class0 at (0,0),(0,1); class1 at (0,2),(0,3); class2 at (1,0),(1,1),(1,2); (1,3) ignored
  // preds:  (0,0)->1 (0,1)->0 (0,2)->1 (0,3)->1 (1,0)->1 (1,1)->2 (1,2)->1
  // class0: I=1, U=2; class1: I=2, U = 5 predicted + 2 labelled - 2 = 5; class2: I=1, U=3
  assertClose(wrong.classIoU, [0.5, 0.4, 1 / 3], 1e-6, 'IoU');
  assert.ok(Math.abs(wrong.miou - (0.5 + 0.4 + 1 / 3) / 3) < 1e-6);
});

test('thresholds + pseudo-labels: per-class upper median capped, labels kept where p >= threshold, one generation switched in', async () => {
  await useBackend('cpu');
  const dir = await mkdtemp(join(tmpdir(), 'spcl-pl-'));
  // Confidences per pixel come from logits: class 0 with margins giving p = 0.6, 0.7, 0.8, 0.95; class 1 at 0.99
  const probs = [0.6, 0.7, 0.8, 0.95, 0.99];
  const classes = [0, 0, 0, 0, 1];
  const model = {
    forward: (x: tf.Tensor4D) => tf.tidy(() => {
      const n = x.shape[0];
      const logit = (p: number) => Math.log(p / (1 - p)); // 2 classes: softmax([l, 0]) = p
      const row = probs.flatMap((p, i) => (classes[i] === 0 ? [logit(p), 0] : [0, logit(p)]));
      const logits = tf.tensor4d(Array.from({ length: n }, () => row).flat(), [n, 1, 5, 2]);
      return { features: logits, logits };
    }),
  } as unknown as SegModel;
  const b = batchOf([[0, 0, 0, 0, 0]], ['img'], false);
  const t = await lastValueFrom(of(b).pipe(estimateThresholds({ model, numClasses: 2, bins: 65536, cap: 0.9, scratch: join(dir, 'scratch.lmdb'), release: () => {} })));
  // class 0: sorted [0.6, 0.7, 0.8, 0.95], index round_half_even(4/2) = 2 -> 0.8; class 1: one pixel 0.99 -> capped 0.9
  assertClose(t.thresholds, [0.8, 0.9], 1e-4, 'thresholds');
  assert.deepEqual(t.counts, [4, 1]);
  const info = await writeGeneration(t, { dir: join(dir, 'pl'), numClasses: 2, keep: 2, source: { phase: 'test' } });
  assert.equal(info.generation, 1);
  assert.deepEqual((await currentGeneration(join(dir, 'pl')))!.thresholds, t.thresholds);
  const { open } = await import('lmdb');
  const db = open({ path: join(dir, 'pl', generationFile(1)), compression: true, maxDbs: 2, readOnly: true }).openDB<{ labels: Uint8Array }, string>({ name: 'labels', encoding: 'msgpack' });
  // 0.6, 0.7 < 0.8 -> 255; 0.8 >= 0.8 kept; 0.95 kept; 0.99 >= 0.9 kept (class 1)
  assert.deepEqual(Array.from(db.get('img')!.labels), [255, 255, 0, 0, 1]);
  assertClose(info.coverage, [0.5, 1], 1e-9, 'coverage');
  await db.close();
  const t2 = await lastValueFrom(of(b).pipe(estimateThresholds({ model, numClasses: 2, bins: 65536, cap: 0.9, scratch: join(dir, 'scratch.lmdb'), release: () => {} })));
  const second = await writeGeneration(t2, { dir: join(dir, 'pl'), numClasses: 2, keep: 1, source: {} });
  assert.equal(second.generation, 2);
  assert.deepEqual((await readdir(join(dir, 'pl'))).filter((f) => f.endsWith('.lmdb')), [generationFile(2)]);
  await rm(dir, { recursive: true });
});

test('CheckpointStore: latest pointer, best per phase by mIoU, keeps the newest N plus pinned ones', async () => {
  await useBackend('cpu');
  const dir = await mkdtemp(join(tmpdir(), 'spcl-ckpt-'));
  const store = new CheckpointStore(dir, 2);
  const state = (v: number) => ({ model: new Map([['w', tf.tensor1d([v])]]), meta: { v } });
  await store.save(state(1), 'warmup', 10, 0.3);
  await store.save(state(2), 'warmup', 20, 0.2);
  await new Promise((r) => setTimeout(r, 20));
  await store.save(state(3), 'warmup', 30, null);
  await new Promise((r) => setTimeout(r, 20));
  await store.save(state(4), 'spcl', 5, null);
  assert.equal((await store.latest())!.file, CheckpointStore.fileName('spcl', 5));
  assert.equal((await store.best('warmup'))!.iteration, 10);
  const files = (await readdir(dir)).filter((f) => f.endsWith('.safetensors')).sort();
  // newest two (spcl 5, warmup 30) + the best (warmup 10); warmup 20 pruned
  assert.deepEqual(files, [CheckpointStore.fileName('spcl', 5), CheckpointStore.fileName('warmup', 10), CheckpointStore.fileName('warmup', 30)].sort());
  const loaded = await store.load((await store.best('warmup'))!);
  assert.deepEqual(Array.from(loaded.model.get('w')!.dataSync()), [1]);
  await rm(dir, { recursive: true });
});

test('readShards: one ref per credit with per-sample seeds from (run seed, stream, draw index); a pass ends after count', async () => {
  const { readShards, inOrder } = await import('../../src/stages/read-shards.ts');
  const { Rng } = await import('../../src/data/rng.ts');
  const dataset = { dir: 'd', keys: ['a', 'b', 'c'] } as unknown as Parameters<typeof readShards>[0]['dataset'];
  const credits = new Credits(8);
  const refs = await lastValueFrom(readShards({ dataset, sampler: inOrder(['a', 'b', 'c']), credits, seed: 7, stream: 3, count: 3, start: 5 }).pipe(toArray()));
  assert.deepEqual(refs.map((r) => [r.key, r.index]), [['a', 5], ['b', 6], ['c', 7]]);
  assert.deepEqual(refs.map((r) => r.seed), [5, 6, 7].map((i) => Rng.derive(7, 3, i).nextU32()));
  assert.equal(credits.inFlight, 3);
});

test('decodeAugment: ordered output under concurrency; failing samples are skipped with their reason, credits returned; repairs reported', async () => {
  const { decodeAugment, skipLine, repairLine } = await import('../../src/stages/decode-augment.ts');
  const { SampleFault } = await import('../../src/data/faults.ts');
  const delays: Record<string, number> = { a: 30, b: 5, c: 15, d: 1, e: 8 };
  const fixed = { reason: 'unknown_label_ids' as const, file: 'shard-00000.lmdb', key: 'd', message: "shard-00000.lmdb: record 'd': label has 2 pixels with unknown IDs (40), expected train IDs 0..18 or 255; set to 255" };
  const reader = {
    threads: 2,
    read: async (_ds: unknown, key: string) => {
      await new Promise((r) => setTimeout(r, delays[key]));
      if (key === 'c') throw new SampleFault({ reason: 'corrupt_image', file: 'shard-00000.lmdb', key, message: "shard-00000.lmdb: record 'c': image does not decode (truncated)" });
      if (key === 'e') throw new Error('a bug');
      return { ...sample(key, 1), repaired: key === 'd' ? fixed : null };
    },
  } as unknown as SampleReader;
  const credits = new Credits(5);
  for (let i = 0; i < 5; i++) credits.taken();
  const skipped: string[] = [];
  const repairs: string[] = [];
  const out = await lastValueFrom(from(['a', 'b', 'c', 'd', 'e'].map((key, index) => ({ key, index, seed: 0, dataset: {} as never }))).pipe(
    decodeAugment({ reader, spec: { resize: [2, 3] }, credits, concurrency: 4, onSkip: (e) => skipped.push(skipLine(e)), onRepair: (st, f) => repairs.push(repairLine(st, f)) }),
    toArray(),
  ));
  assert.deepEqual(out.map((s) => s.key), ['a', 'b', 'd']);
  assert.deepEqual(out.map((s) => s.ref.index), [0, 1, 3]);
  // the reason travels with the error; an error without one is 'other' (skips are reported as they happen: sorted)
  assert.deepEqual(skipped.sort(), [
    "skipped (corrupt_image): stage decode-augment (sample c): shard-00000.lmdb: record 'c': image does not decode (truncated)",
    'skipped (other): stage decode-augment (sample e): a bug',
  ]);
  assert.deepEqual(repairs, [
    "repaired (unknown_label_ids): stage decode-augment (sample d): shard-00000.lmdb: record 'd': label has 2 pixels with unknown IDs (40), expected train IDs 0..18 or 255; set to 255",
  ]);
  assert.equal(credits.inFlight, 3);
});

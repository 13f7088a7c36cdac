/**
 * pipelines/segment.ts end to end at a small scale: a labelled `folder` dataset of 6 images (PNG and
 * JPEG, two folders) ingested twice (with labels, and with `--labels none`), and a checkpoint of the
 * small backbone at its seeded start (random weights predict many classes, so equal maps are not a
 * coincidence of one class everywhere). Every run is a child process, as a user runs it.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cp, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import sharp from 'sharp';
import { ingestDataset } from '../../src/data/ingest.ts';
import { CITYSCAPES_TO_TRAIN19, trainToCityscapesIds } from '../../src/data/labels.ts';
import { CITYSCAPES_PALETTE } from '../../src/data/palette.ts';
import { decodePng, encodePng } from '../../src/data/png.ts';
import { PseudoLabelWriter } from '../../src/data/pseudo-labels.ts';
import { modelState, saveCheckpoint } from '../../src/io/weights.ts';
import { deeplabV2 } from '../../src/ops/model/deeplab.ts';
import { lastValueFrom } from 'rxjs';
import { ImageFilePool, listImageFiles } from '../../src/data/image-files.ts';
import { segmentImages } from '../../src/stages/segment-images.ts';
import { seededValues, useBackend } from '../helpers.ts';

const root = new URL('../../', import.meta.url).pathname;
const run = (script: string, args: string[]) =>
  spawnSync(process.execPath, [join(root, 'pipelines', script), ...args], { cwd: root, encoding: 'utf8', timeout: 120_000 });

/** [height, width] of the dataset's images, and the model input size (the checkpoint's `size.eval`). */
const IMAGE: [number, number] = [45, 70];
const EVAL: [number, number] = [32, 48];
/** Record keys; the extension is the image's format. */
const IMAGES = ['city_a/img01.png', 'city_a/img02.jpg', 'city_a/img03.png', 'city_b/img04.png', 'city_b/img05.jpg', 'city_b/img06.png'];
const stem = (f: string) => f.replace(/\.(png|jpg)$/, '');

let dir: string;
let images: string;
let checkpoint: string;
let labelled: string;
let unlabelled: string;

/** An RGB image with structure (gradients, a rectangle) and some noise: predictions vary over it. */
function picture(h: number, w: number, seed: number): Uint8Array {
  const noise = seededValues(h * w * 3, seed);
  const rgb = new Uint8Array(h * w * 3);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const inBox = x > w / 3 && x < (2 * w) / 3 && y > h / 4 && y < (3 * h) / 4;
      const base = [(255 * x) / w, (255 * y) / h, inBox ? 230 : 40];
      for (let c = 0; c < 3; c++)
        rgb[(y * w + x) * 3 + c] = Math.max(0, Math.min(255, Math.round(base[c]! + 40 * noise[(y * w + x) * 3 + c]!)));
    }
  return rgb;
}

async function writeImage(path: string, rgb: Uint8Array, h: number, w: number): Promise<void> {
  await mkdir(join(path, '..'), { recursive: true });
  const s = sharp(rgb, { raw: { width: w, height: h, channels: 3 } });
  await writeFile(path, path.endsWith('.jpg') ? await s.jpeg({ quality: 90 }).toBuffer() : await s.png().toBuffer());
}

/** Colour PNG (evaluate --png) -> train IDs, through the palette. */
async function trainIdsOfColours(path: string): Promise<Uint8Array> {
  const { data, info } = await sharp(path).raw().toBuffer({ resolveWithObject: true });
  const byColour = new Map(CITYSCAPES_PALETTE.map((c, k) => [c.join(), k]));
  const ids = new Uint8Array(info.width * info.height);
  for (let i = 0; i < ids.length; i++) {
    const k = byColour.get(`${data[3 * i]},${data[3 * i + 1]},${data[3 * i + 2]}`);
    assert.ok(k !== undefined, `${path}: pixel ${i} is no class colour`);
    ids[i] = k;
  }
  return ids;
}

const grey = async (path: string) => {
  const png = decodePng(await readFile(path), path);
  assert.equal(png.channels, 1, `${path}: grey`);
  assert.equal(png.bitDepth, 8, `${path}: 8 bits`);
  return png;
};

/** Files under `d`, relative, sorted. */
const tree = async (d: string) =>
  (await readdir(d, { recursive: true, withFileTypes: true }))
    .filter((e) => e.isFile())
    .map((e) => relative(d, join(e.parentPath, e.name)))
    .sort();

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'spcl-segment-'));
  const data = join(dir, 'data');
  images = join(data, 'images');
  const [h, w] = IMAGE;
  for (const [i, f] of IMAGES.entries()) {
    await writeImage(join(images, f), picture(h, w, 11 + i), h, w);
    // labels in Cityscapes IDs: road (7) above, car (26) below
    const label = new Uint8Array(h * w).map((_, p) => (p < (h * w) / 2 ? 7 : 26));
    await mkdir(join(data, 'labels', stem(f), '..'), { recursive: true });
    await writeFile(join(data, 'labels', `${stem(f)}.png`), encodePng({ width: w, height: h, channels: 1, bitDepth: 8, data: label }));
  }
  await writeFile(join(data, 'labelmap.json'), JSON.stringify({ 7: CITYSCAPES_TO_TRAIN19[7], 26: CITYSCAPES_TO_TRAIN19[26] }));
  labelled = join(dir, 'shards', 'val');
  unlabelled = join(dir, 'shards', 'unlabelled');
  const quiet = { threads: 1, progressStream: null, log: () => {} };
  await ingestDataset({ dataset: 'folder', root: data, out: labelled, ...quiet });
  await ingestDataset({ dataset: 'folder', root: data, out: unlabelled, labels: 'none', ...quiet });
  const model = deeplabV2({ backbone: 'small', numClasses: 19, seed: 5 });
  checkpoint = join(dir, 'ckpt.safetensors');
  await saveCheckpoint(checkpoint, {
    model: modelState(model),
    meta: { backbone: 'small', numClasses: 19, bn: 'frozen', size: { source: EVAL, target: EVAL, eval: EVAL } },
  });
  model.dispose();
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

test("segment's label maps (Cityscapes IDs) equal evaluate's predictions on the same images, pixel for pixel; overlay and confidence as specified", async () => {
  const pngs = join(dir, 'eval-png');
  const e = run('evaluate.ts', [
    '--checkpoint',
    checkpoint,
    '--data',
    labelled,
    '--png',
    pngs,
    '--ccd',
    '0',
    '--backend',
    'wasm',
    '--metrics-port',
    '0',
  ]);
  assert.equal(e.status, 0, e.stderr);
  const out = join(dir, 'seg');
  const s = run('segment.ts', [
    '--checkpoint',
    checkpoint,
    '--input',
    images,
    '--out',
    out,
    '--confidence',
    '--threads',
    '1',
    '--backend',
    'wasm',
  ]);
  assert.equal(s.status, 0, s.stderr);
  assert.match(s.stderr, /^segment: 6\/6 \(100\.0%\) [\d.]+\/s eta 0s$/m);
  assert.match(s.stderr, /^segment: 6 written, 0 skipped; .*: labels\/ \(Cityscapes label IDs\), overlay\/, confidence\/$/m);
  const kinds = ['confidence', 'labels', 'overlay'];
  assert.deepEqual(await tree(out), kinds.flatMap((k) => IMAGES.map((f) => `${k}/${stem(f)}.png`)).sort());
  const toCityscapes = trainToCityscapesIds(19);
  const classes = new Set<number>();
  for (const f of IMAGES) {
    const expected = await trainIdsOfColours(join(pngs, `${stem(f)}.png`));
    const labels = await grey(join(out, 'labels', `${stem(f)}.png`));
    assert.deepEqual([labels.height, labels.width], IMAGE, `${f}: at the image's own size`);
    const wrong = expected.reduce((n, k, i) => n + (labels.data[i] === toCityscapes[k] ? 0 : 1), 0);
    assert.equal(wrong, 0, `${f}: ${wrong} of ${expected.length} pixels differ from evaluate's prediction`);
    for (const k of expected) classes.add(k);
    // overlay: round(0.5 x image + 0.5 x class colour), the image as the decoder gives it
    const rgb = await sharp(join(images, f)).raw().toBuffer();
    const overlay = await sharp(join(out, 'overlay', `${stem(f)}.png`))
      .raw()
      .toBuffer({ resolveWithObject: true });
    assert.deepEqual([overlay.info.height, overlay.info.width, overlay.info.channels], [...IMAGE, 3]);
    const want = Uint8Array.from(rgb, (v, j) => Math.round(0.5 * v + 0.5 * CITYSCAPES_PALETTE[expected[Math.floor(j / 3)]!]![j % 3]!));
    assert.deepEqual(new Uint8Array(overlay.data), want, `${f}: overlay`);
    // confidence: the max softmax probability x 255, so at least 255 / 19
    const confidence = await grey(join(out, 'confidence', `${stem(f)}.png`));
    assert.equal(confidence.data.length, expected.length);
    assert.ok(
      confidence.data.every((v) => v >= Math.floor(255 / 19)),
      `${f}: confidence below 1/19`,
    );
  }
  assert.ok(classes.size >= 3, `predictions hold ${classes.size} classes; too few for the comparison to mean much`);
});

test('segment: nested folders mirrored, images of another size at their own size; a non-image and a truncated PNG named with their reasons, counted, the rest written (--ids train)', async () => {
  const input = join(dir, 'messy');
  await cp(images, input, { recursive: true });
  const [h, w] = [29, 51];
  await writeImage(join(input, 'city_b', 'sub', 'deep', 'img07.png'), picture(h, w, 99), h, w);
  const notImage = join(input, 'city_a', 'notes.png');
  await writeFile(notImage, 'these are notes, not pixels\n');
  const truncated = join(input, 'city_b', 'broken.png');
  const whole = await sharp(picture(40, 60, 7), { raw: { width: 60, height: 40, channels: 3 } })
    .png()
    .toBuffer();
  await writeFile(truncated, whole.subarray(0, Math.floor(whole.length / 2)));
  await writeFile(join(input, 'README.txt'), 'not an image either, by its name\n');
  const out = join(dir, 'seg-messy');
  const s = run('segment.ts', [
    '--checkpoint',
    checkpoint,
    '--input',
    input,
    '--out',
    out,
    '--ids',
    'train',
    '--no-overlay',
    '--threads',
    '1',
    '--backend',
    'wasm',
  ]);
  assert.equal(s.status, 0, s.stderr);
  const lines = s.stderr.split('\n');
  assert.deepEqual(
    lines.filter((l) => l.startsWith('skipped')),
    [
      `skipped (not_an_image): ${notImage}: not an image (Input buffer contains unsupported image format)`,
      // one IDAT chunk, then the 12-byte IEND: the half file ends inside IDAT
      `skipped (corrupt_image): ${truncated}: PNG does not decode (truncated: the file ends inside its IDAT chunk (${Math.floor(whole.length / 2)} bytes, the chunk needs ${whole.length - 12}))`,
    ],
  );
  assert.ok(lines.includes(`segment: 1 other file ignored (not .png/.jpg/.jpeg): ${join(input, 'README.txt')}`), s.stderr);
  assert.match(s.stderr, /^segment: 9\/9 \(100\.0%\) /m);
  assert.ok(
    lines.includes(`segment: 7 written, 2 skipped (1 not_an_image, 1 corrupt_image), 1 other file ignored; ${out}: labels/ (train IDs)`),
    s.stderr,
  );
  const stems = [...IMAGES.map(stem), 'city_b/sub/deep/img07'].sort();
  assert.deepEqual(
    await tree(out),
    stems.map((x) => `labels/${x}.png`),
  );
  const deep = await grey(join(out, 'labels', 'city_b/sub/deep/img07.png'));
  assert.deepEqual([deep.height, deep.width], [h, w]);
  assert.ok(deep.data.every((k) => k < 19));
  // other batches than evaluate's (the bad files are skipped): the same train IDs all the same
  for (const f of IMAGES) {
    const expected = await trainIdsOfColours(join(dir, 'eval-png', `${stem(f)}.png`));
    assert.deepEqual((await grey(join(out, 'labels', `${stem(f)}.png`))).data, expected, f);
  }

  // nothing usable: a clear message, exit 1
  const bad = join(dir, 'only-bad');
  await mkdir(bad);
  await cp(notImage, join(bad, 'notes.png'));
  await cp(truncated, join(bad, 'broken.png'));
  const none = run('segment.ts', [
    '--checkpoint',
    checkpoint,
    '--input',
    bad,
    '--out',
    join(dir, 'seg-none'),
    '--threads',
    '1',
    '--backend',
    'wasm',
  ]);
  assert.equal(none.status, 1, none.stderr);
  assert.ok(none.stderr.endsWith('segment: no image was written: all 2 files were skipped (reasons above)\n'), none.stderr);
});

test('segment: exact messages for a missing --checkpoint and a nonexistent --input (exit 2)', () => {
  const a = run('segment.ts', ['--input', images, '--out', join(dir, 'x')]);
  assert.equal(a.status, 2);
  assert.ok(a.stderr.startsWith('segment: --checkpoint is required\n\nusage: node pipelines/segment.ts'), a.stderr);
  const missing = join(dir, 'no-such-folder');
  const b = run('segment.ts', ['--checkpoint', checkpoint, '--input', missing, '--out', join(dir, 'x')]);
  assert.equal(b.status, 2);
  assert.ok(b.stderr.startsWith(`segment: --input ${missing}: no such file or folder\n\nusage:`), b.stderr);
  const help = run('segment.ts', ['--help']);
  assert.equal(help.status, 0);
  assert.match(help.stdout, /^usage: node pipelines\/segment.ts --checkpoint FILE --input DIR\|FILE\.\.\. --out DIR/);
});

test('segment with FILES (a shell glob after --input): each written by its name; two files of the same name are refused by name', async () => {
  const [a, b] = [join(images, 'city_a', 'img01.png'), join(images, 'city_b', 'img05.jpg')];
  const out = join(dir, 'seg-files');
  const r = run('segment.ts', [
    '--checkpoint',
    checkpoint,
    '--input',
    a,
    b,
    '--out',
    out,
    '--ids',
    'train',
    '--no-overlay',
    '--threads',
    '1',
    '--backend',
    'wasm',
  ]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(await tree(out), ['labels/img01.png', 'labels/img05.png']);
  for (const f of ['city_a/img01', 'city_b/img05'])
    assert.deepEqual(
      (await grey(join(out, 'labels', `${f.split('/')[1]}.png`))).data,
      await trainIdsOfColours(join(dir, 'eval-png', `${f}.png`)),
      f,
    );
  const twin = join(dir, 'twin', 'img01.png');
  await mkdir(join(dir, 'twin'));
  await cp(a, twin);
  const clash = run('segment.ts', ['--checkpoint', checkpoint, '--input', a, twin, '--out', join(dir, 'x')]);
  assert.equal(clash.status, 2);
  assert.ok(
    clash.stderr.startsWith(
      `segment: --input ${a} and ${twin} would both be written as 'img01.png'; rename one, or give their common parent folder as the input\n`,
    ),
    clash.stderr,
  );
});

test('evaluate on a dataset ingested with --labels none: one clear message naming the folder and pointing to segment.ts', () => {
  const r = run('evaluate.ts', ['--checkpoint', checkpoint, '--data', unlabelled, '--backend', 'wasm', '--metrics-port', '0']);
  assert.equal(r.status, 1);
  assert.ok(
    r.stderr.endsWith(
      `evaluate: ${unlabelled} has no labels (6 images, ingested with --labels none?): evaluate needs ground truth. ` +
        `For predictions on unlabelled images use pipelines/segment.ts --checkpoint ${checkpoint} --input IMAGES --out DIR\n`,
    ),
    r.stderr,
  );
});

test('segment --pseudo-labels: the PNGs hold the generation’s stored labels (255 = ignore), nested keys mirrored; --generation picks an older one', async () => {
  const pl = join(dir, 'pl');
  const [h, w] = [12, 20];
  const made: Map<string, Uint8Array>[] = [];
  for (const g of [1, 2]) {
    const writer = await PseudoLabelWriter.next(pl, 19);
    const labels = new Map<string, Uint8Array>();
    for (const [i, key] of ['city_a/img01', 'city_b/deep/img02', 'img03'].entries()) {
      const v = seededValues(h * w, 100 * g + i);
      const l = new Uint8Array(h * w).map((_, p) => (v[p]! < -0.5 ? 255 : Math.floor((v[p]! + 1) * 9.5) % 19));
      labels.set(key, l);
      await writer.put(key, { width: w, height: h, labels: l });
    }
    await writer.commit(new Array<number>(19).fill(0.5), { test: g }, 2);
    made.push(labels);
  }
  for (const [g, args] of [
    [2, []],
    [1, ['--generation', '1']],
  ] as const) {
    const out = join(dir, `pl-png-${g}`);
    const r = run('segment.ts', ['--pseudo-labels', pl, '--out', out, ...args]);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(
      r.stderr.includes(`segment: generation ${g} (${join(pl, `gen-00000${g}.lmdb`)}): 3 pseudo-label maps -> ${out}/labels`),
      r.stderr,
    );
    assert.deepEqual(
      await tree(out),
      ['city_a/img01', 'city_b/deep/img02', 'img03'].flatMap((k) => [`colour/${k}.png`, `labels/${k}.png`]).sort(),
    );
    for (const [key, stored] of made[g - 1]!) {
      const png = await grey(join(out, 'labels', `${key}.png`));
      assert.deepEqual([png.height, png.width], [h, w]);
      assert.deepEqual(png.data, stored, key);
      const colour = (await sharp(join(out, 'colour', `${key}.png`))
        .raw()
        .toBuffer()) as Uint8Array;
      const want = new Uint8Array(h * w * 3);
      stored.forEach((k, p) => k !== 255 && want.set(CITYSCAPES_PALETTE[k]!, 3 * p));
      assert.deepEqual(new Uint8Array(colour), want, `${key}: colours`);
    }
  }
});

test('segmentImages holds at most `inFlight` images between the file list and the written PNGs (12 files, batches of 2, inFlight 3)', async () => {
  await useBackend('wasm');
  const input = join(dir, 'many');
  for (let i = 0; i < 12; i++) await writeImage(join(input, `f${String(i).padStart(2, '0')}.png`), picture(20 + i, 30, i), 20 + i, 30);
  const { files } = await listImageFiles([input]);
  const pool = new ImageFilePool({ threads: 1 });
  const model = deeplabV2({ backbone: 'small', numClasses: 19, seed: 5 });
  const finished: string[] = [];
  try {
    const out = join(dir, 'seg-many');
    const summary = await lastValueFrom(
      segmentImages({
        files,
        pool,
        model,
        size: EVAL,
        batchSize: 2,
        inFlight: 3,
        outputs: { dir: out, numClasses: 19, labelLut: trainToCityscapesIds(19), overlay: true, alpha: 0.5, confidence: false },
        onFinished: (o) => finished.push(o),
      }),
    );
    // 3 files are taken at the start, and one more only when one is written: the bound is reached, never passed
    assert.deepEqual(summary, { listed: 12, written: 12, skipped: {}, peakInFlight: 3 });
    assert.equal(finished.length, 12);
    assert.equal((await tree(out)).length, 24);
    for (let i = 0; i < 12; i++) {
      const png = await grey(join(out, 'labels', `f${String(i).padStart(2, '0')}.png`));
      assert.deepEqual([png.height, png.width], [20 + i, 30]);
    }
  } finally {
    model.dispose();
    await pool.close();
  }
});

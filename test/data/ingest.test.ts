import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ingestDataset, type IngestOptions } from '../../src/data/ingest.ts';
import { decodePng, encodePng } from '../../src/data/png.ts';
import { openShardReadOnly, readManifest, shardFileName } from '../../src/data/shards.ts';
import { cityscapesTree, folderTree, gta5Tree, synscapesTree, synthiaTree, writeBands, writeRgb } from './trees.ts';

const NODE = process.execPath;
const INGEST = new URL('../../pipelines/ingest.ts', import.meta.url).pathname;

async function tmp(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'spcl-ingest-'));
}

const quiet: Partial<IngestOptions> = { log: () => {}, progressStream: null, threads: 2 };

function counts(numClasses: number, entries: Record<number, number>): number[] {
  const c = new Array<number>(numClasses).fill(0);
  for (const [k, n] of Object.entries(entries)) c[Number(k)] = n;
  return c;
}

/** Train IDs of a stored record's label, decoded from the shard. */
function storedLabel(out: string, key: string, shard = 0): { ids: Uint8Array; width: number; height: number; imageWidth: number } {
  const h = openShardReadOnly(join(out, shardFileName(shard)));
  try {
    const r = h.records.get(key);
    assert.ok(r, `record ${key} missing`);
    const png = decodePng(r.label!, key);
    return { ids: png.data as Uint8Array, width: r.labelWidth, height: r.labelHeight, imageWidth: r.width };
  } finally {
    void h.close();
  }
}

test('gta5: records, label IDs -> train IDs (unknown -> 255, counted and named), classImageCounts, missing label reported; re-run resumes', async () => {
  const dir = await tmp();
  const root = join(dir, 'gta5');
  const out = join(dir, 'out');
  await gta5Tree(root);
  const problems: string[] = [];
  const s = await ingestDataset({ ...quiet, dataset: 'gta5', root, out, log: (l) => problems.push(l) });
  assert.equal(s.found, 3);
  assert.equal(s.written, 2);
  assert.deepEqual(s.problems, { 'label-missing': 1 });
  assert.ok(
    problems.some(
      (l) => l === `problem (label-missing): ${join(root, 'images/00003.png')}: label missing (expected ${join(root, 'labels/00003.png')})`,
    ),
  );
  // 00002: rows 3..5 of 16x9 are ID 34, which Cityscapes does not define (0, unlabeled, is defined: not counted)
  assert.deepEqual(s.unknownLabelIds, { files: 1, pixels: 48 });
  assert.deepEqual(
    problems.filter((l) => l.includes('unknown label IDs') || l.includes('outside')),
    [
      `unknown label IDs: ${join(root, 'labels/00002.png')}: 48 pixels have IDs outside the Cityscapes label IDs 0..33 (34); they become 255 (ignored), the record is kept`,
      'ingest: 1 label files had 48 pixels with IDs outside the Cityscapes label IDs 0..33; they are 255 (ignored)',
    ],
  );
  const m = await readManifest(out);
  assert.equal(m.count, 2);
  assert.equal(m.numClasses, 19);
  assert.equal(m.classNames[13], 'car');
  assert.deepEqual(m.classImageCounts, counts(19, { 0: 2, 10: 1, 13: 1 }));
  assert.deepEqual(
    m.samples.map(([k]) => k),
    ['00001', '00002'],
  );
  // 9 rows in 3 bands: sky(23)->10, car(26)->13, road(7)->0; 0 and 34 -> 255
  const a = storedLabel(out, '00001');
  assert.deepEqual([a.ids[0], a.ids[16 * 3], a.ids[16 * 8]], [10, 13, 0]);
  const b = storedLabel(out, '00002');
  assert.deepEqual([b.ids[0], b.ids[16 * 4], b.ids[16 * 8]], [255, 255, 0]);
  const again = await ingestDataset({ ...quiet, dataset: 'gta5', root, out });
  assert.equal(again.written, 0);
  assert.equal(again.existing, 2);
  assert.equal((await readManifest(out)).count, 2);
  await rm(dir, { recursive: true });
});

test('cityscapes: train/val splits, 19 vs 16 classes, label-free target ingest, keys without _leftImg8bit', async () => {
  const dir = await tmp();
  const root = join(dir, 'cs');
  await cityscapesTree(root);
  const o19 = join(dir, 'cs19');
  await ingestDataset({ ...quiet, dataset: 'cityscapes', root, out: o19 });
  const m19 = await readManifest(o19);
  assert.deepEqual(
    m19.samples.map(([k]) => k),
    ['aachen/aachen_000000_000019', 'aachen/aachen_000000_000020', 'bremen/bremen_000000_000005'],
  );
  assert.deepEqual(m19.classImageCounts, counts(19, { 0: 3, 9: 3, 10: 3, 14: 3 }));
  const o16 = join(dir, 'cs16');
  await ingestDataset({ ...quiet, dataset: 'cityscapes', root, out: o16, numClasses: 16 });
  // terrain (22) and truck (27) have no 16-class train ID
  assert.deepEqual((await readManifest(o16)).classImageCounts, counts(16, { 0: 3, 9: 3 }));
  const val = join(dir, 'val');
  await ingestDataset({ ...quiet, dataset: 'cityscapes', root, out: val, split: 'val' });
  const mv = await readManifest(val);
  assert.equal(mv.count, 1);
  assert.equal(mv.split, 'val');
  const free = join(dir, 'free');
  await ingestDataset({ ...quiet, dataset: 'cityscapes', root, out: free, labels: 'none' });
  const mf = await readManifest(free);
  assert.equal(mf.count, 3);
  assert.equal(mf.labelled, 0);
  assert.deepEqual(mf.classImageCounts, counts(19, {}));
  await rm(dir, { recursive: true });
});

test('synthia: 16-bit 3-channel labels, class ID from channel 0, 16-class protocol; 19 classes refused', async () => {
  const dir = await tmp();
  const root = join(dir, 'synthia');
  await synthiaTree(root);
  const out = join(dir, 'out');
  const s = await ingestDataset({ ...quiet, dataset: 'synthia', root, out });
  assert.equal(s.written, 2);
  const m = await readManifest(out);
  assert.equal(m.numClasses, 16);
  assert.deepEqual(m.classImageCounts, counts(16, { 0: 2, 9: 1, 12: 1 }));
  // ID 13 (parking-slot) has no train ID but is a SYNTHIA class: not unknown
  assert.deepEqual(s.unknownLabelIds, { files: 0, pixels: 0 });
  const l = storedLabel(out, '0000000');
  assert.deepEqual([l.ids[0], l.ids[12 * 3], l.ids[12 * 7]], [9, 12, 0]);
  await assert.rejects(
    ingestDataset({ ...quiet, dataset: 'synthia', root, out: join(dir, 'x'), numClasses: 19 }),
    /synthia: the SYNTHIA protocol has 16 classes \(--classes 16\)/,
  );
  await rm(dir, { recursive: true });
});

test('synscapes: labels at another resolution than the images are kept as they are (same aspect)', async () => {
  const dir = await tmp();
  const root = join(dir, 'syn');
  await synscapesTree(root);
  const out = join(dir, 'out');
  const s = await ingestDataset({ ...quiet, dataset: 'synscapes', root, out });
  assert.equal(s.written, 2);
  assert.equal(s.problemCount, 0);
  const m = await readManifest(out);
  assert.deepEqual(m.classImageCounts, counts(19, { 0: 2, 8: 1, 10: 1, 11: 1 }));
  const l = storedLabel(out, '1');
  assert.deepEqual([l.width, l.height, l.imageWidth], [16, 8, 32]);
  await rm(dir, { recursive: true });
});

test('folder: user label map, nested folders, jpeg images; a bad label map is named', async () => {
  const dir = await tmp();
  const root = join(dir, 'mine');
  await folderTree(root);
  const out = join(dir, 'out');
  const lines: string[] = [];
  const s = await ingestDataset({ ...quiet, dataset: 'folder', root, out, log: (l) => lines.push(l) });
  // a.png: rows 7..9 of 10x10 are ID 9, which labelmap.json does not name
  assert.deepEqual(s.unknownLabelIds, { files: 1, pixels: 30 });
  assert.ok(
    lines.includes(
      `unknown label IDs: ${join(root, 'labels/cam0/a.png')}: 30 pixels have IDs outside the label IDs of ${join(root, 'labelmap.json')} (9); ` +
        'they become 255 (ignored), the record is kept',
    ),
    lines.join('\n'),
  );
  assert.equal(s.problemCount, 0);
  const m = await readManifest(out);
  assert.deepEqual(
    m.samples.map(([k]) => k),
    ['cam0/a', 'cam1/b'],
  );
  assert.deepEqual(m.classImageCounts, counts(19, { 0: 1, 13: 2 }));
  await writeFile(join(root, 'labelmap.json'), JSON.stringify({ 1: 40 }));
  await assert.rejects(
    ingestDataset({ ...quiet, dataset: 'folder', root, out: join(dir, 'x') }),
    new RegExp(`${join(root, 'labelmap.json')}: label ID 1 maps to 40, expected a train ID in 0..18 or 255`),
  );
  await rm(dir, { recursive: true });
});

test('bad input: truncated image, size mismatch, RGB label, corrupt label are skipped, counted and named; good records kept', async () => {
  const dir = await tmp();
  const root = join(dir, 'gta5');
  await gta5Tree(root);
  await writeRgb(join(root, 'images/00004.png'), 16, 9, 4);
  await writeBands(join(root, 'labels/00004.png'), 16, 9, [7]);
  const full = await readFile(join(root, 'images/00004.png'));
  await writeFile(join(root, 'images/00004.png'), full.subarray(0, Math.floor(full.length / 2)));
  await writeRgb(join(root, 'images/00005.png'), 16, 9, 5);
  await writeBands(join(root, 'labels/00005.png'), 8, 8, [7]);
  await writeRgb(join(root, 'images/00006.png'), 16, 9, 6);
  await writeFile(
    join(root, 'labels/00006.png'),
    encodePng({ width: 16, height: 9, channels: 3, bitDepth: 8, data: new Uint8Array(16 * 9 * 3).fill(7) }),
  );
  await writeRgb(join(root, 'images/00007.png'), 16, 9, 7);
  await writeFile(join(root, 'labels/00007.png'), Buffer.from('not a png at all'));
  const out = join(dir, 'out');
  const lines: string[] = [];
  const s = await ingestDataset({ ...quiet, dataset: 'gta5', root, out, log: (l) => lines.push(l) });
  assert.equal(s.written, 2);
  assert.deepEqual(s.problems, {
    'label-missing': 1,
    'image-unreadable': 1,
    'size-mismatch': 1,
    'label-channels': 1,
    'label-unreadable': 1,
  });
  const has = (re: RegExp) =>
    assert.ok(
      lines.some((l) => re.test(l)),
      `no log line matches ${re}: ${lines.join('\n')}`,
    );
  has(/^problem \(image-unreadable\): .*images\/00004\.png: does not decode/);
  has(/^problem \(size-mismatch\): .*labels\/00005\.png: label is 8x8 but the image .*images\/00005\.png is 16x9$/);
  has(/^problem \(label-channels\): .*labels\/00006\.png: label has 3 channels, expected 1 \(grey or palette indices\)$/);
  has(/^problem \(label-unreadable\): .*labels\/00007\.png: not a readable PNG: bad signature$/);
  assert.equal((await readManifest(out)).count, 2);
  await rm(dir, { recursive: true });
});

test('shards: two processes ingest disjoint parts; the manifest merges both', async () => {
  const dir = await tmp();
  const root = join(dir, 'cs');
  await cityscapesTree(root);
  const out = join(dir, 'out');
  const a = await ingestDataset({ ...quiet, dataset: 'cityscapes', root, out, shardIndex: 0, shardCount: 2 });
  const b = await ingestDataset({ ...quiet, dataset: 'cityscapes', root, out, shardIndex: 1, shardCount: 2 });
  assert.deepEqual([a.written, b.written], [2, 1]);
  const m = await readManifest(out);
  assert.equal(m.count, 3);
  assert.deepEqual(m.shards, [
    { file: 'shard-00000.lmdb', count: 2 },
    { file: 'shard-00001.lmdb', count: 1 },
  ]);
  assert.deepEqual(
    m.samples.map(([k, s]) => `${k}@${s}`),
    ['aachen/aachen_000000_000019@0', 'aachen/aachen_000000_000020@1', 'bremen/bremen_000000_000005@0'],
  );
  await rm(dir, { recursive: true });
});

test('CLI: --help, bad flags exit 2 naming the flag, nothing usable exits 1, --strict exits 1 on problems', async () => {
  const dir = await tmp();
  const run = (...args: string[]) => spawnSync(NODE, [INGEST, '--metrics-port', '0', ...args], { encoding: 'utf8' });
  const help = run('--help');
  assert.equal(help.status, 0);
  assert.match(help.stdout, /^usage: node pipelines\/ingest\.ts --dataset NAME --root DIR --out DIR/);
  const bad = run('--dataset', 'kitti', '--root', dir, '--out', dir);
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /^ingest: --dataset must be one of gta5, cityscapes, synthia, synscapes, folder, got 'kitti'/);
  const badShard = run('--dataset', 'gta5', '--root', dir, '--out', dir, '--shard-index', '3', '--shard-count', '2');
  assert.equal(badShard.status, 2);
  assert.match(badShard.stderr, /^ingest: --shard-index 3 must be < --shard-count 2/);
  // a root that does not exist is said so (for the folder layout too, not as a missing labelmap.json)
  for (const dataset of ['gta5', 'folder']) {
    const none = run('--dataset', dataset, '--root', join(dir, 'nowhere'), '--out', join(dir, 'o0'));
    assert.equal(none.status, 1);
    assert.match(none.stderr, new RegExp(`^ingest: ${join(dir, 'nowhere')}: the dataset root does not exist$`, 'm'));
  }
  // a root with nothing usable: exit 1, and no empty shard left behind
  await mkdir(join(dir, 'nothing'));
  const empty = run('--dataset', 'gta5', '--root', join(dir, 'nothing'), '--out', join(dir, 'o1'));
  assert.equal(empty.status, 1);
  assert.match(empty.stderr, /ingest: nothing usable found under .*nothing for dataset gta5/);
  assert.deepEqual(await readdir(join(dir, 'o1')).catch(() => []), []);
  await gta5Tree(join(dir, 'g'));
  const ok = run('--dataset', 'gta5', '--root', join(dir, 'g'), '--out', join(dir, 'o2'));
  assert.equal(ok.status, 0, ok.stderr);
  assert.match(
    ok.stdout,
    /^ingest: written 2, already there 0, problems 1 \(label-missing 1\), labels with unknown IDs 1 \(48 pixels set to 255\); /,
  );
  const strict = run('--dataset', 'gta5', '--root', join(dir, 'g'), '--out', join(dir, 'o2'), '--strict');
  assert.equal(strict.status, 1);
  await rm(dir, { recursive: true });
});

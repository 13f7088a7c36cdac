import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import sharp from 'sharp';
import { decodePng, encodePng } from '../../src/data/png.ts';
import {
  LABEL_ID,
  SYNTHETIC_LABEL_IDS,
  VAL_INDEX_OFFSET,
  renderScene,
  writeSyntheticBenchmark,
  type SyntheticProgress,
  type SyntheticScene,
} from '../../src/synthetic/render.ts';

const NODE = process.execPath;
const CLI = new URL('../../pipelines/make-synthetic.ts', import.meta.url).pathname;
const SIZE: Record<'source' | 'target', [number, number]> = { source: [144, 256], target: [128, 256] };
const N = 50;

/** The 19 evaluated classes as Cityscapes label IDs (REFERENCE 6.2). */
const CLASS_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33];

interface DomainStats {
  /** Pixel share per label ID over the N scenes. */
  share: Float64Array;
  /** Mean RGB per label ID. */
  mean: Float64Array;
  /** Scenes each label ID appears in. */
  scenes: Int32Array;
  /** Median |difference| of horizontal neighbours with the same label (noise and texture, not edges). */
  medianNeighbourDiff: number;
}

function statsOf(scenes: SyntheticScene[]): DomainStats {
  const pixels = new Float64Array(256);
  const sum = new Float64Array(256 * 3);
  const seen = new Int32Array(256);
  const diffs = new Int32Array(256);
  let total = 0;
  for (const s of scenes) {
    const here = new Set<number>();
    for (let p = 0; p < s.width * s.height; p++) {
      const c = s.labelIds[p]!;
      pixels[c]!++;
      here.add(c);
      for (let k = 0; k < 3; k++) sum[c * 3 + k]! += s.image[p * 3 + k]!;
      if ((p + 1) % s.width !== 0 && s.labelIds[p + 1] === c) {
        let d = 0;
        for (let k = 0; k < 3; k++) d += Math.abs(s.image[p * 3 + k]! - s.image[(p + 1) * 3 + k]!);
        diffs[Math.min(255, Math.round(d / 3))]!++;
      }
    }
    for (const c of here) seen[c]!++;
    total += s.width * s.height;
  }
  const mean = new Float64Array(256 * 3);
  for (let c = 0; c < 256; c++) for (let k = 0; k < 3; k++) mean[c * 3 + k] = pixels[c]! > 0 ? sum[c * 3 + k]! / pixels[c]! : 0;
  const half = diffs.reduce((a, b) => a + b, 0) / 2;
  let median = 0;
  for (let acc = 0; median < 256; median++) {
    acc += diffs[median]!;
    if (acc >= half) break;
  }
  return { share: pixels.map((v) => v / total), mean, scenes: seen, medianNeighbourDiff: median };
}

const renders: Record<'source' | 'target', SyntheticScene[]> = {
  source: Array.from({ length: N }, (_, i) => renderScene('source', i, 0, SIZE.source)),
  target: Array.from({ length: N }, (_, i) => renderScene('target', i, 0, SIZE.target)),
};
const stats: Record<'source' | 'target', DomainStats> = { source: statsOf(renders.source), target: statsOf(renders.target) };

test('renderScene: deterministic per (domain, index, seed); other index, seed or domain differ; sizes honoured', () => {
  for (const domain of ['source', 'target'] as const) {
    const [h, w] = SIZE[domain];
    const a = renderScene(domain, 7, 3, [h, w]);
    const b = renderScene(domain, 7, 3, [h, w]);
    assert.equal(a.width, w);
    assert.equal(a.height, h);
    assert.equal(a.image.length, h * w * 3);
    assert.equal(a.labelIds.length, h * w);
    assert.deepEqual(Buffer.from(b.image), Buffer.from(a.image));
    assert.deepEqual(Buffer.from(b.labelIds), Buffer.from(a.labelIds));
    assert.notDeepEqual(Buffer.from(renderScene(domain, 8, 3, [h, w]).labelIds), Buffer.from(a.labelIds));
    assert.notDeepEqual(Buffer.from(renderScene(domain, 7, 4, [h, w]).image), Buffer.from(a.image));
  }
  assert.notDeepEqual(Buffer.from(renderScene('source', 7, 3, [64, 128]).image), Buffer.from(renderScene('target', 7, 3, [64, 128]).image));
  const odd = renderScene('target', 0, 0, [37, 91]);
  assert.equal(odd.image.length, 37 * 91 * 3);
  assert.throws(() => renderScene('source', -1, 0, [64, 128]), /index must be a non-negative integer, got -1/);
  assert.throws(() => renderScene('source', 0, 0, [8, 128]), /size must be \[height, width\] integers in 16\.\.4096, got \[8, 128\]/);
});

test('label maps hold only Cityscapes label IDs of the 19 classes, or 0', () => {
  assert.deepEqual(SYNTHETIC_LABEL_IDS, [0, ...CLASS_IDS]);
  const valid = new Set(SYNTHETIC_LABEL_IDS);
  for (const domain of ['source', 'target'] as const) {
    for (let c = 0; c < 256; c++) {
      if (stats[domain].share[c]! > 0) assert.ok(valid.has(c), `${domain}: label ID ${c} is not a generated class`);
    }
  }
});

test('every class appears in 50 scenes of each domain; the common ones in most scenes', () => {
  const names = Object.fromEntries(Object.entries(LABEL_ID).map(([k, v]) => [v, k]));
  for (const domain of ['source', 'target'] as const) {
    for (const id of CLASS_IDS) assert.ok(stats[domain].scenes[id]! > 0, `${domain}: ${names[id]} (${id}) never appears in ${N} scenes`);
    // road, sidewalk, building, vegetation, sky, car, pole: nearly every scene
    for (const id of [7, 8, 11, 21, 23, 26, 17]) {
      assert.ok(stats[domain].scenes[id]! >= 0.9 * N, `${domain}: ${names[id]} in only ${stats[domain].scenes[id]}/${N} scenes`);
    }
  }
  // The target shows the ego vehicle's hood (label 0) at the bottom centre of every image, the source never.
  for (const s of renders.target) assert.equal(s.labelIds[(s.height - 1) * s.width + s.width / 2], 0);
  assert.equal(stats.source.share[0], 0);
});

test('layout statistics differ: the target has more cars, persons and vegetation, fewer buildings', () => {
  const [src, tgt] = [stats.source.share, stats.target.share];
  const pct = (v: number): string => `${(100 * v).toFixed(2)}%`;
  assert.ok(tgt[LABEL_ID.car]! > 1.5 * src[LABEL_ID.car]!, `car: source ${pct(src[LABEL_ID.car]!)}, target ${pct(tgt[LABEL_ID.car]!)}`);
  assert.ok(
    tgt[LABEL_ID.person]! > 2 * src[LABEL_ID.person]!,
    `person: source ${pct(src[LABEL_ID.person]!)}, target ${pct(tgt[LABEL_ID.person]!)}`,
  );
  assert.ok(
    tgt[LABEL_ID.vegetation]! > 1.3 * src[LABEL_ID.vegetation]!,
    `vegetation: source ${pct(src[LABEL_ID.vegetation]!)}, target ${pct(tgt[LABEL_ID.vegetation]!)}`,
  );
  assert.ok(
    src[LABEL_ID.building]! > 1.2 * tgt[LABEL_ID.building]!,
    `building: source ${pct(src[LABEL_ID.building]!)}, target ${pct(tgt[LABEL_ID.building]!)}`,
  );
  // Both look like streets: road is the largest ground class in each.
  for (const share of [src, tgt]) assert.ok(share[LABEL_ID.road]! > 0.2 && share[LABEL_ID.road]! > 3 * share[LABEL_ID.sidewalk]!);
});

test('appearance gap: per-class mean colours move between domains; the target is noisy and textured, the source flat', () => {
  const dist: number[] = [];
  for (const id of CLASS_IDS) {
    const d = Math.hypot(...[0, 1, 2].map((k) => stats.source.mean[id * 3 + k]! - stats.target.mean[id * 3 + k]!));
    dist.push(d);
  }
  const meanDist = dist.reduce((a, b) => a + b, 0) / dist.length;
  assert.ok(meanDist > 40, `mean per-class colour distance ${meanDist.toFixed(1)} (per class ${dist.map((d) => d.toFixed(0)).join(' ')})`);
  assert.ok(dist.filter((d) => d > 25).length >= 14, `classes moved by > 25: ${dist.map((d) => d.toFixed(0)).join(' ')}`);
  // The semantics stay recognisable: sky is the brightest large class in both domains, vegetation greener than red.
  for (const domain of ['source', 'target'] as const) {
    const m = stats[domain].mean;
    const lum = (id: number): number => m[id * 3]! + m[id * 3 + 1]! + m[id * 3 + 2]!;
    for (const id of [7, 11, 21]) assert.ok(lum(23) > lum(id), `${domain}: sky darker than ${id}`);
    assert.ok(m[21 * 3 + 1]! > m[21 * 3]!, `${domain}: vegetation not green`);
  }
  assert.equal(stats.source.medianNeighbourDiff, 0, 'source regions are flat');
  assert.ok(stats.target.medianNeighbourDiff >= 3, `target median neighbour difference ${stats.target.medianNeighbourDiff}`);
});

async function listFiles(root: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(root, { recursive: true, withFileTypes: true })) {
    if (e.isFile()) out.push(relative(root, join(e.parentPath, e.name)));
  }
  return out.sort();
}

test('writeSyntheticBenchmark: GTA5 and Cityscapes layouts, files equal the renders, a re-run skips, a wrong file is redone', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'spcl-synthetic-'));
  const events: SyntheticProgress[] = [];
  const opts = {
    seed: 5,
    sourceCount: 3,
    targetTrainCount: 2,
    targetValCount: 2,
    sourceSize: [36, 64] as const,
    targetSize: [32, 64] as const,
  };
  const res = await writeSyntheticBenchmark(dir, { ...opts, onProgress: (p) => events.push(p) });
  assert.equal(res.source, join(dir, 'gta5'));
  assert.equal(res.target, join(dir, 'cityscapes'));
  assert.deepEqual(res.counts, { source: 3, targetTrain: 2, targetVal: 2 });
  assert.deepEqual([res.written, res.skipped], [7, 0]);
  assert.deepEqual(await listFiles(dir), [
    'cityscapes/gtFine/train/aldermoor/aldermoor_000000_000019_gtFine_labelIds.png',
    'cityscapes/gtFine/train/brackenfeld/brackenfeld_000000_000019_gtFine_labelIds.png',
    'cityscapes/gtFine/val/elbenau/elbenau_000000_000019_gtFine_labelIds.png',
    'cityscapes/gtFine/val/fennwick/fennwick_000000_000019_gtFine_labelIds.png',
    'cityscapes/leftImg8bit/train/aldermoor/aldermoor_000000_000019_leftImg8bit.png',
    'cityscapes/leftImg8bit/train/brackenfeld/brackenfeld_000000_000019_leftImg8bit.png',
    'cityscapes/leftImg8bit/val/elbenau/elbenau_000000_000019_leftImg8bit.png',
    'cityscapes/leftImg8bit/val/fennwick/fennwick_000000_000019_leftImg8bit.png',
    'gta5/images/00001.png',
    'gta5/images/00002.png',
    'gta5/images/00003.png',
    'gta5/labels/00001.png',
    'gta5/labels/00002.png',
    'gta5/labels/00003.png',
  ]);
  const last = (part: string): SyntheticProgress | undefined => events.filter((e) => e.part === part).at(-1);
  assert.deepEqual(last('gta5'), { part: 'gta5', done: 3, total: 3, written: 3, skipped: 0 });
  assert.deepEqual(last('cityscapes/val'), { part: 'cityscapes/val', done: 2, total: 2, written: 2, skipped: 0 });

  // Files hold exactly the renders: source scene i is 0000(i+1); val scene i is index VAL_INDEX_OFFSET + i.
  const check = async (image: string, label: string, scene: SyntheticScene): Promise<void> => {
    const lab = decodePng(await readFile(join(dir, label)), label);
    assert.deepEqual([lab.width, lab.height, lab.channels, lab.bitDepth], [scene.width, scene.height, 1, 8]);
    assert.deepEqual(Buffer.from(lab.data as Uint8Array), Buffer.from(scene.labelIds));
    const { data, info } = await sharp(join(dir, image)).raw().toBuffer({ resolveWithObject: true });
    assert.deepEqual([info.width, info.height, info.channels], [scene.width, scene.height, 3]);
    assert.deepEqual(data, Buffer.from(scene.image));
  };
  await check('gta5/images/00002.png', 'gta5/labels/00002.png', renderScene('source', 1, 5, [36, 64]));
  await check(
    'cityscapes/leftImg8bit/val/fennwick/fennwick_000000_000019_leftImg8bit.png',
    'cityscapes/gtFine/val/fennwick/fennwick_000000_000019_gtFine_labelIds.png',
    renderScene('target', VAL_INDEX_OFFSET + 1, 5, [32, 64]),
  );

  const mtimes = async (): Promise<number[]> => Promise.all((await listFiles(dir)).map(async (f) => (await stat(join(dir, f))).mtimeMs));
  const before = await mtimes();
  const again = await writeSyntheticBenchmark(dir, opts);
  assert.deepEqual([again.written, again.skipped], [0, 7]);
  assert.deepEqual(await mtimes(), before);

  // A label of the wrong size (e.g. from a run with other sizes) is rewritten, with no temporary files left.
  const wrong = join(dir, 'gta5/labels/00003.png');
  await writeFile(wrong, encodePng({ width: 8, height: 8, channels: 1, bitDepth: 8, data: new Uint8Array(64) }));
  const third = await writeSyntheticBenchmark(dir, opts);
  assert.deepEqual([third.written, third.skipped], [1, 6]);
  assert.equal(decodePng(await readFile(wrong), wrong).width, 64);
  assert.equal((await listFiles(dir)).length, 14);

  await assert.rejects(writeSyntheticBenchmark(dir, { sourceCount: -1 }), /sourceCount must be a non-negative integer, got -1/);
});

test('CLI: --help exits 0; bad flags exit 2 naming flag, value and expectation; a tiny run writes and reports', async () => {
  const run = (...args: string[]) => spawnSync(NODE, [CLI, '--metrics-port', '0', ...args], { encoding: 'utf8' });
  const help = run('--help');
  assert.equal(help.status, 0);
  assert.match(help.stdout, /^usage: node pipelines\/make-synthetic\.ts --out DIR/);
  assert.match(help.stdout, /--target-size HxW/);

  const badSize = run('--out', '/tmp/x', '--source-size', '100');
  assert.equal(badSize.status, 2);
  assert.equal(badSize.stderr.split('\n')[0], "make-synthetic: --source-size must be HxW with sides in 16..4096 (e.g. 144x256), got '100'");
  const badCount = run('--out', '/tmp/x', '--target-val-count', 'ten');
  assert.equal(badCount.status, 2);
  assert.equal(badCount.stderr.split('\n')[0], "make-synthetic: --target-val-count must be an integer in 0..999999, got 'ten'");
  const noOut = run();
  assert.equal(noOut.status, 2);
  assert.equal(noOut.stderr.split('\n')[0], 'make-synthetic: --out is required: the folder to write the benchmark to');
  const unknown = run('--out', '/tmp/x', '--colour', 'red');
  assert.equal(unknown.status, 2);
  assert.match(unknown.stderr.split('\n')[0]!, /^make-synthetic: Unknown option '--colour'/);

  const dir = await mkdtemp(join(tmpdir(), 'spcl-synthetic-cli-'));
  const ok = run(
    '--out',
    dir,
    '--seed',
    '2',
    '--source-count',
    '2',
    '--target-train-count',
    '1',
    '--target-val-count',
    '1',
    '--source-size',
    '36x64',
    '--target-size',
    '32x64',
  );
  assert.equal(ok.status, 0, ok.stderr);
  assert.deepEqual(JSON.parse(ok.stdout), {
    source: join(dir, 'gta5'),
    target: join(dir, 'cityscapes'),
    counts: { source: 2, targetTrain: 1, targetVal: 1 },
    written: 4,
    skipped: 0,
  });
  assert.match(ok.stderr, /^make-synthetic: gta5 2\/2 \(written 2, skipped 0\)/m);
  assert.match(ok.stderr, /^make-synthetic: cityscapes\/val 1\/1 \(written 1, skipped 0\)/m);
  assert.equal((await listFiles(dir)).length, 8);
  const label = decodePng(await readFile(join(dir, 'gta5/labels/00002.png')), 'label');
  assert.deepEqual(Buffer.from(label.data as Uint8Array), Buffer.from(renderScene('source', 1, 2, [36, 64]).labelIds));
});

test("the 'night' domain (second target): the target's layout, scenes of its own, darker and noisier; deterministic", () => {
  const [h, w] = SIZE.target;
  const night = Array.from({ length: 12 }, (_, i) => renderScene('night', i, 0, [h, w]));
  const luma = (s: SyntheticScene) => {
    let sum = 0;
    for (let i = 0; i < s.image.length; i += 3) sum += 0.299 * s.image[i]! + 0.587 * s.image[i + 1]! + 0.114 * s.image[i + 2]!;
    return sum / (s.image.length / 3);
  };
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const nightLuma = mean(night.map(luma));
  const targetLuma = mean(renders.target.slice(0, 12).map(luma));
  assert.ok(nightLuma < 0.7 * targetLuma, `mean luma: night ${nightLuma.toFixed(1)}, target ${targetLuma.toFixed(1)}`);
  // its own scenes (not the target's with another look), the hood and label IDs of the target layout
  assert.notDeepEqual(Buffer.from(night[0]!.labelIds), Buffer.from(renderScene('target', 0, 0, [h, w]).labelIds));
  const valid = new Set(SYNTHETIC_LABEL_IDS);
  for (const s of night) {
    assert.equal(s.labelIds[(s.height - 1) * s.width + s.width / 2], 0);
    for (const id of s.labelIds) assert.ok(valid.has(id), `night label ID ${id}`);
  }
  assert.deepEqual(Buffer.from(renderScene('night', 3, 0, [h, w]).image), Buffer.from(night[3]!.image));
  assert.throws(() => renderScene('dusk' as 'night', 0, 0, [h, w]), /domain must be one of source, target, night, got 'dusk'/);
});

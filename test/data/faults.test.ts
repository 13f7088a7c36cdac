/**
 * Data faults through the real reader (piscina workers, LMDB, sharp) and the input chain of a run
 * (`batches`: read-shards -> decode-augment -> collate): one record of each fault kind among good ones,
 * and shards that disappear, come back or are replaced while a stream reads them. Counts per reason,
 * exact log lines (key + file), and good samples bit-identical to a clean read.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, linkSync, readFileSync, renameSync, statSync, truncateSync, unlinkSync, writeFileSync } from 'node:fs';
import { cp, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { lastValueFrom, map, tap, toArray } from 'rxjs';
import { Credits } from '../../src/graph/flow.ts';
import type { AugmentSpec } from '../../src/data/augment.ts';
import { SampleFault, unknownLabelIds, type FaultCounts } from '../../src/data/faults.ts';
import { ingestDataset } from '../../src/data/ingest.ts';
import { encodePng } from '../../src/data/png.ts';
import { PseudoLabelWriter, generationFile } from '../../src/data/pseudo-labels.ts';
import { openDataset, SampleReader, type Dataset } from '../../src/data/reader.ts';
import { openShardForWrite, shardFileName } from '../../src/data/shards.ts';
import { batches, type RunContext } from '../../src/recipe/context.ts';
import { decodeAugment, skipLine } from '../../src/stages/decode-augment.ts';
import { inOrder, readShards } from '../../src/stages/read-shards.ts';
import { writeBands, writeRgb } from './trees.ts';

const W = 16;
const H = 9;
/** A random scale + crop + flip + colour jitter: "bit-identical" then means the same seeds, the same pixels. */
const SPEC: AugmentSpec = {
  jitter: { brightness: 0.4, contrast: 0.4, saturation: 0.4, hue: 0.1 },
  scale: [0.75, 1.25],
  crop: [8, 12],
  flipProb: 0.5,
};
const keyOf = (i: number) => String(i).padStart(5, '0');

/** `n` GTA5-layout samples (16x9, labels sky / car / road = train IDs 10, 13, 0), ingested into `shards` shard files. */
async function makeDataset(dir: string, n: number, opts: { shards?: number; imageSeed?: number } = {}): Promise<Dataset> {
  const root = join(dir, 'raw');
  for (let i = 1; i <= n; i++) {
    await writeRgb(join(root, `images/${keyOf(i)}.png`), W, H, i + (opts.imageSeed ?? 0));
    await writeBands(join(root, `labels/${keyOf(i)}.png`), W, H, [23, 26, 7]);
  }
  const out = join(dir, 'shards');
  const shardCount = opts.shards ?? 1;
  for (let s = 0; s < shardCount; s++) {
    await ingestDataset({ dataset: 'gta5', root, out, shardIndex: s, shardCount, log: () => {}, progressStream: null, threads: 1 });
  }
  return openDataset(out);
}

/** The parts of a run context that `batches` uses. */
function context(dataset: Dataset, reader: SampleReader, log: string[]): RunContext & { skipped: FaultCounts; repaired: FaultCounts } {
  return {
    cfg: { seed: 0, data: { prefetch: 4, classBalanced: false } },
    data: { source: dataset, target: dataset, targetVal: null },
    reader,
    events: { log: (l: string) => log.push(l) },
    skipped: {},
    repaired: {},
  } as unknown as RunContext;
}

interface Read {
  image: Float32Array;
  label: Int32Array | null;
}

/** One pass over every record through the run's input chain; the samples that came out, by key. */
async function pass(ctx: RunContext, pseudo: string | null = null): Promise<Map<string, Read>> {
  const out = await lastValueFrom(
    batches(ctx, { domain: 'target', spec: SPEC, batchSize: 1, mode: 'pass', stream: 5, pseudo }).pipe(
      map((b) => {
        const r: [string, Read] = [b.keys[0]!, { image: b.images.slice(), label: b.labels?.slice() ?? null }];
        b.release();
        return r;
      }),
      toArray(),
    ),
  );
  return new Map(out);
}

test('reader: one record of each fault kind is skipped with its reason, named (key + file) in one log line; good samples are bit-identical to a clean read', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'spcl-faults-'));
  // one worker: libvips keeps one error buffer per process, so two images failing at once in two threads
  // may swap the library's detail text (the reasons stay right); one thread makes the messages exact
  const reader = new SampleReader({ threads: 1 });
  const skipper = new SampleReader({ threads: 1, unknownLabels: 'skip' });
  try {
    const clean = await makeDataset(join(dir, 'clean'), 10);
    await cp(join(dir, 'clean'), join(dir, 'faulty'), { recursive: true });
    const faulty = await openDataset(join(dir, 'faulty/shards'));
    const shard = join(faulty.dir, shardFileName(0));
    const w = openShardForWrite(shard, { dataset: 'gta5', split: 'train', numClasses: 19 });
    const rec = (k: string) => w.records.get(k)!;
    const whole2 = rec('00002').image.length;
    await w.records.put('00002', { ...rec('00002'), image: rec('00002').image.subarray(0, Math.floor(whole2 / 2)) });
    await w.records.put('00003', { ...rec('00003'), image: Buffer.from('this is not an image at all') });
    await w.records.put('00004', { ...rec('00004'), width: 17 });
    // stored train IDs: rows 0..2 sky (10), rows 3..5 ID 40, rows 6..8 ID 19: neither < 19 nor 255
    const bad = new Uint8Array(W * H).fill(10);
    bad.fill(40, 3 * W, 6 * W).fill(19, 6 * W);
    await w.records.put('00005', { ...rec('00005'), label: encodePng({ width: W, height: H, channels: 1, bitDepth: 8, data: bad }) });
    await w.records.put('00006', { ...rec('00006'), label: rec('00006').label!.subarray(0, 40) });
    await w.records.remove('00007');
    await w.root.openDB({ name: 'records', encoding: 'binary' }).put('00008', Buffer.from([0x92, 0x01])); // msgpack cut short
    await w.close();

    const cleanRead = await pass(context(clean, reader, []));
    assert.equal(cleanRead.size, 10);
    const log: string[] = [];
    const ctx = context(faulty, reader, log);
    const got = await pass(ctx);
    assert.deepEqual([...got.keys()], ['00001', '00005', '00009', '00010']);
    assert.deepEqual(ctx.skipped, {
      'decode-augment': { corrupt_image: 2, wrong_size: 1, corrupt_label: 1, missing_record: 1, corrupt_record: 1 },
    });
    assert.deepEqual(ctx.repaired, { 'decode-augment': { unknown_label_ids: 1 } });
    const at = (key: string, what: string) => `stage decode-augment (sample ${key}): ${shard}: record '${key}': ${what}`;
    // skips are logged as they happen (concurrent reads): compare sorted
    assert.deepEqual(log.sort(), [
      `repaired (unknown_label_ids): ${at('00005', 'label has 96 pixels with unknown IDs (19, 40), expected train IDs 0..18 or 255; set to 255')}`,
      // one IDAT chunk, then the 12-byte IEND: the half file ends inside IDAT
      `skipped (corrupt_image): ${at('00002', `image does not decode (truncated: the file ends inside its IDAT chunk (${Math.floor(whole2 / 2)} bytes, the chunk needs ${whole2 - 12}))`)}`,
      `skipped (corrupt_image): ${at('00003', 'image does not decode (Input buffer contains unsupported image format)')}`,
      `skipped (corrupt_label): ${at('00006', 'label: not a readable PNG: no IEND chunk (truncated?)')}`,
      `skipped (corrupt_record): ${at('00008', 'stored value does not decode (Unexpected end of MessagePack data)')}`,
      `skipped (missing_record): ${at('00007', 'not in the shard (the manifest lists it there)')}`,
      `skipped (wrong_size): ${at('00004', 'image decodes to 16x9x3, the record says 17x9x3')}`,
    ]);
    for (const key of ['00001', '00009', '00010']) {
      assert.deepEqual(got.get(key)!.image, cleanRead.get(key)!.image, `${key} image`);
      assert.deepEqual(got.get(key)!.label, cleanRead.get(key)!.label, `${key} label`);
    }
    // the repaired sample: its image as read clean; its label is the clean one with rows 3..8 (IDs 40, 19) at 255,
    // i.e. wherever the clean label is car (13) or road (0) after the same augmentation
    assert.deepEqual(got.get('00005')!.image, cleanRead.get('00005')!.image);
    const expected = cleanRead.get('00005')!.label!.map((v) => (v === 13 || v === 0 ? 255 : v));
    assert.deepEqual(got.get('00005')!.label, expected);
    assert.ok(expected.some((v) => v === 10) && expected.some((v) => v === 255), 'the crop shows both kept and repaired rows');
    // faulty reads give their lent buffers back: 2 passes of 10 samples, at most 4 in flight
    assert.ok(reader.allocated <= 4, `allocated ${reader.allocated} buffer pairs`);

    // data.unknownLabelIds = 'skip'
    const log2: string[] = [];
    const ctx2 = context(faulty, skipper, log2);
    assert.deepEqual([...(await pass(ctx2)).keys()], ['00001', '00009', '00010']);
    assert.deepEqual(ctx2.skipped, {
      'decode-augment': { corrupt_image: 2, wrong_size: 1, corrupt_label: 1, missing_record: 1, corrupt_record: 1, unknown_label_ids: 1 },
    });
    assert.deepEqual(ctx2.repaired, {});
    assert.ok(
      log2.includes(
        `skipped (unknown_label_ids): ${at('00005', 'label has 96 pixels with unknown IDs (19, 40), expected train IDs 0..18 or 255')}`,
      ),
      log2.join('\n'),
    );

    // pseudo-labels: 00010 has none in the generation; 00009's has 3 pixels of ID 77
    const gen = await PseudoLabelWriter.next(join(dir, 'pseudo'), 19);
    for (let i = 1; i <= 9; i++) {
      const labels = new Uint8Array(W * H).fill(13);
      if (i === 9) labels.fill(77, 0, 3);
      await gen.put(keyOf(i), { width: W, height: H, labels });
    }
    await gen.commit([0.5], {});
    const pseudo = join(dir, 'pseudo', generationFile(1));
    const log3: string[] = [];
    const ctx3 = context(faulty, reader, log3);
    const got3 = await pass(ctx3, pseudo);
    // 00005 and 00006 take their label from the generation now: read fine
    assert.deepEqual([...got3.keys()], ['00001', '00005', '00006', '00009']);
    assert.deepEqual(ctx3.skipped, {
      'decode-augment': { corrupt_image: 2, wrong_size: 1, missing_record: 1, corrupt_record: 1, missing_pseudo_label: 1 },
    });
    assert.deepEqual(ctx3.repaired, { 'decode-augment': { unknown_label_ids: 1 } });
    assert.ok(
      log3.includes(
        `skipped (missing_pseudo_label): stage decode-augment (sample 00010): ${pseudo}: record '00010': no pseudo-label in this generation`,
      ),
      log3.join('\n'),
    );
    assert.ok(
      log3.includes(
        `repaired (unknown_label_ids): stage decode-augment (sample 00009): ${pseudo}: record '00009': ` +
          'pseudo-label has 3 pixels with unknown IDs (77), expected train IDs 0..18 or 255; set to 255',
      ),
      log3.join('\n'),
    );
    const l1 = got3.get('00001')!.label!;
    assert.ok(l1.every((v) => v === 13 || v === 255) && l1.includes(13), `pseudo-label of 00001: ${[...new Set(l1)]}`); // 255: crop padding only

    // a key the manifest does not list
    await assert.rejects(reader.read(faulty, 'nope', SPEC, 0), (e: SampleFault) => {
      assert.deepEqual(
        [e.reason, e.file, e.key, e.message],
        ['missing_record', join(faulty.dir, 'manifest.json'), 'nope', `${faulty.dir}: no record 'nope' in the manifest`],
      );
      return true;
    });
  } finally {
    await reader.close();
    await skipper.close();
    await rm(dir, { recursive: true });
  }
});

/** Lines of this process's memory map naming `file` (LMDB maps the data file and its -lock file). */
function mapped(file: string): string[] {
  return readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((l) => l.includes(file));
}

/** decode-augment over every key in order, one at a time (so that file events fall between known reads). */
function stream(dataset: Dataset, reader: SampleReader, onSample: (key: string, n: number) => void, onSkip: (line: string) => void) {
  const credits = new Credits(4);
  let n = 0;
  return lastValueFrom(
    readShards({ dataset, sampler: inOrder(dataset.keys), credits, seed: 0, stream: 5, count: dataset.keys.length }).pipe(
      decodeAugment({ reader, spec: SPEC, credits, concurrency: 1, onSkip: (e) => onSkip(skipLine(e)) }),
      map((s) => {
        const r: [string, Read] = [s.key, { image: s.image.slice(), label: s.label ? Int32Array.from(s.label) : null }];
        reader.recycle(s);
        credits.release();
        return r;
      }),
      tap(([key]) => onSample(key, ++n)),
      toArray(),
    ),
  ).then((r) => new Map(r));
}

test('a shard deleted mid-stream: retried, then its samples skipped as shard_unavailable and its pages let go; read again once it is back; the stream completes', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'spcl-faults-'));
  const log: string[] = [];
  // retryDelay 0: every read of a shard given up on checks it again (the timing is tested below)
  const reader = new SampleReader({ threads: 2, retries: 2, retryDelay: 0, log: (l) => log.push(l) });
  try {
    const ds = await makeDataset(dir, 12, { shards: 2 });
    // keys alternate between the shards: 00001 -> shard 0, 00002 -> shard 1, ...
    assert.deepEqual(
      ds.manifest.samples.slice(0, 4).map(([k, s]) => `${k}@${s}`),
      ['00001@0', '00002@1', '00003@0', '00004@1'],
    );
    const shard1 = join(ds.dir, shardFileName(1));
    const reference = await stream(
      ds,
      reader,
      () => {},
      () => {},
    );
    // both workers hold shard 1 open
    await Promise.all(['00002', '00004', '00006', '00008'].map((k) => reader.read(ds, k, SPEC, 0).then((s) => reader.recycle(s))));
    const canSeeMaps = existsSync('/proc/self/maps');
    if (canSeeMaps) assert.ok(mapped(shard1).length > 0, 'shard 1 is mapped before');
    copyFileSync(shard1, join(dir, 'backup.lmdb'));
    const skips: string[] = [];
    let mappedAfterGivingUp: string[] = [];
    const got = await stream(
      ds,
      reader,
      (_key, n) => {
        if (n === 4) unlinkSync(shard1); // after 00004: gone
      },
      (line) => {
        skips.push(line);
        if (skips.length === 1 && canSeeMaps) mappedAfterGivingUp = mapped(shard1);
        if (skips.length === 2) copyFileSync(join(dir, 'backup.lmdb'), shard1); // back (a new file) after the second skip
      },
    );
    const k = (key: string, what: string) =>
      `skipped (shard_unavailable): stage decode-augment (sample ${key}): ${shard1}: record '${key}': ${what}`;
    assert.deepEqual(skips, [
      k('00006', 'unavailable (shard file is missing); gave up after 2 retries over 0 s'),
      k('00008', 'still unavailable (shard file is missing)'),
    ]);
    assert.deepEqual([...got.keys()], ['00001', '00002', '00003', '00004', '00005', '00007', '00009', '00010', '00011', '00012']);
    for (const [key, r] of got) assert.deepEqual(r, reference.get(key), key);
    // the deleted file was unmapped in every worker (without it, the workers would read the deleted file for ever)
    assert.deepEqual(mappedAfterGivingUp, []);
    assert.equal(log.length, 3, log.join('\n'));
    assert.match(
      log[0]!,
      new RegExp(`^${shard1}: shard file is missing; closed in all 2 workers in \\d+\\.\\d ms, the next reads open it again$`),
    );
    assert.equal(
      log[1],
      `${shard1}: unavailable (shard file is missing) after 2 retries over 0 s; its samples are skipped, checked again every 0 s`,
    );
    assert.equal(log[2], `${shard1}: available again; its samples are read again`);
  } finally {
    await reader.close();
    await rm(dir, { recursive: true });
  }
});

test('a shard replaced mid-stream by renaming another shard into place: closed in every worker, the new file is read (its missing record skipped); the stream completes', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'spcl-faults-'));
  const log: string[] = [];
  const reader = new SampleReader({ threads: 2, log: (l) => log.push(l) });
  try {
    const ds = await makeDataset(join(dir, 'a'), 12, { shards: 2 });
    // version 2: other images for the same keys; its shard 1 lacks 00008
    const v2 = await makeDataset(join(dir, 'b'), 12, { shards: 2, imageSeed: 100 });
    const w = openShardForWrite(join(v2.dir, shardFileName(1)), { dataset: 'gta5', split: 'train', numClasses: 19 });
    await w.records.remove('00008');
    await w.close();
    const reference = await stream(
      ds,
      reader,
      () => {},
      () => {},
    );
    // version 2 is read by a reader of its own, closed before the rename (its threads let go of the file)
    const other = new SampleReader({ threads: 1 });
    const reference2 = await stream(
      v2,
      other,
      () => {},
      () => {},
    ).finally(() => other.close());
    assert.notDeepEqual(reference.get('00006')!.image, reference2.get('00006')!.image);
    await Promise.all(['00002', '00004', '00006', '00010'].map((k) => reader.read(ds, k, SPEC, 0).then((s) => reader.recycle(s))));
    const shard1 = join(ds.dir, shardFileName(1));
    const inodes = [statSync(shard1).ino, statSync(join(v2.dir, shardFileName(1))).ino];
    const skips: string[] = [];
    const got = await stream(
      ds,
      reader,
      (_key, n) => {
        if (n === 4) renameSync(join(v2.dir, shardFileName(1)), shard1); // after 00004
      },
      (line) => skips.push(line),
    );
    assert.deepEqual(skips, [
      `skipped (missing_record): stage decode-augment (sample 00008): ${shard1}: record '00008': not in the shard (the manifest lists it there)`,
    ]);
    assert.deepEqual([...got.keys()], ['00001', '00002', '00003', '00004', '00005', '00006', '00007', '00009', '00010', '00011', '00012']);
    for (const [key, r] of got) {
      // shard 1 after the replacement comes from version 2; everything else as before
      const fromV2 = ['00006', '00010', '00012'].includes(key);
      assert.deepEqual(r, (fromV2 ? reference2 : reference).get(key), `${key} from ${fromV2 ? 'version 2' : 'version 1'}`);
    }
    assert.equal(log.length, 1, log.join('\n'));
    assert.match(
      log[0]!,
      new RegExp(
        `^${shard1}: shard file was replaced \\(inode ${inodes[0]} -> ${inodes[1]}\\); closed in all 2 workers in \\d+\\.\\d ms, ` +
          'the next reads open it again$',
      ),
    );
  } finally {
    await reader.close();
    await rm(dir, { recursive: true });
  }
});

test('retry timing: a missing shard is retried after 0.1, 0.2 s, then skipped at once until its check 0.4 s later; other shards read meanwhile', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'spcl-faults-'));
  const reader = new SampleReader({ threads: 2, retries: 2, retryDelay: 0.1 });
  try {
    const ds = await makeDataset(dir, 4, { shards: 2 });
    const shard1 = join(ds.dir, shardFileName(1));
    const before = await reader.read(ds, '00002', SPEC, 7);
    const saved = { image: before.image.slice(), label: before.label!.slice() };
    reader.recycle(before);
    renameSync(shard1, `${shard1}.away`);
    const timed = async (key: string) => {
      const t0 = performance.now();
      const err = await reader.read(ds, key, SPEC, 7).then(
        () => null,
        (e: SampleFault) => e,
      );
      return { err, ms: performance.now() - t0 };
    };
    const first = await timed('00002');
    const givenUpAt = performance.now();
    assert.equal(first.err?.reason, 'shard_unavailable');
    assert.equal(first.err?.message, `${shard1}: record '00002': unavailable (shard file is missing); gave up after 2 retries over 0.3 s`);
    assert.ok(first.ms >= 300 && first.ms < 1500, `gave up after ${first.ms.toFixed(0)} ms (retries at 100 + 200 ms)`);
    const fast = await timed('00004');
    assert.equal(
      fast.err?.message,
      `${shard1}: record '00004': unavailable (shard file is missing); skipped without reading until it is checked again`,
    );
    assert.ok(fast.ms < 100, `skipped in ${fast.ms.toFixed(0)} ms`);
    const other = await reader.read(ds, '00001', SPEC, 7);
    assert.equal(other.key, '00001');
    reader.recycle(other);
    renameSync(`${shard1}.away`, shard1);
    // back, but not checked before its time
    if (performance.now() - givenUpAt < 300)
      assert.match((await timed('00002')).err?.message ?? '', /skipped without reading until it is checked again$/);
    await new Promise((r) => setTimeout(r, Math.max(0, 400 - (performance.now() - givenUpAt)) + 20));
    const again = await reader.read(ds, '00002', SPEC, 7);
    assert.deepEqual({ image: again.image, label: again.label }, saved);
  } finally {
    await reader.close();
    await rm(dir, { recursive: true });
  }
});

test('a shard replaced while several reads of it are in flight: no read fails (LMDB lock table intact), every sample is from the old or the new file, then from the new one', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'spcl-faults-'));
  const log: string[] = [];
  const reader = new SampleReader({ threads: 2, log: (l) => log.push(l) });
  try {
    const n = 24;
    const ds = await makeDataset(join(dir, 'a'), n, { shards: 2 });
    const v2 = await makeDataset(join(dir, 'b'), n, { shards: 2, imageSeed: 100 });
    const other = new SampleReader({ threads: 1 });
    const reference2 = await stream(
      v2,
      other,
      () => {},
      () => {},
    ).finally(() => other.close());
    const reference = await stream(
      ds,
      reader,
      () => {},
      () => {},
    );
    const shard1 = join(ds.dir, shardFileName(1));
    for (let round = 0; round < 3; round++) {
      // both workers read shard 1 concurrently, the file is replaced in the middle of it
      const credits = new Credits(8);
      const skips: string[] = [];
      let emitted = 0;
      const got = await lastValueFrom(
        readShards({ dataset: ds, sampler: inOrder(ds.keys), credits, seed: 0, stream: 5, count: n }).pipe(
          decodeAugment({ reader, spec: SPEC, credits, concurrency: 4, onSkip: (e) => skips.push(skipLine(e)) }),
          map((s) => {
            const r: [string, Read] = [s.key, { image: s.image.slice(), label: s.label ? Int32Array.from(s.label) : null }];
            reader.recycle(s);
            credits.release();
            if (++emitted === 6) {
              // swap versions: v1 <-> v2 (the next round swaps back). The old file keeps a second name
              // first, so that the rename over it is one atomic replacement: a read never finds the path
              // missing (that is another fault, with its own log line)
              const spare = join(dir, 'spare.lmdb');
              linkSync(shard1, spare);
              renameSync(join(v2.dir, shardFileName(1)), shard1);
              renameSync(spare, join(v2.dir, shardFileName(1)));
            }
            return r;
          }),
          toArray(),
        ),
      );
      assert.deepEqual(skips, [], `round ${round}`);
      assert.equal(got.length, n);
      const [before, after] = round % 2 === 0 ? [reference, reference2] : [reference2, reference];
      let switched = false;
      for (const [key, r] of got) {
        if (Number(key) % 2 === 1) {
          assert.deepEqual(r, reference.get(key), `round ${round} ${key} (shard 0)`);
          continue;
        }
        const isNew = JSON.stringify(r) === JSON.stringify(after.get(key));
        assert.ok(isNew || JSON.stringify(r) === JSON.stringify(before.get(key)), `round ${round} ${key}: neither version`);
        if (Number(key) > 6 + 8 + 1) assert.ok(isNew, `round ${round} ${key}: read from the replaced file after the replacement`);
        if (isNew) switched = true;
      }
      assert.ok(switched, `round ${round}: the new file was read`);
    }
    assert.equal(log.filter((l) => l.includes('was replaced')).length, 3, log.join('\n'));
  } finally {
    await reader.close();
    await rm(dir, { recursive: true });
  }
});

test('unknownLabelIds: counts the pixels neither < numClasses nor 255 four at a time, any alignment; lists the first distinct ones', () => {
  const labels = Uint8Array.from([0, 18, 19, 255, 40, 40, 254, 7, 255, 255, 255, 255, 20, 3, 3, 3, 3, 128]);
  // 19, 40, 40, 254, 20, 128; with 16 classes 18 too
  assert.deepEqual(unknownLabelIds(labels, 19), { pixels: 6, ids: [19, 20, 40, 128, 254] });
  assert.deepEqual(unknownLabelIds(labels, 16), { pixels: 7, ids: [18, 19, 20, 40, 128] });
  assert.deepEqual(unknownLabelIds(labels, 19, 2), { pixels: 6, ids: [19, 20] });
  // every offset and length against a plain count
  const plain = (l: Uint8Array, k: number) => l.reduce((n, v) => n + (v >= k && v !== 255 ? 1 : 0), 0);
  for (let off = 0; off < 4; off++) {
    for (let len = 0; len + off <= labels.length; len++) {
      const view = labels.subarray(off, off + len);
      for (const k of [16, 19]) assert.equal(unknownLabelIds(view, k).pixels, plain(view, k), `offset ${off} length ${len} classes ${k}`);
    }
  }
  assert.deepEqual(unknownLabelIds(new Uint8Array(1000).fill(255), 19), { pixels: 0, ids: [] });
  assert.throws(() => unknownLabelIds(labels, 200), /^RangeError: unknownLabelIds: numClasses 200 is not in 1\.\.128$/);
});

test('cost per sample: the file identity check and the label ID scan, next to the read of the same sample in one run', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'spcl-faults-'));
  const reader = new SampleReader({ threads: 1 });
  try {
    const sizes = [
      [128, 72],
      [2048, 1024],
    ] as const;
    const shares: number[] = [];
    for (const [w, h] of sizes) {
      const root = join(dir, `${w}`, 'raw');
      await writeRgb(join(root, 'images/00001.png'), w, h, 1);
      await writeBands(join(root, 'labels/00001.png'), w, h, [23, 26, 7, 0, 21, 11]);
      await ingestDataset({ dataset: 'gta5', root, out: join(dir, `${w}`, 'shards'), log: () => {}, progressStream: null, threads: 1 });
      const ds = await openDataset(join(dir, `${w}`, 'shards'));
      // the recipe's source augmentation: colour jitter, random scale, crop to half the image, flip
      const spec: AugmentSpec = {
        jitter: { brightness: 0.5, contrast: 0.5, saturation: 0.5, hue: 0.2 },
        scale: [0.5, 1.5],
        crop: [h / 2, w / 2],
        flipProb: 0.5,
      };
      const n = w > 1000 ? 6 : 60;
      let read = 0;
      for (let i = 0; i <= n; i++) {
        const s = await reader.read(ds, '00001', spec, i);
        if (i > 0) read += s.seconds / n; // the first warms the worker up
        reader.recycle(s);
      }
      // the same work as the worker's checks: one stat of the shard, one scan of the stored label
      const shard = join(ds.dir, shardFileName(0));
      const label = new Uint8Array(w * h).fill(13);
      label.fill(255, 0, w * 8);
      // seconds per call, the fastest of 5 batches (the machine is shared: other processes only add time)
      const perCall = (f: () => void, reps: number) =>
        Math.min(
          ...Array.from({ length: 5 }, () => {
            const t0 = performance.now();
            for (let i = 0; i < reps; i++) f();
            return (performance.now() - t0) / 1000 / reps;
          }),
        );
      const scan = perCall(() => unknownLabelIds(label, 19), Math.round(1e7 / (w * h)) + 10);
      const stat = perCall(() => statSync(shard, { bigint: true, throwIfNoEntry: false }), 4000);
      const share = (scan + stat) / read;
      shares.push(share);
      t.diagnostic(
        `${w}x${h}: read ${(1000 * read).toFixed(2)} ms/sample; stat ${(1e6 * stat).toFixed(1)} us + label scan ${(1e6 * scan).toFixed(0)} us = ` +
          `${(100 * share).toFixed(2)} % of it`,
      );
    }
    // negligible: measured 0.3-0.6 % of a sample's read (128x72 synthetic images to Cityscapes' 2048x1024); the bound leaves room for a loaded machine
    for (const [i, s] of shares.entries()) assert.ok(s < 0.02, `${sizes[i]!.join('x')}: ${(100 * s).toFixed(2)} %`);
  } finally {
    await reader.close();
    await rm(dir, { recursive: true });
  }
});

test('a shard replaced by a file that is not (yet) a whole LMDB file, or cut short in place, is unavailable, not a crash; the whole file is read again', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'spcl-faults-'));
  // retryDelay 0: each read of the file given up on checks it again
  const reader = new SampleReader({ threads: 2, retries: 0, retryDelay: 0 });
  try {
    const ds = await makeDataset(dir, 4, { shards: 2 });
    const shard1 = join(ds.dir, shardFileName(1));
    const ref = await reader.read(ds, '00002', SPEC, 3);
    const saved = { image: ref.image.slice(), label: ref.label!.slice() };
    reader.recycle(ref);
    const whole = readFileSync(shard1);
    const put = (bytes: Uint8Array) => {
      writeFileSync(join(dir, 'next.lmdb'), bytes);
      renameSync(join(dir, 'next.lmdb'), shard1);
    };
    const failure = (key: string) =>
      reader.read(ds, key, SPEC, 3).then(
        () => 'read',
        (e: SampleFault) => `${e.reason}: ${e.message}`,
      );
    const at = (key: string, what: string) => `shard_unavailable: ${shard1}: record '${key}': ${what}`;
    // lmdb 3.5 takes the process down with SIGBUS on this one, and SIGSEGV on the two after it
    const half = Math.floor(whole.length / 2);
    put(whole.subarray(0, half));
    assert.equal(
      await failure('00002'),
      at(
        '00002',
        `unavailable (shard file is cut short (${half} bytes, its last page ends at ${whole.length}: a copy in progress?)); gave up after 0 retries over 0 s`,
      ),
    );
    put(new Uint8Array(0));
    assert.equal(await failure('00004'), at('00004', 'still unavailable (shard file is not an LMDB file (0 bytes))'));
    put(new Uint8Array(20000).fill(7));
    assert.equal(
      await failure('00002'),
      at('00002', 'still unavailable (shard file is not an LMDB file (no LMDB magic number in its first page))'),
    );
    const other = await reader.read(ds, '00001', SPEC, 3); // shard 0 reads on
    reader.recycle(other);
    put(whole);
    const back = await reader.read(ds, '00002', SPEC, 3);
    assert.deepEqual({ image: back.image, label: back.label }, saved);
    reader.recycle(back);
    // cut short in place (same inode) under the open mapping, then written back whole
    truncateSync(shard1, half);
    assert.equal(
      await failure('00002'),
      at(
        '00002',
        `unavailable (shard file is cut short (${half} bytes, its last page ends at ${whole.length}: a copy in progress?)); gave up after 0 retries over 0 s`,
      ),
    );
    writeFileSync(shard1, whole);
    const again = await reader.read(ds, '00004', SPEC, 3);
    assert.equal(again.key, '00004');
    reader.recycle(again);
  } finally {
    await reader.close();
    await rm(dir, { recursive: true });
  }
});

test('records another process appends to a shard a worker already holds open are read: each read sees the shard as it is now, not as the worker first saw it', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'spcl-faults-'));
  // one worker: every read goes to the worker that opened the shard, which waits (Atomics) between tasks
  const reader = new SampleReader({ threads: 1, retries: 0, log: () => {} });
  try {
    const ds = await makeDataset(dir, 4);
    await reader.read(ds, '00001', SPEC, 0).then((s) => reader.recycle(s));
    // another process (a user's ingest job) appends samples 5-8 to the same shard and rewrites the manifest
    for (let i = 5; i <= 8; i++) {
      await writeRgb(join(dir, `raw/images/${keyOf(i)}.png`), W, H, i);
      await writeBands(join(dir, `raw/labels/${keyOf(i)}.png`), W, H, [23, 26, 7]);
    }
    const ingest = new URL('../../src/data/ingest.ts', import.meta.url).href;
    const code = `import { ingestDataset } from ${JSON.stringify(ingest)};
      await ingestDataset({ dataset: 'gta5', root: ${JSON.stringify(join(dir, 'raw'))}, out: ${JSON.stringify(ds.dir)}, shardIndex: 0, shardCount: 1, log: () => {}, progressStream: null, threads: 1 });`;
    const child = spawnSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8' });
    assert.equal(child.status, 0, child.stderr);
    const after = await openDataset(ds.dir);
    assert.equal(after.manifest.count, 8);
    for (const key of ['00008', '00005', '00002']) {
      const s = await reader.read(after, key, SPEC, 0);
      assert.equal(s.key, key);
      reader.recycle(s);
    }
  } finally {
    await reader.close();
    await rm(dir, { recursive: true });
  }
});

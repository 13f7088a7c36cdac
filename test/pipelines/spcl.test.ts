import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer, type AddressInfo } from 'node:net';
import { decodePng, encodePng } from '../../src/data/png.ts';
import { ShuffleSampler } from '../../src/data/sampler.ts';
import { openShardForWrite, readManifest } from '../../src/data/shards.ts';
import type { RunReport } from '../../src/recipe/run.ts';

const root = new URL('../../', import.meta.url).pathname;
const node = process.execPath;
// --metrics-port 0: no endpoint, so parallel runs never compete for 127.0.0.1:9464
const run = (script: string, args: string[]) =>
  spawnSync(node, [join(root, 'pipelines', script), '--metrics-port', '0', ...args], { cwd: root, encoding: 'utf8', timeout: 300_000 });

test('spcl --quick: every phase runs end to end, the report has its structure, tensors stay flat, mIoU rises over the warm-up', async () => {
  const out = await mkdtemp(join(tmpdir(), 'spcl-quick-'));
  const t0 = performance.now();
  const r = run('spcl.ts', ['--quick', '--out', out]);
  const seconds = (performance.now() - t0) / 1000;
  assert.equal(r.status, 0, r.stderr.slice(-3000));
  // a guard against a hang or a several-fold slowdown, not the solo figure: alone on 2 cores the quick run
  // takes about 64 s (trainable BN); beside the rest of the suite (2 test files at once) CI saw 136 s
  assert.ok(seconds < 240, `quick run took ${seconds.toFixed(0)} s`);
  const report = JSON.parse(await readFile(join(out, 'report.json'), 'utf8')) as RunReport;
  assert.deepEqual(
    report.phases.map((p) => p.phase),
    ['warmup', 'prototypes', 'pseudo-labels', 'spcl', 'pseudo-labels-2', 'ssl'],
  );
  assert.equal(report.backend, 'wasm');
  assert.equal(report.seed, 0);
  for (const p of report.phases.filter((x) => ['warmup', 'spcl', 'ssl'].includes(x.phase))) {
    assert.ok(p.miou !== null && p.miou > 0 && p.miou <= 1, `${p.phase} miou ${p.miou}`);
    assert.equal(p.classIoU!.length, 19);
    assert.ok(p.seconds > 0 && p.iterations > 0);
  }
  const miou = Object.fromEntries(report.phases.map((p) => [p.phase, p.miou]));
  assert.ok(miou.ssl! > miou.warmup!, `target mIoU warmup ${miou.warmup} -> spcl ${miou.spcl} -> ssl ${miou.ssl}`);
  // nothing leaks: the prototypes are the one tensor added after the warm-up
  const tensors = report.phases.map((p) => p.tensors);
  assert.equal(tensors[1], tensors[0]! + 1);
  assert.ok(
    tensors.slice(1).every((t) => t === tensors[1]),
    `tensors per phase ${tensors}`,
  );
  assert.match(r.stdout, /^phase +mIoU %/);
  assert.match(r.stderr, /warmup \d+\/\d+ +total/);
  // progress lines carry the time left: of the phase and, before the last training phase, of the run
  // (the later phases' steps at this phase's pace); the last warm-up line has none of the phase left
  const secs = (t: string) => (/^(?:(\d+)h)?(?:(\d+)m)?(\d+)s$|^(\d+)h(\d+)m$/.test(t) ? t : assert.fail(`duration ${t}`));
  const warm = [...r.stderr.matchAll(/^warmup (\d+)\/60 .* eta (\S+), run (\S+)$/gm)];
  assert.ok(warm.length >= 2, 'warm-up lines with a phase and a run ETA');
  for (const m of warm) secs(m[2]!) && secs(m[3]!);
  assert.equal(warm.at(-1)![1], '60');
  assert.equal(warm.at(-1)![2], '0s');
  assert.notEqual(warm.at(-1)![3], '0s');
  assert.match(r.stderr, /^ssl \d+\/\d+ .* eta \S+$/m);
  assert.doesNotMatch(r.stderr, /^ssl \d+\/\d+ .*, run /m);
  // two threshold caps: pseudo.cap (0.9) for the pass that feeds spcl, ssl.pseudoCap (0.99) for self-training's
  const first = /^pseudo-labels: generation 1, .*; thresholds \(cap 0\.9\) ([\d. ]+)$/m.exec(r.stderr);
  assert.ok(first, 'first pass log line');
  assert.ok(
    first[1]!
      .trim()
      .split(' ')
      .every((v) => Number(v) <= 0.9),
    first[1],
  );
  const second = JSON.parse(await readFile(join(out, 'pseudo-labels', 'current.json'), 'utf8')) as {
    generation: number;
    thresholds: number[];
    source: { phase: string; cap: number };
  };
  assert.deepEqual([second.generation, second.source.phase, second.source.cap], [2, 'pseudo-labels-2', 0.99]);
  // some class's upper median is above 0.9 at this seed: the second cap is the one that bound it
  assert.ok(Math.max(...second.thresholds) <= 0.99 && Math.max(...second.thresholds) > 0.9, `${second.thresholds}`);
  // evaluate.ts on the last checkpoint gives the report's ssl figure; --adapt-bn re-estimates BN on the target first
  const data = (report as RunReport & { config: { data: { target: string; targetVal: string } } }).config.data;
  const ckpt = join(
    out,
    'checkpoints',
    (JSON.parse(await readFile(join(out, 'checkpoints', 'latest.json'), 'utf8')) as { file: string }).file,
  );
  const plain = run('evaluate.ts', ['--checkpoint', ckpt, '--data', data.targetVal, '--ccd', '0', '--out', join(out, 'eval.json')]);
  assert.equal(plain.status, 0, plain.stderr.slice(-3000));
  const evaluated = JSON.parse(await readFile(join(out, 'eval.json'), 'utf8')) as { miou: number };
  assert.ok(Math.abs(evaluated.miou - miou.ssl!) < 1e-6, `evaluate.ts ${evaluated.miou} vs the run's ssl ${miou.ssl}`);
  const adapted = run('evaluate.ts', [
    '--checkpoint',
    ckpt,
    '--data',
    data.targetVal,
    '--ccd',
    '0',
    '--adapt-bn',
    data.target,
    '--out',
    join(out, 'adabn.json'),
  ]);
  assert.equal(adapted.status, 0, adapted.stderr.slice(-3000));
  assert.match(adapted.stderr, new RegExp(`^adapt-bn: BN running statistics re-estimated on 120 images of ${data.target} at 64x128$`, 'm'));
  const adabn = JSON.parse(await readFile(join(out, 'adabn.json'), 'utf8')) as { miou: number };
  assert.ok(adabn.miou > 0 && adabn.miou !== evaluated.miou, `AdaBN mIoU ${adabn.miou}, plain ${evaluated.miou}`);
  const bad = run('evaluate.ts', ['--checkpoint', ckpt, '--data', data.targetVal, '--adapt-size', '64x128']);
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /--adapt-size needs --adapt-bn/);
  await rm(out, { recursive: true });
});

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

test('data faults of six kinds are skipped or repaired, counted by reason in report.json and Prometheus, named in the log; the run goes on (source-only)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'spcl-faults-'));
  const shards = join(root, 'data/synthetic-quick/shards');
  await cp(shards, join(dir, 'shards'), { recursive: true });
  const open = async (name: string) => {
    const m = await readManifest(join(dir, 'shards', name));
    const file = join(dir, 'shards', name, m.shards[0]!.file);
    return { m, file, w: openShardForWrite(file, { dataset: m.dataset, split: m.split, numClasses: m.numClasses }) };
  };
  // Source: the first draws of the warm-up's source stream (stream 11, shuffled with seed 0 + 11 when not
  // class-balanced, src/recipe/phases.ts) are read by the first training steps, so their counts are final long
  // before the run ends (and any scrape after step 1 shows them).
  const src = await open('source');
  const order = new ShuffleSampler(
    src.m.samples.map(([k]) => k),
    { seed: 11 },
  );
  const [truncated, wrongSize, badLabel, unknownIds] = [order.next(), order.next(), order.next(), order.next()];
  const rec = (k: string) => src.w.records.get(k)!;
  const truncatedLength = rec(truncated).image.length;
  await src.w.records.put(truncated, { ...rec(truncated), image: rec(truncated).image.subarray(0, truncatedLength - 20) });
  const { width, height } = rec(wrongSize);
  await src.w.records.put(wrongSize, { ...rec(wrongSize), width: width + 1 });
  await src.w.records.put(badLabel, { ...rec(badLabel), label: Buffer.from('not a png') });
  const label = decodePng(rec(unknownIds).label!, 'label');
  const ids = (label.data as Uint8Array).slice();
  ids.fill(250, 0, 7); // 7 pixels of ID 250
  await src.w.records.put(unknownIds, { ...rec(unknownIds), label: encodePng({ ...label, data: ids }) });
  await src.w.close();
  // Target val (evaluated once, at the end): a missing record and one that is not a record.
  const val = await open('target-val');
  const [missing, garbage] = [val.m.samples[0]![0], val.m.samples[1]![0]];
  await val.w.records.remove(missing);
  await val.w.root.openDB({ name: 'records', encoding: 'binary' }).put(garbage, Buffer.from([0x92, 0x01]));
  await val.w.close();

  const port = await freePort();
  const child = spawn(
    node,
    [
      join(root, 'pipelines/source-only.ts'),
      '--metrics-port',
      String(port),
      '--set',
      `data.source="${join(dir, 'shards/source')}"`,
      '--set',
      `data.target="${join(dir, 'shards/target')}"`,
      '--set',
      `data.targetVal="${join(dir, 'shards/target-val')}"`,
      '--set',
      'data.classBalanced=false',
      '--set',
      'warmup.iterations=3',
      '--set',
      'warmup.maxIter=10',
      '--iterations',
      '3',
      '--out',
      join(dir, 'run'),
    ],
    { cwd: root },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
  });
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const exit = new Promise<number | null>((resolve) => child.on('exit', resolve));
  let done = false;
  void exit.then(() => {
    done = true;
  });
  let scrape = '';
  while (!done) {
    const r = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(2000) }).then(
      (x) => x.text(),
      () => null,
    );
    if (r) scrape = r;
    await Promise.race([exit, new Promise((res) => setTimeout(res, 200))]);
  }
  assert.equal(await exit, 0, stderr.slice(-3000));
  const report = JSON.parse(await readFile(join(dir, 'run/report.json'), 'utf8')) as RunReport;
  assert.deepEqual(report.skipped, {
    'decode-augment': { corrupt_image: 1, wrong_size: 1, corrupt_label: 1, missing_record: 1, corrupt_record: 1 },
  });
  assert.deepEqual(report.repaired, { 'decode-augment': { unknown_label_ids: 1 } });
  const line = (what: string, key: string, file: string, detail: string) =>
    `${what}: stage decode-augment (sample ${key}): ${file}: record '${key}': ${detail}`;
  const logged = stderr
    .split('\n')
    .filter((l) => /^(skipped|repaired) \(/.test(l))
    .sort();
  assert.deepEqual(
    logged,
    [
      line(
        'repaired (unknown_label_ids)',
        unknownIds,
        src.file,
        'label has 7 pixels with unknown IDs (250), expected train IDs 0..18 or 255; set to 255',
      ),
      // one IDAT chunk, then the 12-byte IEND: 20 bytes short ends inside IDAT
      line(
        'skipped (corrupt_image)',
        truncated,
        src.file,
        `image does not decode (truncated: the file ends inside its IDAT chunk (${truncatedLength - 20} bytes, the chunk needs ${truncatedLength - 12}))`,
      ),
      line('skipped (corrupt_label)', badLabel, src.file, 'label: not a readable PNG: bad signature'),
      line('skipped (corrupt_record)', garbage, val.file, 'stored value does not decode (Unexpected end of MessagePack data)'),
      line('skipped (missing_record)', missing, val.file, 'not in the shard (the manifest lists it there)'),
      line('skipped (wrong_size)', wrongSize, src.file, `image decodes to ${width}x${height}x3, the record says ${width + 1}x${height}x3`),
    ].sort(),
  );
  assert.match(stdout, /^source-only  target val mIoU \d+\.\d\d/);
  // Prometheus: the last scrape taken while the run was alive (after its training steps)
  const metric = (name: string, labels: string) => {
    const m = new RegExp(`^${name}\\{${labels}\\} (\\S+)$`, 'm').exec(scrape);
    return m ? Number(m[1]) : undefined;
  };
  const skipped = (reason: string) => metric('spcl_samples_skipped_total', `stage="decode-augment",reason="${reason}"`);
  assert.ok(metric('spcl_train_steps_total', 'phase="warmup"')! >= 1, 'the last scrape follows a training step');
  assert.deepEqual(
    ['corrupt_image', 'wrong_size', 'corrupt_label', 'unknown_label_ids', 'missing_pseudo_label', 'shard_unavailable', 'other'].map(
      skipped,
    ),
    [1, 1, 1, 0, 0, 0, 0],
  );
  assert.equal(metric('spcl_samples_repaired_total', 'stage="decode-augment",reason="unknown_label_ids"'), 1);
  // the target-val skips happen in the final evaluation, at most a few hundred ms before the endpoint closes:
  // the last scrape may or may not hold them (report.json above has them exactly)
  for (const reason of ['missing_record', 'corrupt_record']) assert.ok([0, 1].includes(skipped(reason)!), `${reason}: ${skipped(reason)}`);
  await rm(dir, { recursive: true });
});

test('bad configuration is named: unknown key with a hint, wrong type, missing shard folder, classes mismatch', async () => {
  const q = ['--quick', '--out', join(tmpdir(), 'spcl-never')];
  const cases: [string[], RegExp][] = [
    [[...q, '--set', 'spcl.lamda=0.5'], /spcl: --set spcl\.lamda=0\.5: unknown key 'spcl\.lamda' \(did you mean 'spcl\.lambda'\?\)/],
    [[...q, '--set', 'spcl.lambda="x"'], /spcl: --set spcl\.lambda="x": spcl\.lambda must be a number, got "x" \(string\)/],
    [[...q, '--set', 'data.source="/nowhere"'], /spcl: config: data\.source: \/nowhere\/manifest\.json: not found/],
    [[...q, '--set', 'data.numClasses=16'], /spcl: config: data\.numClasses is 16 but .*manifest\.json \(data\.source\) has 19 classes/],
    [
      ['--preset', 'kitti'],
      /spcl: --preset must be one of synthetic, gta5-cityscapes, synthia-cityscapes, synscapes-cityscapes, got 'kitti'/,
    ],
    [['--preset', 'gta5-cityscapes'], /spcl: config: data\.source is required for preset gta5-cityscapes/],
  ];
  for (const [args, re] of cases) {
    const r = run('spcl.ts', args);
    assert.notEqual(r.status, 0, args.join(' '));
    assert.match(r.stderr, re, args.join(' '));
  }
  const help = run('spcl.ts', ['--help']);
  assert.equal(help.status, 0);
  assert.match(help.stdout, /^usage: node pipelines\/spcl\.ts/);
});

test('every training pipeline takes the common flags: --config, --quick, --backend, --resume (source-only and mean-teacher as spcl)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'spcl-flags-'));
  const bad = join(dir, 'bad.json');
  await writeFile(bad, JSON.stringify({ warmup: { iteratons: 5 } }));
  for (const name of ['spcl', 'source-only', 'mean-teacher']) {
    const cases: [string[], RegExp][] = [
      [
        ['--quick', '--config', bad],
        new RegExp(
          `^${name}: ${bad.replace(/[.]/g, '\\.')}: unknown key 'warmup\\.iteratons' \\(did you mean 'warmup\\.iterations'\\?\\)$`,
          'm',
        ),
      ],
      [['--quick', '--preset', 'gta5-cityscapes'], new RegExp(`^${name}: --quick only applies to the synthetic preset$`, 'm')],
      [['--quick', '--backend', 'tpu'], new RegExp(`^${name}: flags: backend must be one of .*got "tpu"`, 'm')],
    ];
    for (const [args, re] of cases) {
      const r = run(`${name}.ts`, args);
      assert.notEqual(r.status, 0, `${name} ${args.join(' ')}`);
      assert.match(r.stderr, re, `${name} ${args.join(' ')}`);
    }
    const help = run(`${name}.ts`, ['--help']);
    assert.equal(help.status, 0);
    for (const flag of ['--config', '--set', '--backend', '--quick', '--resume', '--phase', '--step-log'])
      assert.ok(help.stdout.includes(flag), `${name} --help lacks ${flag}`);
  }
  await rm(dir, { recursive: true });
});

test('SIGINT stops after the current step with a checkpoint and exit 0; --resume continues from that iteration', async () => {
  const out = await mkdtemp(join(tmpdir(), 'spcl-sigint-'));
  const child = spawn(node, [join(root, 'pipelines/spcl.ts'), '--quick', '--metrics-port', '0', '--out', out], { cwd: root });
  let stderr = '';
  const code = await new Promise<number | null>((resolve) => {
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (/warmup 20\/60/.test(stderr) && !child.killed) child.kill('SIGINT');
    });
    child.on('exit', (c) => resolve(c));
  });
  assert.equal(code, 0, stderr.slice(-2000));
  const stopped = /warmup: stopped at iteration (\d+)\/60/.exec(stderr);
  assert.ok(stopped, stderr.slice(-2000));
  const at = Number(stopped[1]);
  assert.ok(at >= 20 && at < 60, `stopped at ${at}`);
  const latest = JSON.parse(await readFile(join(out, 'checkpoints/latest.json'), 'utf8')) as { phase: string; iteration: number };
  assert.deepEqual([latest.phase, latest.iteration], ['warmup', at]);
  // the rest of the warm-up only: the resume of every later phase is the SIGTERM test's (test/reliability/kill.test.ts)
  const resumed = run('spcl.ts', ['--quick', '--out', out, '--resume', '--phase', 'warmup']);
  assert.equal(resumed.status, 0, resumed.stderr.slice(-2000));
  assert.match(
    resumed.stderr,
    new RegExp(`resume: ckpt-warmup-${String(at).padStart(8, '0')}\\.safetensors \\(phase warmup, iteration ${at}`),
  );
  // the first progress line after resuming is the next multiple of 20 (logEvery), not 20 again
  const first = /warmup (\d+)\/60/.exec(resumed.stderr);
  assert.ok(first && Number(first[1]) > at, `first line after resume: ${first?.[0]}`);
  const report = JSON.parse(await readFile(join(out, 'report.json'), 'utf8')) as RunReport;
  assert.deepEqual(
    report.phases.map((p) => p.phase),
    ['warmup'],
  );
  assert.equal(report.stopped, false);
  await rm(out, { recursive: true });
});

test('checkpoint.select best-val: evaluated at every checkpoint, the phase ends on the best one', async () => {
  const out = await mkdtemp(join(tmpdir(), 'spcl-bestval-'));
  const shards = join(root, 'data/synthetic-quick/shards');
  const r = run('source-only.ts', [
    '--set',
    `data.source="${join(shards, 'source')}"`,
    '--set',
    `data.target="${join(shards, 'target')}"`,
    '--set',
    `data.targetVal="${join(shards, 'target-val')}"`,
    '--set',
    'warmup.iterations=30',
    '--set',
    'warmup.maxIter=40',
    '--iterations',
    '30',
    '--set',
    'checkpoint.every=10',
    '--set',
    'checkpoint.select="best-val"',
    '--out',
    out,
  ]);
  assert.equal(r.status, 0, r.stderr.slice(-2000));
  const evals = [...r.stderr.matchAll(/^warmup(?: (\d+))?: target val mIoU ([\d.]+)/gm)].map((m) => [m[1] ?? 'end', Number(m[2])] as const);
  // checkpoints at 10 and 20 are evaluated, then the end of the phase
  assert.deepEqual(
    evals.map(([at]) => at),
    ['10', '20', 'end'],
  );
  const best = Math.max(...evals.map(([, v]) => v));
  const report = JSON.parse(await readFile(join(out, 'report.json'), 'utf8')) as RunReport;
  assert.ok(
    Math.abs(100 * report.phases[0]!.miou! - best) < 0.006,
    `report ${100 * report.phases[0]!.miou!} vs best ${best} of ${JSON.stringify(evals)}`,
  );
  await rm(out, { recursive: true });
});

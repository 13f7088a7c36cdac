import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PRESETS, checkConfig, computeMatched, mergeConfig, parseSet, quick } from '../../src/recipe/config.ts';

const base = () => PRESETS.synthetic!();

test('every config mistake names the key, the value and what was expected (table)', () => {
  const cases: [string, unknown, RegExp][] = [
    ['unknown top-level key', { epochs: 3 }, /^Error: f: unknown key 'epochs'$/],
    ['unknown key with a hint', { spcl: { lamda: 1 } }, /^Error: f: unknown key 'spcl\.lamda' \(did you mean 'spcl\.lambda'\?\)$/],
    ['unknown nested key', { data: { workerz: 2 } }, /^Error: f: unknown key 'data\.workerz' \(did you mean 'data\.workers'\?\)$/],
    ['section is not an object', { spcl: 3 }, /^Error: f: spcl must be an object, got number$/],
    ['whole config not an object', [1, 2], /^Error: f: the config must be an object, got array$/],
    ['number as string', { spcl: { lambda: '1' } }, /^Error: f: spcl\.lambda must be a number, got "1" \(string\)$/],
    ['boolean as number', { data: { classBalanced: 1 } }, /^Error: f: data\.classBalanced must be a boolean, got 1 \(number\)$/],
    ['array as string', { size: { source: '72x128' } }, /^Error: f: size\.source must be an array, got "72x128" \(string\)$/],
    ['bad size', { size: { target: [64] } }, /^Error: f: size\.target must be \[height, width\], integers >= 16, got \[64\]$/],
    ['tiny size', { size: { eval: [8, 8] } }, /^Error: f: size\.eval must be \[height, width\], integers >= 16, got \[8,8\]$/],
    ['backend', { backend: 'gpu' }, /^Error: f: backend must be one of auto, tensorflow, wasm, cpu, got "gpu"$/],
    ['classes', { data: { numClasses: 21 } }, /^Error: f: data\.numClasses must be 19 or 16, got 21$/],
    ['momentum', { optimizer: { momentum: 1 } }, /^Error: f: optimizer\.momentum must be a number in \[0, 1\) \(the paper: 0\.9\), got 1$/],
    [
      'weight decay',
      { optimizer: { weightDecay: -1e-4 } },
      /^Error: f: optimizer\.weightDecay must be a number >= 0 \(the paper: 5e-4\), got -0\.0001$/,
    ],
    [
      'classifier LR multiple',
      { optimizer: { classifierLrMult: 0 } },
      /^Error: f: optimizer\.classifierLrMult must be a number > 0, got 0$/,
    ],
    [
      'adversarial weight',
      { warmup: { lambdaAdv: -1 } },
      /^Error: f: warmup\.lambdaAdv must be a number >= 0 \(0 = no discriminator, the synthetic preset; the paper: 0\.001\), got -1$/,
    ],
    [
      'contrastive weight',
      { spcl: { lambda: -0.5 } },
      /^Error: f: spcl\.lambda must be a number >= 0 \(the contrastive terms' weight; the paper: 1\), got -0\.5$/,
    ],
    ['workers', { data: { workers: -1 } }, /^Error: f: data\.workers must be an integer >= 0 \(0 = cores\), got -1$/],
    [
      'kernel threads',
      { train: { kernelThreads: 1.5 } },
      /^Error: f: train\.kernelThreads must be an integer in 0\.\.64 \(0 = the cores left to each replica, 1 = one\), got 1\.5$/,
    ],
    ['prefetch', { data: { prefetch: 0 } }, /^Error: f: data\.prefetch must be an integer >= 1, got 0$/],
    ['tasksPerWorker', { data: { tasksPerWorker: 0 } }, /^Error: f: data\.tasksPerWorker must be an integer in 1\.\.64, got 0$/],
    [
      'unknown label IDs policy',
      { data: { unknownLabelIds: 'drop' } },
      /^Error: f: data\.unknownLabelIds must be 'ignore' or 'skip', got "drop"$/,
    ],
    ['retries', { data: { retries: -1 } }, /^Error: f: data\.retries must be an integer >= 0, got -1$/],
    ['retry delay', { data: { retryDelay: -0.5 } }, /^Error: f: data\.retryDelay must be a number of seconds >= 0, got -0\.5$/],
    [
      'backbone',
      { model: { backbone: 'resnet18' } },
      /^Error: f: model\.backbone must be one of resnet101, resnet50, vgg16, small, got "resnet18"$/,
    ],
    ['absent policy', { prototypes: { absent: 'drop' } }, /^Error: f: prototypes\.absent must be 'keep' or 'decay', got "drop"$/],
    ['alpha range', { prototypes: { alpha: 1.5 } }, /^Error: f: prototypes\.alpha must be a number in 0\.\.1, got 1\.5$/],
    ['cap range', { pseudo: { cap: 0 } }, /^Error: f: pseudo\.cap must be a number in \(0, 1\], got 0$/],
    ['bins', { pseudo: { bins: 8 } }, /^Error: f: pseudo\.bins must be an integer >= 16, got 8$/],
    ['batch', { batch: { source: 2.5 } }, /^Error: f: batch\.source must be an integer >= 1, got 2\.5$/],
    ['iterations', { spcl: { iterations: 0 } }, /^Error: f: spcl\.iterations must be an integer >= 1, got 0$/],
    ['learning rate', { ssl: { lr: -1 } }, /^Error: f: ssl\.lr must be a number > 0, got -1$/],
    ['temperature', { spcl: { temperature: 0 } }, /^Error: f: spcl\.temperature must be a number > 0, got 0$/],
    ['checkpoint select', { checkpoint: { select: 'best' } }, /^Error: f: checkpoint\.select must be 'last' or 'best-val', got "best"$/],
    ['eval every', { eval: { every: -5 } }, /^Error: f: eval\.every must be an integer >= 0 \(0 = at phase ends only\), got -5$/],
    ['ssl bn', { ssl: { bn: 'sync' } }, /^Error: f: ssl\.bn must be 'frozen' or 'trainable', got "sync"$/],
    ['seed', { seed: 1.5 }, /^Error: f: seed must be an integer >= 0, got 1\.5$/],
    ['continuous steps', { continuous: { steps: -1 } }, /^Error: f: continuous\.steps must be an integer >= 0 \(0 = off\), got -1$/],
    ['continuous lr', { continuous: { lr: 0 } }, /^Error: f: continuous\.lr must be a number > 0, got 0$/],
    [
      'refresh period',
      { continuous: { refreshEvery: 10.5 } },
      /^Error: f: continuous\.refreshEvery must be an integer >= 0 \(0 = off\), got 10\.5$/,
    ],
    ['poll period', { continuous: { pollSeconds: 0 } }, /^Error: f: continuous\.pollSeconds must be a number of seconds > 0, got 0$/],
    [
      'settle time',
      { continuous: { settleSeconds: -2 } },
      /^Error: f: continuous\.settleSeconds must be a number of seconds >= 0, got -2$/,
    ],
    [
      'source anchor weight',
      { continuous: { sourceWeight: -0.5 } },
      /^Error: f: continuous\.sourceWeight must be a number >= 0 \(0 = no source batch\), got -0\.5$/,
    ],
    ['watch folder type', { continuous: { watch: true } }, /^Error: f: continuous\.watch must be a string, got true \(boolean\)$/],
    [
      'unknown continuous key',
      { continuous: { refreshEvry: 5 } },
      /^Error: f: unknown key 'continuous\.refreshEvry' \(did you mean 'continuous\.refreshEvery'\?\)$/,
    ],
    ['non-finite action', { nonFinite: { action: 'retry' } }, /^Error: f: nonFinite\.action must be 'rollback' or 'stop', got "retry"$/],
    ['non-finite factor', { nonFinite: { lrFactor: 2 } }, /^Error: f: nonFinite\.lrFactor must be a number in \(0, 1\], got 2$/],
    ['non-finite limit', { nonFinite: { limit: 0 } }, /^Error: f: nonFinite\.limit must be an integer >= 1, got 0$/],
    ['warm-up bn', { warmup: { bn: 'batch' } }, /^Error: f: warmup\.bn must be 'frozen' or 'trainable', got "batch"$/],
    ['spcl bn', { spcl: { bn: true } }, /^Error: f: spcl\.bn must be a string, got true \(boolean\)$/],
    ['BN statistics', { model: { bnStats: 'source' } }, /^Error: f: model\.bnStats must be 'all' or 'target', got "source"$/],
    [
      'ssl scale order',
      { ssl: { scale: [1.5, 0.5] } },
      /^Error: f: ssl\.scale must be \[low, high\], numbers > 0 with low <= high, got \[1\.5,0\.5\]$/,
    ],
    ['ssl jitter type', { ssl: { jitter: 'yes' } }, /^Error: f: ssl\.jitter must be a boolean, got "yes" \(string\)$/],
    [
      'ssl source weight',
      { ssl: { sourceWeight: -1 } },
      /^Error: f: ssl\.sourceWeight must be a number >= 0 \(0 = no source batch, the paper\), got -1$/,
    ],
    [
      'ssl pseudo-label weight',
      { ssl: { pseudoWeight: -2 } },
      /^Error: f: ssl\.pseudoWeight must be a number >= 0 \(1 = the paper; 0 = no pseudo-label term\), got -2$/,
    ],
    ['ssl threshold cap', { ssl: { pseudoCap: 1.5 } }, /^Error: f: ssl\.pseudoCap must be a number in \(0, 1\], got 1\.5$/],
  ];
  assert.ok(cases.length >= 20);
  for (const [what, patch, re] of cases) {
    assert.throws(() => mergeConfig(base(), patch as Parameters<typeof mergeConfig>[1], 'f'), re, what);
  }
});

test('cross-field checks: poly horizon, required data folders, best-val needs a validation set', () => {
  const c = mergeConfig(base(), { spcl: { iterations: 500, maxIter: 400 } }, 'f');
  assert.throws(() => checkConfig(c), /^Error: config: spcl\.iterations \(500\) must be <= spcl\.maxIter \(400\), the poly LR horizon$/);
  assert.throws(
    () => checkConfig(PRESETS['gta5-cityscapes']!()),
    /config: data\.source is required for preset gta5-cityscapes \(a dataset folder written by pipelines\/ingest\.ts\)/,
  );
  const noVal = mergeConfig(base(), { data: { targetVal: '' }, checkpoint: { select: 'best-val' } }, 'f');
  assert.throws(() => checkConfig(noVal), /config: checkpoint\.select 'best-val' needs data\.targetVal/);
  checkConfig(base());
  checkConfig(quick(base()));
});

test('cross-field check: with the adversarial warm-up, both crop sizes must leave the discriminator a patch (32 pixels a side), naming the key', () => {
  const adv = (size: Record<string, [number, number]>, lambdaAdv = 0.001) => mergeConfig(base(), { warmup: { lambdaAdv }, size }, 'f');
  assert.throws(
    () => checkConfig(adv({ target: [16, 32] })),
    /^Error: config: size\.target \[16, 32\] is too small for the warm-up's discriminator \(warmup\.lambdaAdv 0\.001 > 0\): its five 4x4 stride-2 convs leave a 0x1 patch map; it needs at least 32 pixels a side \(or warmup\.lambdaAdv 0\)$/,
  );
  assert.throws(
    () => checkConfig(adv({ source: [72, 31] })),
    /^Error: config: size\.source \[72, 31\] is too small .* leave a 2x0 patch map;/,
  );
  // 32 pixels a side is the least: 16, 8, 4, 2, 1
  checkConfig(adv({ source: [32, 32], target: [32, 33] }));
  // no discriminator, no limit beyond the sizes' own rule
  checkConfig(adv({ source: [16, 16], target: [16, 16] }, 0));
});

test('--set parses JSON values, falls back to strings, nests dotted keys; a valid merge changes only that key', () => {
  assert.deepEqual(parseSet('spcl.lambda=0.5'), { spcl: { lambda: 0.5 } });
  assert.deepEqual(parseSet('out=runs/x'), { out: 'runs/x' });
  assert.deepEqual(parseSet('size.source=[90,160]'), { size: { source: [90, 160] } });
  assert.throws(() => parseSet('spcl.lambda'), /--set: expected key=value \(e\.g\. spcl\.lambda=0\.5\), got 'spcl\.lambda'/);
  const merged = mergeConfig(base(), parseSet('spcl.lambda=0.5') as Parameters<typeof mergeConfig>[1], 'f');
  assert.equal(merged.spcl.lambda, 0.5);
  assert.deepEqual({ ...merged, spcl: { ...merged.spcl, lambda: 1 } }, base());
});

test('presets carry the paper settings (REFERENCE 2)', () => {
  const p = PRESETS['gta5-cityscapes']!();
  assert.deepEqual(
    [p.warmup.iterations, p.warmup.maxIter, p.warmup.lr, p.warmup.lrD, p.warmup.lambdaAdv],
    [40_000, 62_500, 2.5e-4, 1e-4, 0.001],
  );
  assert.deepEqual(
    [p.spcl.iterations, p.spcl.maxIter, p.spcl.lambda, p.spcl.temperature, p.spcl.sourceTemperature],
    [40_000, 62_500, 1, 100, 1.8],
  );
  assert.deepEqual([p.ssl.iterations, p.ssl.maxIter, p.ssl.lr, p.ssl.bn], [20_000, 31_250, 5e-4, 'trainable']);
  // the authors' BN semantics and augmentation: frozen BN until self-training, crops at 0.5-1.5 with jitter, no source in SSL
  assert.deepEqual(
    [p.warmup.bn, p.spcl.bn, p.model.bnStats, p.ssl.scale, p.ssl.jitter, p.ssl.sourceWeight, p.ssl.pseudoWeight],
    ['frozen', 'frozen', 'all', [0.5, 1.5], true, 0, 1],
  );
  assert.deepEqual([p.optimizer.momentum, p.optimizer.weightDecay, p.optimizer.classifierLrMult], [0.9, 5e-4, 10]);
  assert.deepEqual([p.prototypes.alpha, p.pseudo.cap, p.ssl.pseudoCap, p.batch.source, p.batch.target], [0.1, 0.9, 0.9, 4, 4]);
  assert.deepEqual([p.size.source, p.size.target, p.model.backbone], [[720, 1280], [512, 1024], 'resnet101']);
  assert.equal(PRESETS['synthia-cityscapes']!().data.numClasses, 16);
});

test('the synthetic preset departs from the paper only in named keys (README: why the old setting failed)', () => {
  const s = PRESETS.synthetic!();
  assert.deepEqual([s.warmup.bn, s.spcl.bn, s.ssl.bn, s.model.bnStats], ['trainable', 'trainable', 'trainable', 'target']);
  assert.deepEqual(
    [s.spcl.temperature, s.ssl.scale, s.ssl.jitter, s.ssl.sourceWeight, s.ssl.pseudoWeight, s.continuous.sourceWeight],
    [0.1, [0.5, 0.5], true, 1, 1, 1],
  );
  assert.deepEqual([s.warmup.lambdaAdv, s.warmup.sourceTemperature, s.spcl.lambda, s.pseudo.cap, s.ssl.pseudoCap], [0, 1.8, 1, 0.9, 0.99]);
  assert.equal(s.model.weights, '');
});

test('source-only is compute-matched: warm-up + spcl + ssl steps, the poly horizon stretched alike', () => {
  const s = PRESETS.synthetic!();
  const m = computeMatched(s);
  assert.deepEqual([m.warmup.iterations, m.warmup.maxIter], [1100, Math.round((1100 * 700) / 500)]);
  assert.deepEqual([computeMatched(s, 30).warmup.iterations, computeMatched(s, 30).warmup.maxIter], [30, 42]);
  assert.throws(() => computeMatched(s, 0), /^Error: --iterations must be an integer >= 1, got 0$/);
});

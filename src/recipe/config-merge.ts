/**
 * Merging and validating a configuration: every key and type of a patch (JSON file, `--set` flag) is
 * checked against the preset it patches, every value against the rules below, and the cross-field
 * constraints by `checkConfig`. Errors name the source, the key, the value and what was expected.
 */
import type { SpclConfig } from './config.ts';
import { discriminatorMaps } from '../ops/model/discriminator.ts';

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** A value rule: [predicate, what is expected (the error message's words)]. */
export type Rule = [(v: unknown) => boolean, string];

/** Rules more than one key uses (plug-in methods' settings too). */
export const POSITIVE_INT: Rule = [(v) => Number.isInteger(v) && (v as number) >= 1, 'an integer >= 1'];
export const POSITIVE: Rule = [(v) => (v as number) > 0 && Number.isFinite(v), 'a number > 0'];
/** A finite number >= 0; `what`: the message's words for it (e.g. 'a number >= 0 (0 = off)'). */
export function nonNegative(what: string): Rule {
  return [(v) => (v as number) >= 0 && Number.isFinite(v), what];
}

const RULES: Record<string, Rule> = {
  backend: [(v) => ['auto', 'tensorflow', 'wasm', 'cpu'].includes(v as string), 'one of auto, tensorflow, wasm, cpu'],
  'data.numClasses': [(v) => v === 19 || v === 16, '19 or 16'],
  'data.workers': [(v) => Number.isInteger(v) && (v as number) >= 0, 'an integer >= 0 (0 = cores)'],
  'train.threads': [
    (v) => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 64,
    'an integer in 0..64 (0 = auto: 1 on wasm, one per core on cpu; 1 = no worker threads)',
  ],
  'train.kernelThreads': [
    (v) => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 64,
    'an integer in 0..64 (0 = the cores left to each replica, 1 = one)',
  ],
  'data.tasksPerWorker': [(v) => Number.isInteger(v) && (v as number) >= 1 && (v as number) <= 64, 'an integer in 1..64'],
  'data.prefetch': [(v) => Number.isInteger(v) && (v as number) >= 1, 'an integer >= 1'],
  'data.unknownLabelIds': [(v) => v === 'ignore' || v === 'skip', "'ignore' or 'skip'"],
  'data.retries': [(v) => Number.isInteger(v) && (v as number) >= 0, 'an integer >= 0'],
  'data.retryDelay': nonNegative('a number of seconds >= 0'),
  'model.backbone': [(v) => ['resnet101', 'resnet50', 'vgg16', 'small'].includes(v as string), 'one of resnet101, resnet50, vgg16, small'],
  'prototypes.absent': [(v) => v === 'keep' || v === 'decay', "'keep' or 'decay'"],
  'prototypes.alpha': [(v) => (v as number) >= 0 && (v as number) <= 1, 'a number in 0..1'],
  'pseudo.cap': [(v) => (v as number) > 0 && (v as number) <= 1, 'a number in (0, 1]'],
  'ssl.pseudoCap': [(v) => (v as number) > 0 && (v as number) <= 1, 'a number in (0, 1]'],
  'pseudo.bins': [(v) => Number.isInteger(v) && (v as number) >= 16, 'an integer >= 16'],
  'checkpoint.select': [(v) => v === 'last' || v === 'best-val', "'last' or 'best-val'"],
  'ssl.bn': [(v) => v === 'frozen' || v === 'trainable', "'frozen' or 'trainable'"],
  'model.bnStats': [(v) => v === 'all' || v === 'target', "'all' or 'target'"],
  'warmup.bn': [(v) => v === 'frozen' || v === 'trainable', "'frozen' or 'trainable'"],
  'spcl.bn': [(v) => v === 'frozen' || v === 'trainable', "'frozen' or 'trainable'"],
  'nonFinite.action': [(v) => v === 'rollback' || v === 'stop', "'rollback' or 'stop'"],
  'nonFinite.lrFactor': [(v) => (v as number) > 0 && (v as number) <= 1, 'a number in (0, 1]'],
  'nonFinite.maxRollbacks': [(v) => Number.isInteger(v) && (v as number) >= 0, 'an integer >= 0'],
  seed: [(v) => Number.isInteger(v) && (v as number) >= 0, 'an integer >= 0'],
};
for (const k of [
  'nonFinite.limit',
  'batch.source',
  'batch.target',
  'warmup.iterations',
  'spcl.iterations',
  'ssl.iterations',
  'warmup.maxIter',
  'spcl.maxIter',
  'ssl.maxIter',
  'logEvery',
  'checkpoint.keep',
  'pseudo.keep',
  'warmup.ndf',
]) {
  RULES[k] = POSITIVE_INT;
}
for (const k of ['continuous.steps', 'continuous.refreshEvery', 'continuous.refreshNewImages', 'continuous.evalEvery']) {
  RULES[k] = [(v) => Number.isInteger(v) && (v as number) >= 0, 'an integer >= 0 (0 = off)'];
}
RULES['continuous.pollSeconds'] = [(v) => (v as number) > 0 && Number.isFinite(v), 'a number of seconds > 0'];
RULES['continuous.settleSeconds'] = nonNegative('a number of seconds >= 0');
RULES['optimizer.momentum'] = [(v) => (v as number) >= 0 && (v as number) < 1, 'a number in [0, 1) (the paper: 0.9)'];
RULES['optimizer.weightDecay'] = nonNegative('a number >= 0 (the paper: 5e-4)');
RULES['optimizer.classifierLrMult'] = POSITIVE;
RULES['warmup.lambdaAdv'] = nonNegative('a number >= 0 (0 = no discriminator, the synthetic preset; the paper: 0.001)');
RULES['spcl.lambda'] = nonNegative("a number >= 0 (the contrastive terms' weight; the paper: 1)");
RULES['ssl.sourceWeight'] = nonNegative('a number >= 0 (0 = no source batch, the paper)');
RULES['ssl.pseudoWeight'] = nonNegative('a number >= 0 (1 = the paper; 0 = no pseudo-label term)');
RULES['continuous.teacherAlpha'] = [(v) => (v as number) >= 0 && (v as number) < 1, 'a number in [0, 1)'];
RULES['continuous.sourceWeight'] = nonNegative('a number >= 0 (0 = no source batch)');
for (const k of ['eval.every', 'checkpoint.every'])
  RULES[k] = [(v) => Number.isInteger(v) && (v as number) >= 0, 'an integer >= 0 (0 = at phase ends only)'];
for (const k of [
  'warmup.lr',
  'warmup.lrD',
  'spcl.lr',
  'ssl.lr',
  'continuous.lr',
  'spcl.temperature',
  'spcl.sourceTemperature',
  'warmup.sourceTemperature',
]) {
  RULES[k] = POSITIVE;
}
RULES['ssl.scale'] = [
  (v) =>
    Array.isArray(v) &&
    v.length === 2 &&
    v.every((n) => typeof n === 'number' && n > 0 && Number.isFinite(n)) &&
    (v[0] as number) <= (v[1] as number),
  '[low, high], numbers > 0 with low <= high',
];
for (const k of ['size.source', 'size.target', 'size.eval']) {
  RULES[k] = [
    (v) => Array.isArray(v) && v.length === 2 && v.every((n) => Number.isInteger(n) && n >= 16),
    '[height, width], integers >= 16',
  ];
}

function typeName(v: unknown): string {
  return Array.isArray(v) ? 'array' : v === null ? 'null' : typeof v;
}

function closest(word: string, options: string[]): string | null {
  const dist = (a: string, b: string) => {
    const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
    for (let j = 1; j <= b.length; j++) d[0]![j] = j;
    for (let i = 1; i <= a.length; i++) {
      for (let j = 1; j <= b.length; j++) {
        d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
      }
    }
    return d[a.length]![b.length]!;
  };
  let best: string | null = null;
  let bestD = 3;
  for (const o of options) {
    const dd = dist(word.toLowerCase(), o.toLowerCase());
    if (dd < bestD) {
      bestD = dd;
      best = o;
    }
  }
  return best;
}

/**
 * Deep-merges `patch` into `base`, checking every key and type against `base`, and values against the
 * built-in rules and `rules` (a plug-in method's, keyed by full path: `methods.<name>.<key>`).
 */
export function mergeConfig(base: SpclConfig, patch: Json, source: string, rules: Readonly<Record<string, Rule>> = {}): SpclConfig {
  const walk = (target: Record<string, unknown>, p: Json, path: string): void => {
    if (typeof p !== 'object' || p === null || Array.isArray(p)) {
      throw new Error(`${source}: ${path || 'the config'} must be an object, got ${typeName(p)}`);
    }
    for (const [key, value] of Object.entries(p)) {
      const full = path ? `${path}.${key}` : key;
      if (!(key in target)) {
        const hint = closest(key, Object.keys(target));
        throw new Error(`${source}: unknown key '${full}'${hint ? ` (did you mean '${path ? `${path}.` : ''}${hint}'?)` : ''}`);
      }
      const current = target[key];
      if (typeof current === 'object' && current !== null && !Array.isArray(current)) {
        walk(current as Record<string, unknown>, value, full);
        continue;
      }
      if (typeName(value) !== typeName(current)) {
        throw new Error(
          `${source}: ${full} must be ${typeName(current) === 'array' ? 'an array' : `a ${typeName(current)}`}, got ${JSON.stringify(value)} (${typeName(value)})`,
        );
      }
      const rule = RULES[full] ?? rules[full];
      if (rule && !rule[0](value)) throw new Error(`${source}: ${full} must be ${rule[1]}, got ${JSON.stringify(value)}`);
      target[key] = value;
    }
  };
  const copy = structuredClone(base) as unknown as Record<string, unknown>;
  walk(copy, patch, '');
  return copy as unknown as SpclConfig;
}

/** Parses `a.b.c=value` (value as JSON when it parses, else a string) into a nested patch. */
export function parseSet(assignment: string): Json {
  const eq = assignment.indexOf('=');
  if (eq <= 0) throw new Error(`--set: expected key=value (e.g. spcl.lambda=0.5), got '${assignment}'`);
  const path = assignment.slice(0, eq).split('.');
  const raw = assignment.slice(eq + 1);
  let value: Json;
  try {
    value = JSON.parse(raw) as Json;
  } catch {
    value = raw;
  }
  let out: Json = value;
  for (let i = path.length - 1; i >= 0; i--) out = { [path[i]!]: out };
  return out;
}

/** Cross-field checks once everything is merged. */
export function checkConfig(cfg: SpclConfig): void {
  for (const phase of ['warmup', 'spcl', 'ssl'] as const) {
    if (cfg[phase].iterations > cfg[phase].maxIter) {
      throw new Error(
        `config: ${phase}.iterations (${cfg[phase].iterations}) must be <= ${phase}.maxIter (${cfg[phase].maxIter}), the poly LR horizon`,
      );
    }
  }
  for (const key of ['source', 'target'] as const) {
    if (!cfg.data[key]) {
      throw new Error(`config: data.${key} is required for preset ${cfg.preset} (a dataset folder written by pipelines/ingest.ts)`);
    }
  }
  if (cfg.checkpoint.select === 'best-val' && !cfg.data.targetVal) {
    throw new Error("config: checkpoint.select 'best-val' needs data.targetVal (a labelled target validation set)");
  }
  if (cfg.warmup.lambdaAdv > 0) {
    // the warm-up's discriminator runs on the source and target predictions at their crop sizes
    for (const key of ['source', 'target'] as const) {
      const [h, w] = cfg.size[key];
      const [ph, pw] = discriminatorMaps([h, w]).at(-1)!;
      if (ph < 1 || pw < 1) {
        throw new Error(
          `config: size.${key} [${h}, ${w}] is too small for the warm-up's discriminator (warmup.lambdaAdv ${cfg.warmup.lambdaAdv} > 0): ` +
            `its five 4x4 stride-2 convs leave a ${ph}x${pw} patch map; it needs at least 32 pixels a side (or warmup.lambdaAdv 0)`,
        );
      }
    }
  }
}

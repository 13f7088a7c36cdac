/**
 * Writes the embedded synthetic benchmark (src/data/synthetic.ts): a GTA5-layout source tree and a
 * Cityscapes-layout target tree under --out, readable by pipelines/ingest.ts. Re-running skips scenes
 * already written.
 *
 *   node pipelines/make-synthetic.ts --out data/synthetic
 */
import { parseCli } from '../src/cli.ts';
import { METRICS_OPTIONS, METRICS_USAGE, startMetrics } from '../src/observe/cli.ts';
import { DEFAULT_SOURCE_SIZE, DEFAULT_TARGET_SIZE, writeSyntheticBenchmark, type SyntheticProgress } from '../src/synthetic/render.ts';

const USAGE = `usage: node pipelines/make-synthetic.ts --out DIR [options]
  --out DIR                  folder to write: DIR/gta5 (source) and DIR/cityscapes (target)
  --seed N                   integer seed of every scene (default 0)
  --source-count N           source scenes, gta5/images/00001.png... (default 300)
  --target-train-count N     target train scenes, cityscapes/leftImg8bit/train (default 300)
  --target-val-count N       target val scenes, cityscapes/leftImg8bit/val (default 100)
  --source-size HxW          source image size (default ${DEFAULT_SOURCE_SIZE.join('x')})
  --target-size HxW          target image size (default ${DEFAULT_TARGET_SIZE.join('x')})
  --target-domain NAME       target (default: the benchmark's look) | night (a second target domain: street
                             lamps, dark, orange-cast, noisy; scenes of their own)
${METRICS_USAGE}
  -h, --help                 this text
Re-running skips scenes already written. Exit code: 0 ok, 1 failed, 2 bad arguments.`;

const cli = parseCli('make-synthetic', USAGE, {
  out: { type: 'string' },
  seed: { type: 'string', default: '0' },
  'source-count': { type: 'string', default: '300' },
  'target-train-count': { type: 'string', default: '300' },
  'target-val-count': { type: 'string', default: '100' },
  'source-size': { type: 'string', default: DEFAULT_SOURCE_SIZE.join('x') },
  'target-size': { type: 'string', default: DEFAULT_TARGET_SIZE.join('x') },
  'target-domain': { type: 'string', default: 'target' },
  ...METRICS_OPTIONS,
});
const values = cli.values;
const usageError: (message: string) => never = cli.fail;

const integer = (flag: string, v: string, min: number, max: number): number => {
  const n = /^-?\d+$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) usageError(`--${flag} must be an integer in ${min}..${max}, got '${v}'`);
  return n;
};
const size = (flag: string, v: string): [number, number] => {
  const m = /^(\d+)x(\d+)$/.exec(v);
  const hw: [number, number] = m ? [Number(m[1]), Number(m[2])] : [0, 0];
  if (!m || hw.some((s) => s < 16 || s > 4096)) usageError(`--${flag} must be HxW with sides in 16..4096 (e.g. 144x256), got '${v}'`);
  return hw;
};

if (values.out === undefined || values.out === '') usageError('--out is required: the folder to write the benchmark to');
const out = values.out;
const opts = {
  seed: integer('seed', values.seed, 0, 4294967295),
  sourceCount: integer('source-count', values['source-count'], 0, 99999),
  targetTrainCount: integer('target-train-count', values['target-train-count'], 0, 999999),
  targetValCount: integer('target-val-count', values['target-val-count'], 0, 999999),
  sourceSize: size('source-size', values['source-size']),
  targetSize: size('target-size', values['target-size']),
  targetDomain: values['target-domain'] as 'target' | 'night',
};
if (opts.targetDomain !== 'target' && opts.targetDomain !== 'night')
  usageError(`--target-domain must be target or night, got '${values['target-domain']}'`);

// A progress line per ~10% of each part, and at its end.
const t0 = performance.now();
const onProgress = (p: SyntheticProgress): void => {
  const step = Math.max(1, Math.ceil(p.total / 10));
  if (p.done % step !== 0 && p.done !== p.total) return;
  const s = (performance.now() - t0) / 1000;
  process.stderr.write(`make-synthetic: ${p.part} ${p.done}/${p.total} (written ${p.written}, skipped ${p.skipped}) ${s.toFixed(1)} s\n`);
};

try {
  const { metrics, server } = await startMetrics(values, (l) => process.stderr.write(`${l}\n`));
  metrics.buildInfo.set(
    { version: process.env.npm_package_version ?? '0.1.0', backend: 'none', phase: 'make-synthetic', preset: 'synthetic' },
    1,
  );
  let last = 0;
  const res = await writeSyntheticBenchmark(out, {
    ...opts,
    onProgress: (p) => {
      metrics.stageItems.inc({ stage: 'make-synthetic' }, Math.max(0, p.done - last));
      last = p.done === p.total ? 0 : p.done;
      onProgress(p);
    },
  });
  await server.close();
  const s = (performance.now() - t0) / 1000;
  process.stderr.write(`make-synthetic: done in ${s.toFixed(1)} s: ${res.written} scenes written, ${res.skipped} already there\n`);
  console.log(JSON.stringify({ source: res.source, target: res.target, counts: res.counts, written: res.written, skipped: res.skipped }));
} catch (err) {
  process.stderr.write(`make-synthetic: ${(err as Error).message}\n`);
  process.exit(1);
}

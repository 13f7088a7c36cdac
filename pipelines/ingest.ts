/**
 * Dataset folders -> LMDB shards + manifest.json (src/data/ingest.ts).
 *
 *   node pipelines/ingest.ts --dataset gta5 --root /data/gta5 --out shards/gta5
 *   node pipelines/ingest.ts --dataset cityscapes --root /data/cityscapes --split val --out shards/cs-val
 */
import { availableParallelism } from 'node:os';
// sharp decodes on libuv's thread pool (default 4 threads): size it to the cores before any I/O.
process.env.UV_THREADPOOL_SIZE ??= String(availableParallelism());

import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { DATASETS, type DatasetName, type LabelPolicy } from '../src/data/adapters.ts';
import { ingestDataset } from '../src/data/ingest.ts';
import { parseCli, parseIntFlag } from '../src/cli.ts';
import { METRICS_OPTIONS, METRICS_USAGE, startMetrics } from '../src/observe/cli.ts';

const USAGE = `usage: node pipelines/ingest.ts --dataset NAME --root DIR --out DIR [options]
  --dataset NAME        ${DATASETS.join(' | ')}
  --root DIR            the dataset's root folder (layouts: see README "Data")
  --out DIR             dataset folder to write (manifest.json + shard-NNNNN.lmdb)
  --split NAME          cityscapes split (train | val); default train
  --classes 19|16       label space; default 19 (synthia: 16)
  --labels MODE         required (default) | optional | none (label-free ingest of target images)
  --shard-index I       this process's part (0-based); default 0
  --shard-count N       number of parts (processes/machines); default 1
  --threads N           decode workers; default: cores (${availableParallelism()})
  --only FILE           ingest only the images listed in FILE (one path per line, as found under --root)
  --shard-file N        write every sample into shard-N instead of this part's shard (no partitioning)
  --key-prefix P        prefix every record key with P (keeps these records apart from other ingests')
  --strict              exit 1 if any sample had a problem
${METRICS_USAGE}
  -h, --help            this text
Re-running skips records already written. Exit code: 0 ok, 1 nothing usable (or --strict and problems), 2 bad arguments.`;

const cli = parseCli('ingest', USAGE, {
  dataset: { type: 'string' },
  root: { type: 'string' },
  out: { type: 'string' },
  split: { type: 'string', default: 'train' },
  classes: { type: 'string' },
  labels: { type: 'string', default: 'required' },
  'shard-index': { type: 'string', default: '0' },
  'shard-count': { type: 'string', default: '1' },
  threads: { type: 'string' },
  only: { type: 'string' },
  'shard-file': { type: 'string' },
  'key-prefix': { type: 'string' },
  strict: { type: 'boolean', default: false },
  ...METRICS_OPTIONS,
});
const values = cli.values;
const usageError: (message: string) => never = cli.fail;
const int = (flag: string, v: string | undefined, min: number): number | undefined => parseIntFlag(v, flag, min, usageError);
if (!values.dataset) usageError('--dataset is required');
if (!DATASETS.includes(values.dataset as DatasetName))
  usageError(`--dataset must be one of ${DATASETS.join(', ')}, got '${values.dataset}'`);
if (!values.root) usageError('--root is required');
if (!values.out) usageError('--out is required');
if (values.classes !== undefined && values.classes !== '19' && values.classes !== '16')
  usageError(`--classes must be 19 or 16, got '${values.classes}'`);
if (!['required', 'optional', 'none'].includes(values.labels))
  usageError(`--labels must be required, optional or none, got '${values.labels}'`);
const shardCount = int('shard-count', values['shard-count'], 1)!;
const shardIndex = int('shard-index', values['shard-index'], 0)!;
if (shardIndex >= shardCount) usageError(`--shard-index ${shardIndex} must be < --shard-count ${shardCount}`);

const shardFile = int('shard-file', values['shard-file'], 0);
if (shardFile !== undefined && shardFile > 99999)
  usageError(`--shard-file must be an integer <= 99999 (5-digit shard names), got '${values['shard-file']}'`);
let only: Set<string> | undefined;
if (values.only !== undefined) {
  try {
    only = new Set(
      (await readFile(values.only, 'utf8'))
        .split('\n')
        .map((l) => l.trim())
        .filter(Boolean)
        .map((l) => resolve(values.root!, l)),
    );
  } catch (err) {
    usageError(`--only ${values.only}: cannot read the list (${(err as Error).message})`);
  }
}

const controller = new AbortController();
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    process.stderr.write(`\ningest: ${sig}, finishing the samples in flight (run again to resume)\n`);
    controller.abort();
  });
}

try {
  const { metrics, server } = await startMetrics(values, (l) => process.stderr.write(`${l}\n`));
  metrics.buildInfo.set(
    { version: process.env.npm_package_version ?? '0.1.0', backend: 'none', phase: 'ingest', preset: values.dataset },
    1,
  );
  const s = await ingestDataset({
    dataset: values.dataset as DatasetName,
    root: values.root,
    out: values.out,
    split: values.split,
    numClasses: values.classes === undefined ? undefined : (Number(values.classes) as 19 | 16),
    labels: values.labels as LabelPolicy,
    shardIndex,
    shardCount,
    threads: int('threads', values.threads, 1),
    shardFile,
    keyPrefix: values['key-prefix'],
    select: only && ((sample) => only.has(resolve(sample.image))),
    signal: controller.signal,
    onResult: (outcome, seconds) => {
      if (outcome === 'written') {
        metrics.stageItems.inc({ stage: 'ingest' });
        metrics.stageDuration.observe({ stage: 'ingest' }, seconds);
      } else {
        metrics.samplesSkipped.inc({ stage: 'ingest', reason: outcome.replace(/-/g, '_') });
      }
    },
  });
  await server.close();
  const kinds = Object.entries(s.problems)
    .map(([k, n]) => `${k} ${n}`)
    .join(', ');
  const unknown = s.unknownLabelIds.files
    ? `, labels with unknown IDs ${s.unknownLabelIds.files} (${s.unknownLabelIds.pixels} pixels set to 255)`
    : '';
  console.log(
    `ingest: written ${s.written}, already there ${s.existing}, problems ${s.problemCount}${kinds ? ` (${kinds})` : ''}${unknown}; ` +
      `shard ${s.shard}; dataset total ${s.manifest?.count ?? 0} records${s.aborted ? '; interrupted (run again to resume)' : ''}`,
  );
  if (s.written + s.existing === 0) {
    process.stderr.write(`ingest: nothing usable found under ${values.root} for dataset ${values.dataset}\n`);
    process.exit(1);
  }
  if (values.strict && s.problemCount > 0) process.exit(1);
} catch (err) {
  process.stderr.write(`ingest: ${(err as Error).message}\n`);
  process.exit(1);
}

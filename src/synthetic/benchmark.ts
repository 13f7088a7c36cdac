/**
 * The embedded synthetic benchmark as a run uses it: rendered (render.ts) and ingested into shards on first
 * use, in a folder of the process's own renamed into place when complete.
 */
import { mkdir, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { ingestDataset } from '../data/ingest.ts';
import { exists } from '../io/exists.ts';
import type { SpclConfig } from '../recipe/config.ts';
import { writeSyntheticBenchmark } from './render.ts';

/**
 * Generates and ingests the synthetic benchmark under `root` (data/synthetic) unless it is there. The
 * work happens in a folder of this process's own that is renamed into place when complete: concurrent
 * runs on a fresh checkout (CI) never read a half-written dataset; the slower one discards its copy.
 */
export interface SyntheticDataOptions {
  /** Scene seed (the benchmark renders 0). */
  sceneSeed?: number;
  /** Look of the target scenes ('night': the second target domain). */
  targetDomain?: 'target' | 'night';
  /** Only the source shards (pretraining data). */
  sourceOnly?: boolean;
}

export async function prepareSynthetic(
  root: string,
  counts: { source: number; targetTrain: number; targetVal: number },
  log: (l: string) => void,
  opts: SyntheticDataOptions = {},
): Promise<{ source: string; target: string; targetVal: string }> {
  const shardsOf = (dir: string) => ({
    source: join(dir, 'shards/source'),
    target: join(dir, 'shards/target'),
    targetVal: join(dir, 'shards/target-val'),
  });
  const shards = shardsOf(root);
  const wanted = opts.sourceOnly ? [shards.source] : Object.values(shards);
  const complete = async () => (await Promise.all(wanted.map((d) => exists(join(d, 'manifest.json'))))).every(Boolean);
  if (await complete()) return shards;
  log(
    `data: generating the synthetic benchmark in ${root} (${counts.source} source, ${counts.targetTrain} + ${counts.targetVal} target images)`,
  );
  const work = `${root}.tmp-${process.pid}`;
  await rm(work, { recursive: true, force: true });
  const raw = await writeSyntheticBenchmark(join(work, 'raw'), {
    seed: opts.sceneSeed ?? 0,
    sourceCount: counts.source,
    targetTrainCount: counts.targetTrain,
    targetValCount: counts.targetVal,
    targetDomain: opts.targetDomain,
  });
  const quiet = { log: () => {}, progressStream: null };
  const out = shardsOf(work);
  await ingestDataset({ ...quiet, dataset: 'gta5', root: raw.source, out: out.source });
  if (!opts.sourceOnly) {
    await ingestDataset({ ...quiet, dataset: 'cityscapes', root: raw.target, out: out.target, split: 'train', labels: 'optional' });
    await ingestDataset({ ...quiet, dataset: 'cityscapes', root: raw.target, out: out.targetVal, split: 'val' });
  }
  await mkdir(dirname(root), { recursive: true });
  try {
    await rename(work, root);
    log(`data: ingested into ${join(root, 'shards')}`);
  } catch {
    // another run finished first (the rename fails on a non-empty folder): use its copy
    await rm(work, { recursive: true, force: true });
    if (!(await complete())) throw new Error(`data: ${root} exists but is incomplete; delete it to generate the benchmark again`);
  }
  return shards;
}

/**
 * Points the dataset folders of `cfg` that still name the embedded benchmark (`data/synthetic/...`) at
 * `where` (generated and ingested there on first use); folders set to other data are left alone.
 */
export async function useSyntheticData(
  cfg: SpclConfig,
  where: { root: string; counts: { source: number; targetTrain: number; targetVal: number } },
  log: (l: string) => void,
): Promise<void> {
  const keys = (['source', 'target', 'targetVal'] as const).filter((k) => cfg.data[k].startsWith('data/synthetic/'));
  if (cfg.preset !== 'synthetic' || keys.length === 0) return;
  const shards = await prepareSynthetic(where.root, where.counts, log);
  for (const k of keys) cfg.data[k] = shards[k];
}

/**
 * Builds the synthetic preset's starting point: the role ImageNet weights play in the paper. A small
 * DeepLab-v2 is trained from scratch with labels on source-style scenes of their own (scene seed 1, so
 * none of them is in the benchmark, which renders seed 0), with trainable BN, and its backbone is written
 * as PyTorch-layout safetensors (no ASPP: the recipe trains its classifier from random, as the paper's).
 * No target image is seen. The repository ships the result (`model.weights` of the synthetic preset);
 * this command reproduces it (wasm is deterministic for a seed):
 *
 *   node pipelines/pretrain.ts            # writes assets/synthetic-start.safetensors
 */
import { availableParallelism } from 'node:os';
process.env.UV_THREADPOOL_SIZE ??= String(availableParallelism());

import { mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { parseCli } from '../src/cli.ts';
import { PRESETS, mergeConfig, parseSet } from '../src/recipe/config.ts';
import { runRecipe } from '../src/recipe/run.ts';
import { prepareSynthetic } from '../src/synthetic/benchmark.ts';
import { SOURCE_ONLY } from '../src/methods/registry.ts';
import { applyModelState, disposeCheckpoint, loadCheckpoint, saveModelSafetensors } from '../src/io/weights.ts';
import { deeplabV2 } from '../src/ops/model/deeplab.ts';
import { ParamStore } from '../src/ops/model/params.ts';
import { CheckpointStore } from '../src/stages/checkpoint.ts';

const USAGE = `usage: node pipelines/pretrain.ts [options]
  --out FILE         backbone weights to write (default assets/synthetic-start.safetensors)
  --images N         pretraining scenes to render (default 1000; scene seed 1, disjoint from the benchmark)
  --iterations N     training steps, batch 4 (default 3000)
  --run DIR          run folder for checkpoints (default runs/pretrain; --resume-safe like any run)
  --set KEY=VALUE    config override of the training run, repeatable
  -h, --help         this text
Takes about 10 minutes on 2 cores (wasm).`;

const cli = parseCli('pretrain', USAGE, {
  out: { type: 'string', default: 'assets/synthetic-start.safetensors' },
  images: { type: 'string', default: '1000' },
  iterations: { type: 'string', default: '3000' },
  run: { type: 'string', default: 'runs/pretrain' },
  set: { type: 'string', multiple: true, default: [] },
});
const args = cli.values;
const images = Number(args.images);
const iterations = Number(args.iterations);
if (!Number.isInteger(images) || images < 4) cli.fail(`--images must be an integer >= 4, got '${args.images}'`);
if (!Number.isInteger(iterations) || iterations < 1) cli.fail(`--iterations must be an integer >= 1, got '${args.iterations}'`);
const log = (line: string) => process.stderr.write(`${line}\n`);

try {
  const data = await prepareSynthetic('data/synthetic-pretrain', { source: images, targetTrain: 0, targetVal: 0 }, log, {
    sceneSeed: 1,
    sourceOnly: true,
  });
  let cfg = mergeConfig(
    PRESETS.synthetic!(),
    {
      out: args.run,
      // the source set stands in as "target": the source-only warm-up never reads its labels or trains on it
      data: { source: data.source, target: data.source, targetVal: '' },
      model: { weights: '' },
      warmup: { lambdaAdv: 0, bn: 'trainable', iterations, maxIter: Math.round(iterations * 1.4) },
      checkpoint: { every: 500, keep: 1 },
      logEvery: 100,
    },
    'pretrain',
  );
  for (const s of args.set) cfg = mergeConfig(cfg, parseSet(s), `--set ${s}`);
  const store = new CheckpointStore(join(cfg.out, 'checkpoints'), 1);
  const before = await store.latest();
  // an interrupted run resumes where it stopped; a finished one is only exported again
  if (!before || before.phase !== 'warmup' || before.iteration < iterations) {
    const report = await runRecipe({ cfg, recipe: SOURCE_ONLY, resume: true, events: { log } });
    if (report.stopped) process.exit(0);
  }
  const latest = await store.latest();
  if (!latest) throw new Error(`no checkpoint in ${store.dir} after training`);
  const state = await loadCheckpoint(join(store.dir, latest.file));
  const model = deeplabV2({ backbone: cfg.model.backbone, numClasses: cfg.data.numClasses });
  try {
    applyModelState(model, state.model, { source: latest.file });
    // backbone only, like ImageNet weights: the recipe's ASPP starts from its own initialisation
    const backbone = new ParamStore(0);
    for (const [name, p] of model.store.params) if (p.group === 'backbone') backbone.params.set(name, p);
    await mkdir(dirname(args.out), { recursive: true });
    await saveModelSafetensors({ store: backbone }, args.out);
  } finally {
    disposeCheckpoint(state);
    model.dispose();
  }
  log(`pretrain: wrote ${args.out} (backbone of ${latest.file}: ${iterations} steps on ${images} scenes)`);
} catch (err) {
  log(`pretrain: ${(err as Error).message}`);
  process.exit(1);
}

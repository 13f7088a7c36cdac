/**
 * Evaluates a checkpoint on a labelled dataset folder (REFERENCE 7): mIoU, per-class IoU, tail-class
 * mIoU (19 classes) or mIoU* (16), CCD on the first images; optional colour prediction PNGs.
 *
 *   node pipelines/evaluate.ts --checkpoint runs/synthetic/checkpoints/ckpt-ssl-00000300.safetensors --data data/synthetic/shards/target-val
 * `--adapt-bn DIR` first re-estimates the BN running statistics on DIR's images (AdaBN): the cheapest
 * adaptation, and the baseline an adaptation method has to beat.
 */
import { availableParallelism } from 'node:os';
process.env.UV_THREADPOOL_SIZE ??= String(availableParallelism());

import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import sharp from 'sharp';
import { colourise } from '../src/data/palette.ts';
import { selectBackend, type BackendRequest } from '../src/ops/backend.ts';
import { METRICS_OPTIONS, METRICS_USAGE, startMetrics } from '../src/observe/cli.ts';
import { adaptBatchNorm } from '../src/stages/adapt-bn.ts';
import { evaluate } from '../src/stages/evaluate.ts';
import { openDataset } from '../src/data/reader.ts';
import { modelFromCheckpoint, pass } from '../src/recipe/tools.ts';
import { parseCli, parseIntFlag, parseSize } from '../src/cli.ts';

const USAGE = `usage: node pipelines/evaluate.ts --checkpoint FILE --data DIR [options]
  --checkpoint FILE   a checkpoint written by pipelines/spcl.ts
  --data DIR          a labelled dataset folder written by pipelines/ingest.ts (e.g. Cityscapes val)
  --size HxW          input size (default: the checkpoint's evaluation size)
  --ccd N             class-centre distance over the first N images (default 100, 0 = off)
  --png DIR           write colour prediction PNGs there
  --out FILE          write the results as JSON
  --adapt-bn DIR      before evaluating, re-estimate BN running statistics on DIR's images (AdaBN; an
                      unlabelled target set such as data/synthetic/shards/target); trainable-BN checkpoints only
  --adapt-size HxW    image size for --adapt-bn (default: the checkpoint's target training size)
  --backend NAME      auto | tensorflow | wasm | cpu (default auto)
  --kernel-threads N  threads of the wasm backend's kernels (default: cores, ${availableParallelism()}; the same
                      results at any count)
${METRICS_USAGE}
  -h, --help          this text`;

const cli = parseCli('evaluate', USAGE, {
  checkpoint: { type: 'string' },
  data: { type: 'string' },
  size: { type: 'string' },
  ccd: { type: 'string', default: '100' },
  png: { type: 'string' },
  out: { type: 'string' },
  backend: { type: 'string', default: 'auto' },
  'kernel-threads': { type: 'string' },
  ...METRICS_OPTIONS,
  'adapt-bn': { type: 'string' },
  'adapt-size': { type: 'string' },
});
const args = cli.values;
const usageError: (message: string) => never = cli.fail;
if (!args.checkpoint) usageError('--checkpoint is required');
if (!args.data) usageError('--data is required');
const size = args.size === undefined ? null : parseSize(args.size, 'size', '512x1024', usageError);
const adaptSize = args['adapt-size'] === undefined ? null : parseSize(args['adapt-size'], 'adapt-size', '512x1024', usageError);
if (adaptSize && !args['adapt-bn']) usageError('--adapt-size needs --adapt-bn');
const ccd = Number(args.ccd);
if (!Number.isInteger(ccd) || ccd < 0) usageError(`--ccd must be an integer >= 0, got '${args.ccd}'`);
const kernelThreads = parseIntFlag(args['kernel-threads'], 'kernel-threads', 1, usageError) ?? availableParallelism();

try {
  const backend = await selectBackend(args.backend as BackendRequest, { wasmThreads: kernelThreads });
  const { metrics, server } = await startMetrics(args, (l) => process.stderr.write(`${l}\n`));
  metrics.buildInfo.set({ version: process.env.npm_package_version ?? '0.1.0', backend, phase: 'evaluate', preset: 'none' }, 1);
  const { model, meta } = await modelFromCheckpoint(args.checkpoint);
  const dataset = await openDataset(args.data);
  if (dataset.manifest.labelled === 0)
    throw new Error(
      `${args.data} has no labels (${dataset.manifest.count} images, ingested with --labels none?): evaluate needs ground truth. ` +
        `For predictions on unlabelled images use pipelines/segment.ts --checkpoint ${args.checkpoint} --input IMAGES --out DIR`,
    );
  if (dataset.manifest.numClasses !== meta.numClasses)
    throw new Error(`${args.data} has ${dataset.manifest.numClasses} classes, the checkpoint ${meta.numClasses}`);
  const evalSize: [number, number] = size ?? meta.size?.eval ?? [512, 1024];
  if (args['adapt-bn']) {
    if (model.batchNorm !== 'trainable')
      throw new Error(
        `--adapt-bn: ${args.checkpoint} has '${model.batchNorm}' BN; only a checkpoint with trainable BN has running statistics to adapt`,
      );
    const adaptSet = await openDataset(args['adapt-bn']);
    const at: [number, number] = adaptSize ?? meta.size?.target ?? evalSize;
    const r = await pass(adaptSet, { resize: at, resizeLabel: false }, 4, undefined, () =>
      adaptBatchNorm({ model, release: (b) => b.release() }),
    );
    process.stderr.write(`adapt-bn: BN running statistics re-estimated on ${r.images} images of ${args['adapt-bn']} at ${at.join('x')}\n`);
  }
  const pngs: Promise<unknown>[] = [];
  const report = await pass(dataset, { resize: evalSize, resizeLabel: false }, 4, undefined, () =>
    evaluate({
      model,
      numClasses: meta.numClasses,
      ccdImages: ccd,
      release: (b) => b.release(),
      onPredictions: args.png
        ? (keys, pred, h, w) =>
            keys.forEach((key, i) => {
              const file = join(args.png!, `${key}.png`);
              pngs.push(
                mkdir(dirname(file), { recursive: true }).then(async () =>
                  writeFile(
                    file,
                    await sharp(colourise(pred.subarray(i * h * w, (i + 1) * h * w)), { raw: { width: w, height: h, channels: 3 } })
                      .png()
                      .toBuffer(),
                  ),
                ),
              );
            })
        : undefined,
    }),
  );
  await Promise.all(pngs);
  metrics.evalMiou.set({ split: 'eval' }, report.miou);
  report.classIoU.forEach((v, k) => metrics.evalClassIou.set({ class: dataset.manifest.classNames[k]! }, v));
  metrics.evalLastSuccess.set(Date.now() / 1000);
  metrics.stageItems.inc({ stage: 'evaluate' }, report.images);
  const names = dataset.manifest.classNames;
  const lines = [
    `mIoU ${(100 * report.miou).toFixed(2)}  over ${report.images} images at ${evalSize.join('x')}`,
    report.tailMiou !== null ? `tail mIoU ${(100 * report.tailMiou).toFixed(2)}` : `mIoU* (13) ${(100 * report.miou13!).toFixed(2)}`,
    ...names.map(
      (n, k) =>
        `  ${n.padEnd(14)} IoU ${(100 * report.classIoU[k]!).toFixed(2).padStart(6)}${report.ccd ? `  CCD ${Number.isNaN(report.ccd[k]) ? '   -' : report.ccd[k]!.toFixed(3)}` : ''}`,
    ),
  ];
  console.log(lines.join('\n'));
  if (args.out)
    await writeFile(
      args.out,
      `${JSON.stringify({ checkpoint: args.checkpoint, data: args.data, size: evalSize, ...report, classNames: names }, (_, v) => (Number.isNaN(v) ? null : v), 1)}\n`,
    );
  model.dispose();
  await server.close();
} catch (err) {
  const message = (err as Error).message;
  process.stderr.write(`${message.startsWith('evaluate: ') ? '' : 'evaluate: '}${message}\n`);
  process.exit(1);
}

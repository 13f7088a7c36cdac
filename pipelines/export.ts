/**
 * Exports a checkpoint's model for use elsewhere (src/io/export.ts): a PyTorch state dict plus its
 * description, or a tfjs folder that `loadExportedModel` rebuilds in Node or a browser.
 *
 *   node pipelines/export.ts --checkpoint runs/synthetic/checkpoints/ckpt-ssl-00000300.safetensors --out deeplab.safetensors
 */
import { exists } from '../src/io/exists.ts';
import { EXPORT_FORMATS, exportPytorch, exportTfjs, type ExportFormat, type ExportWritten } from '../src/io/export.ts';
import { selectBackend } from '../src/ops/backend.ts';
import { modelFromCheckpoint } from '../src/recipe/tools.ts';
import { parseCli } from '../src/cli.ts';

const USAGE = `usage: node pipelines/export.ts --checkpoint FILE --out PATH [--format pytorch|tfjs]
  --checkpoint FILE   a checkpoint written by a training pipeline (pipelines/spcl.ts, ...)
  --out PATH          pytorch: NAME.safetensors, written with NAME.json beside it
                      tfjs: a folder, written with model.json and group1-shardNofM.bin
  --format F          pytorch (default): float32 state dict, OIHW, torchvision names under
                        'backbone.' and the ASPP under 'classifier.', for load_state_dict(strict=True);
                        NAME.json describes the net (backbone, strides, dilations, BN mode and eps,
                        classes, input normalisation: RGB, (pixel / 255 - mean) / std)
                      tfjs: tfjs weights manifest + shards (HWIO, our names) with the same description;
                        load with loadExportedModel(folder) from src/io/exported-model.ts
                        (or loadExportedModel(tf.io.http(url + '/model.json')) in a browser)
  -h, --help          this text`;

const cli = parseCli('export', USAGE, {
  checkpoint: { type: 'string' },
  out: { type: 'string' },
  format: { type: 'string', default: 'pytorch' },
});
const { checkpoint, out, format } = cli.values;
const fail: (message: string) => never = cli.fail;
if (!checkpoint) fail('--checkpoint is required');
if (!out) fail('--out is required');
if (!EXPORT_FORMATS.includes(format as ExportFormat)) fail(`unknown --format '${format}', expected one of ${EXPORT_FORMATS.join(', ')}`);
if (format === 'pytorch' && !out.endsWith('.safetensors'))
  fail(`--out must name a .safetensors file for --format pytorch (NAME.json is written beside it), got '${out}'`);

const size = (bytes: number) => (bytes < 2 ** 20 ? `${(bytes / 1024).toFixed(1)} KiB` : `${(bytes / 2 ** 20).toFixed(2)} MiB`);

try {
  if (!(await exists(checkpoint))) throw new Error(`checkpoint ${checkpoint} does not exist`);
  // Export only copies and transposes tensors: the plain CPU backend is exact and starts fastest.
  await selectBackend('cpu', { log: () => {} });
  const { model, meta } = await modelFromCheckpoint(checkpoint);
  const source = { checkpoint, phase: meta.phase, iteration: meta.iteration, size: meta.size };
  const written: ExportWritten = format === 'pytorch' ? await exportPytorch(model, out, source) : await exportTfjs(model, out, source);
  model.dispose();
  const d = written.description;
  const files = written.files.map((f) => `${f.path} (${size(f.bytes)})`).join(', ');
  process.stderr.write(
    `export: wrote ${files}: ${d.backbone} DeepLab-v2, ${d.numClasses} classes, ${written.tensors} tensors (${d.weights.layout} float32), ` +
      `${d.batchNorm.mode} BN, from ${checkpoint} (phase ${meta.phase ?? '?'}, iteration ${meta.iteration ?? '?'})\n`,
  );
} catch (err) {
  process.stderr.write(`export: ${(err as Error).message}\n`);
  process.exit(1);
}

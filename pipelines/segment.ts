/**
 * Segments a user's own images with a checkpoint: label maps (Cityscapes label IDs or train IDs), colour
 * overlays and optional confidence maps, mirroring the inputs' relative paths (src/stages/segment-images.ts).
 * Also writes a pseudo-label generation as PNGs (src/data/pseudo-label-pngs.ts).
 *
 *   node pipelines/segment.ts --checkpoint runs/synthetic/checkpoints/ckpt-ssl-00000300.safetensors --input photos/ --out predictions/
 *   node pipelines/segment.ts --pseudo-labels runs/synthetic/pseudo-labels --out pl-pngs/
 */
import { availableParallelism } from 'node:os';
process.env.UV_THREADPOOL_SIZE ??= String(availableParallelism());

import { lastValueFrom } from 'rxjs';
import { parseCli, parseIntFlag, parseSize } from '../src/cli.ts';
import { createProgress } from '../src/graph/progress.ts';
import { ImageFault, ImageFilePool, IMAGE_EXTENSIONS, listImageFiles, type ImageListing } from '../src/data/image-files.ts';
import { trainToCityscapesIds } from '../src/data/labels.ts';
import { writeGenerationPngs } from '../src/data/pseudo-label-pngs.ts';
import { BACKEND_REQUESTS, selectBackend, type BackendRequest } from '../src/ops/backend.ts';
import { modelFromCheckpoint } from '../src/recipe/tools.ts';
import { segmentImages, type SegmentSummary } from '../src/stages/segment-images.ts';

const USAGE = `usage: node pipelines/segment.ts --checkpoint FILE --input DIR|FILE... --out DIR [options]
       node pipelines/segment.ts --pseudo-labels DIR --out DIR [--generation N]
  --checkpoint FILE     a checkpoint written by pipelines/spcl.ts (or source-only.ts)
  --input PATH...       image folders (searched recursively for ${IMAGE_EXTENSIONS.join(' ')}) and/or image files;
                        more paths may follow (a shell glob), or repeat --input
  --out DIR             output folder: labels/, overlay/, confidence/, each mirroring the inputs' relative
                        paths (a folder's files relative to it, a file by its name) as .png
  --size HxW            model input size (default: the checkpoint's evaluation size); outputs are always at
                        each image's own size
  --ids KIND            label IDs written: cityscapes (default; Cityscapes label IDs, 7 road ... 33 bicycle,
                        what Cityscapes' scripts read) | train (train IDs 0..K-1)
  --no-overlay          no overlay/ (the class colours blended over the image)
  --alpha A             colour opacity in the overlay (default 0.5)
  --confidence          also write confidence/: the max softmax probability x 255 per pixel, 8-bit grey
  --batch N             images per model batch (default 4)
  --threads N           decode/encode workers (default: cores, ${availableParallelism()})
  --backend NAME        auto | tensorflow | wasm | cpu (default auto)
  --kernel-threads N    threads of the wasm backend's kernels (default: cores; the same results at any count)
  --pseudo-labels DIR   instead: write a pseudo-label generation (pipelines/pseudo-label.ts --out, or a run's
                        pseudo-labels folder) as labels/KEY.png (train IDs, 255 = ignore) and colour/KEY.png
  --generation N        with --pseudo-labels: that generation instead of the current one
  -h, --help            this text
Unreadable files are named on stderr with the reason and skipped. Exit code: 0 when at least one image was
written, 1 when none was (or on an error), 2 bad arguments.`;

const cli = parseCli(
  'segment',
  USAGE,
  {
    checkpoint: { type: 'string' },
    input: { type: 'string', multiple: true },
    out: { type: 'string' },
    size: { type: 'string' },
    ids: { type: 'string', default: 'cityscapes' },
    'no-overlay': { type: 'boolean', default: false },
    alpha: { type: 'string', default: '0.5' },
    confidence: { type: 'boolean', default: false },
    batch: { type: 'string', default: '4' },
    threads: { type: 'string' },
    backend: { type: 'string', default: 'auto' },
    'kernel-threads': { type: 'string' },
    'pseudo-labels': { type: 'string' },
    generation: { type: 'string' },
  },
  { positionals: true },
);
const args = cli.values;
const usageError: (message: string) => never = cli.fail;
const int = (flag: string, v: string | undefined, min: number): number | undefined => parseIntFlag(v, flag, min, usageError);
const log = (line: string) => process.stderr.write(`${line}\n`);
if (!args.out) usageError('--out is required');
const out = args.out!;

if (args['pseudo-labels'] !== undefined) {
  if (args.checkpoint || args.input || cli.positionals.length)
    usageError('--pseudo-labels writes a stored generation; it takes no --checkpoint or --input');
  try {
    const progress = { bar: null as ReturnType<typeof createProgress> | null };
    const s = await writeGenerationPngs({
      dir: args['pseudo-labels'],
      generation: int('generation', args.generation, 1),
      out,
      onTotal: (n) => (progress.bar = createProgress({ label: 'segment', total: n })),
      onWritten: () => progress.bar?.tick(),
    });
    progress.bar?.done();
    log(
      `segment: generation ${s.generation} (${s.file}): ${s.written} pseudo-label maps -> ${out}/labels (train IDs, 255 = ignore), ${out}/colour`,
    );
    process.exit(s.written > 0 ? 0 : 1);
  } catch (err) {
    log(`segment: ${(err as Error).message}`);
    process.exit(1);
  }
}

if (args.generation !== undefined) usageError('--generation needs --pseudo-labels');
if (!args.checkpoint) usageError('--checkpoint is required');
const inputs = [...(args.input ?? []), ...cli.positionals];
if (!args.input) usageError('--input is required');
const size = args.size === undefined ? null : parseSize(args.size, 'size', '512x1024', usageError);
if (args.ids !== 'cityscapes' && args.ids !== 'train') usageError(`--ids must be cityscapes or train, got '${args.ids}'`);
const alpha = Number(args.alpha);
if (!(alpha >= 0 && alpha <= 1)) usageError(`--alpha must be a number in [0, 1], got '${args.alpha}'`);
const batchSize = int('batch', args.batch, 1)!;
const threads = int('threads', args.threads, 1);
const kernelThreads = int('kernel-threads', args['kernel-threads'], 1) ?? availableParallelism();
if (!BACKEND_REQUESTS.includes(args.backend as BackendRequest))
  usageError(`--backend must be one of ${BACKEND_REQUESTS.join(', ')}, got '${args.backend}'`);
let listing: ImageListing;
try {
  listing = await listImageFiles(inputs);
} catch (err) {
  usageError(`--input ${(err as Error).message}`);
}

const ignoredLine = (paths: string[]) =>
  `${paths.length} other file${paths.length === 1 ? '' : 's'} ignored (not ${IMAGE_EXTENSIONS.join('/')}): ` +
  `${paths.slice(0, 3).join(', ')}${paths.length > 3 ? ', ...' : ''}`;

try {
  if (listing.ignored.length) log(`segment: ${ignoredLine(listing.ignored)}`);
  if (!listing.files.length) throw new Error(`no image files in ${inputs.join(', ')}; nothing written`);
  await selectBackend(args.backend as BackendRequest, { wasmThreads: kernelThreads });
  const { model, meta } = await modelFromCheckpoint(args.checkpoint!);
  const inputSize: [number, number] = size ?? meta.size?.eval ?? [512, 1024];
  const labelLut = args.ids === 'train' ? Uint8Array.from({ length: 256 }, (_, i) => i) : trainToCityscapesIds(meta.numClasses);
  log(
    `segment: ${listing.files.length} images at ${inputSize.join('x')} with ${args.checkpoint} (${meta.backbone}, ${meta.numClasses} classes) -> ${out}`,
  );
  const progress = createProgress({ label: 'segment', total: listing.files.length });
  const pool = new ImageFilePool({ threads });
  let summary: SegmentSummary;
  try {
    summary = await lastValueFrom(
      segmentImages({
        files: listing.files,
        pool,
        model,
        size: inputSize,
        batchSize,
        outputs: {
          dir: out,
          numClasses: meta.numClasses,
          labelLut,
          overlay: !args['no-overlay'],
          alpha,
          confidence: args.confidence,
        },
        onSkip: (e) => log(`skipped (${e.reason}): ${e.cause instanceof ImageFault ? e.cause.message : e.message}`),
        onFinished: () => progress.tick(),
      }),
    );
  } finally {
    progress.done();
    await pool.close();
    model.dispose();
  }
  const skipped = Object.values(summary.skipped).reduce((a, n) => a + n, 0);
  const why = Object.entries(summary.skipped)
    .map(([reason, n]) => `${n} ${reason}`)
    .join(', ');
  const what = [`labels/ (${args.ids === 'train' ? 'train IDs' : 'Cityscapes label IDs'})`];
  if (!args['no-overlay']) what.push('overlay/');
  if (args.confidence) what.push('confidence/');
  log(
    `segment: ${summary.written} written, ${skipped} skipped${skipped ? ` (${why})` : ''}` +
      `${listing.ignored.length ? `, ${listing.ignored.length} other file${listing.ignored.length === 1 ? '' : 's'} ignored` : ''}; ${out}: ${what.join(', ')}`,
  );
  if (summary.written === 0) throw new Error(`no image was written: all ${summary.listed} files were skipped (reasons above)`);
} catch (err) {
  log(`segment: ${(err as Error).message}`);
  process.exit(1);
}

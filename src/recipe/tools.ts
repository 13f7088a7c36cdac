/**
 * What the stand-alone tools share: a model rebuilt from one of our checkpoints (its metadata names the
 * backbone and classes), and single passes of the evaluation and pseudo-label stages over a dataset.
 */
import { lastValueFrom } from 'rxjs';
import type { AugmentSpec } from '../data/augment.ts';
import { SampleReader, type Dataset } from '../data/reader.ts';
import { applyModelState, disposeCheckpoint, loadCheckpoint } from '../io/weights.ts';
import { deeplabV2, type BackboneName, type SegModel } from '../ops/model/deeplab.ts';
import { Credits } from '../graph/flow.ts';
import type { Batch } from '../stages/collate.ts';
import { repairLine, skipLine } from '../stages/decode-augment.ts';
import { feedBatches } from '../stages/feed-batches.ts';
import { inOrder } from '../stages/read-shards.ts';

export interface LoadedModel {
  model: SegModel;
  meta: {
    backbone: BackboneName;
    numClasses: 19 | 16;
    size?: { source: [number, number]; target: [number, number]; eval: [number, number] };
    phase?: string;
    iteration?: number;
  };
}

export async function modelFromCheckpoint(path: string): Promise<LoadedModel> {
  const state = await loadCheckpoint(path);
  try {
    const meta = state.meta as LoadedModel['meta'];
    if (!meta.backbone || !meta.numClasses)
      throw new Error(`${path}: checkpoint metadata lacks backbone/numClasses (written by an older version?)`);
    const model = deeplabV2({ backbone: meta.backbone, numClasses: meta.numClasses });
    model.setBatchNorm((state.meta.bn as 'frozen' | 'trainable' | undefined) ?? 'frozen');
    applyModelState(model, state.model, { source: path });
    return { model, meta };
  } finally {
    disposeCheckpoint(state);
  }
}

/** Every record of `dataset` once, in order, through decode-augment and collate; skipped or repaired samples are logged to stderr. */
export async function pass<T>(
  dataset: Dataset,
  spec: AugmentSpec,
  batchSize: number,
  workers: number | undefined,
  sink: (reader: SampleReader) => (source: import('rxjs').Observable<Batch>) => import('rxjs').Observable<T>,
): Promise<T> {
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const reader = new SampleReader({ threads: workers, log });
  try {
    const credits = new Credits(Math.max(16, batchSize * 2));
    return await lastValueFrom(
      feedBatches({
        dataset,
        sampler: inOrder(dataset.keys),
        reader,
        spec,
        credits,
        batchSize,
        seed: 0,
        stream: 0,
        count: dataset.keys.length,
        onSkip: (e) => log(skipLine(e)),
        onRepair: (stage, f) => log(repairLine(stage, f)),
      }).pipe(sink(reader)),
    );
  } finally {
    await reader.close();
  }
}

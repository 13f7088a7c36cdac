/**
 * BN statistics adaptation (AdaBN, Li et al. 2016): forwards of a dataset in training mode with running
 * statistics tracked, nothing else changed. A source-only model re-normalised with the target domain's
 * statistics is the cheapest adaptation there is, and so the baseline an adaptation method has to beat
 * (`pipelines/evaluate.ts --adapt-bn DIR`). With PyTorch's momentum 0.1 the running statistics after a
 * pass are an exponential average over the last batches (weight 0.9^k on the k-th last), which for a
 * pass of tens of batches no longer depends on what the model held before.
 */
import * as tf from '@tensorflow/tfjs';
import { defer, type OperatorFunction } from 'rxjs';
import { reduceItems } from '../graph/flow.ts';
import type { SegModel } from '../ops/model/deeplab.ts';
import { batchTensors, type Batch } from './collate.ts';

export interface AdaptBnOptions {
  model: SegModel;
  release: (batch: Batch) => void;
}

export interface AdaptBnReport {
  images: number;
  batches: number;
}

/** Runs every batch through `model` in training mode (BN tracking), then reports how much it saw. */
export function adaptBatchNorm(opts: AdaptBnOptions): OperatorFunction<Batch, AdaptBnReport> {
  return (source) =>
    defer(() => {
      if (opts.model.batchNorm !== 'trainable') {
        throw new Error(`adaptBatchNorm: the model's BN is '${opts.model.batchNorm}'; only trainable BN has running statistics to adapt`);
      }
      let images = 0;
      let batches = 0;
      return source.pipe(
        reduceItems(
          (batch: Batch) => {
            // the outputs are discarded; the running statistics are assigned inside the forward
            tf.tidy(() => {
              opts.model.forward(batchTensors(batch).images, { training: true, trackStats: true });
            });
            images += batch.n;
            batches++;
          },
          () => ({ images, batches }),
          opts.release,
        ),
      );
    });
}

/**
 * Collate stage: groups decoded samples into a batch (NHWC float images, int32 labels with 255 =
 * ignore). Batch buffers come from a small pool and go back when the consumer calls `release`, which
 * also recycles the samples' buffers and returns their credits: memory stays bounded by the prefetch.
 */
import { Observable, type OperatorFunction } from 'rxjs';
import type { Credits } from '../graph/flow.ts';
import type { SampleReader } from '../data/reader.ts';
import type { DecodedSample } from './decode-augment.ts';
import * as tf from '@tensorflow/tfjs';

export interface Batch {
  n: number;
  height: number;
  width: number;
  images: Float32Array;
  labelHeight: number;
  labelWidth: number;
  /** int32 train IDs, 255 = ignore; null when the samples have no labels. */
  labels: Int32Array | null;
  keys: string[];
  /** Sum of the samples' decode + augment seconds (metrics). */
  decodeSeconds: number;
  /** Gives buffers and credits back; call once the batch is on the device. */
  release(): void;
}

export interface CollateOptions {
  reader: SampleReader;
  credits: Credits;
  /** Emit a last, smaller batch at the end of a finite stream (passes over a set). Default false (drop_last). */
  partial?: boolean;
}

export function collate(size: number, opts: CollateOptions): OperatorFunction<DecodedSample, Batch> {
  const pool: { images: Float32Array; labels: Int32Array }[] = [];
  const make = (samples: DecodedSample[]): Batch => {
    const first = samples[0]!;
    const { height, width, labelHeight, labelWidth } = first;
    const px = height * width * 3;
    const lpx = labelHeight * labelWidth;
    for (const s of samples) {
      if (s.height !== height || s.width !== width || s.labelHeight !== labelHeight || s.labelWidth !== labelWidth) {
        throw new Error(
          `collate: sample '${s.key}' is ${s.height}x${s.width} (label ${s.labelHeight}x${s.labelWidth}) but the batch is ` +
            `${height}x${width} (label ${labelHeight}x${labelWidth})`,
        );
      }
    }
    let buf = pool.pop();
    if (!buf || buf.images.length !== samples.length * px || buf.labels.length !== samples.length * lpx) {
      buf = { images: new Float32Array(samples.length * px), labels: new Int32Array(samples.length * lpx) };
    }
    const labelled = samples.every((s) => s.label);
    samples.forEach((s, i) => {
      buf.images.set(s.image, i * px);
      if (labelled) buf.labels.set(s.label!, i * lpx);
    });
    let released = false;
    const own = buf;
    return {
      n: samples.length,
      height,
      width,
      images: buf.images,
      labelHeight,
      labelWidth,
      labels: labelled ? buf.labels : null,
      keys: samples.map((s) => s.key),
      decodeSeconds: samples.reduce((a, s) => a + s.seconds, 0),
      release() {
        if (released) return;
        released = true;
        for (const s of samples) opts.reader.recycle(s);
        opts.credits.release(samples.length);
        pool.push(own);
      },
    };
  };
  return (source) =>
    new Observable<Batch>((subscriber) => {
      let pending: DecodedSample[] = [];
      const sub = source.subscribe({
        next(s) {
          pending.push(s);
          if (pending.length === size) {
            const samples = pending;
            pending = [];
            try {
              subscriber.next(make(samples));
            } catch (err) {
              subscriber.error(err);
            }
          }
        },
        error: (e) => subscriber.error(e),
        complete() {
          if (pending.length && opts.partial) subscriber.next(make(pending));
          else if (pending.length) {
            for (const s of pending) opts.reader.recycle(s);
            opts.credits.release(pending.length);
          }
          subscriber.complete();
        },
      });
      return () => sub.unsubscribe();
    });
}

/** Images [B,H,W,3] and int32 labels [B,Hl,Wl] of a batch as tensors (caller disposes). */
export function batchTensors(batch: Batch): { images: tf.Tensor4D; labels: tf.Tensor3D | null } {
  return {
    images: tf.tensor4d(batch.images, [batch.n, batch.height, batch.width, 3]),
    labels: batch.labels ? tf.tensor3d(batch.labels, [batch.n, batch.labelHeight, batch.labelWidth], 'int32') : null,
  };
}

/**
 * Stand-ins the stage specs share: decoded samples and a reader that only recycles them, a model whose
 * prediction is its input's class channel, and hand-made batches.
 */
import * as tf from '@tensorflow/tfjs';
import type { SampleReader } from '../../src/data/reader.ts';
import type { SegModel } from '../../src/ops/model/deeplab.ts';
import type { Batch } from '../../src/stages/collate.ts';
import type { DecodedSample } from '../../src/stages/decode-augment.ts';

export const recycled: DecodedSample[] = [];
export const fakeReader = { recycle: (s: DecodedSample) => recycled.push(s) } as unknown as SampleReader;
export function sample(key: string, v: number, h = 2, w = 3, label = true): DecodedSample {
  return {
    key,
    width: w,
    height: h,
    image: new Float32Array(h * w * 3).fill(v),
    labelWidth: w,
    labelHeight: h,
    label: label ? new Uint8Array(h * w).fill(v) : null,
    spare: null,
    seconds: 0.5,
    encodedBytes: 0,
    info: {} as DecodedSample['info'],
    ref: {} as DecodedSample['ref'],
    repaired: null,
  };
}

/** A stand-in model: channel 0 of the image holds the class; logits are 10 * one-hot of it, at full size. */
export function oracleModel(numClasses: number, flipEvery = 0): SegModel {
  return {
    forward: (x: tf.Tensor4D) =>
      tf.tidy(() => {
        let cls = x.slice([0, 0, 0, 0], [-1, -1, -1, 1]).squeeze([3]).toInt();
        if (flipEvery) cls = tf.where(tf.equal(tf.mod(tf.range(0, x.shape[2], 1, 'int32'), flipEvery), 0), tf.onesLike(cls), cls);
        const logits = tf
          .mul(tf.oneHot(cls.flatten(), numClasses, 1, 0, 'int32').toFloat(), 10)
          .reshape([...x.shape.slice(0, 3), numClasses]) as tf.Tensor4D;
        return { features: logits, logits };
      }),
  } as unknown as SegModel;
}

export function batchOf(classes: number[][], keys: string[], withLabels = true): Batch {
  const h = 1;
  const w = classes[0]!.length;
  const images = new Float32Array(classes.length * h * w * 3);
  classes.forEach((row, b) =>
    row.forEach((c, x) => {
      images[(b * w + x) * 3] = c;
    }),
  );
  return {
    n: classes.length,
    height: h,
    width: w,
    images,
    labelHeight: h,
    labelWidth: w,
    labels: withLabels ? Int32Array.from(classes.flat()) : null,
    keys,
    decodeSeconds: 0,
    release: () => {},
  };
}

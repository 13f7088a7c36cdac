/**
 * The benchmark's training step as a data-parallel program (src/parallel/program.ts): the DeepLab or
 * the plain net (bench/plain-net.ts), bilinear upsampling to the label size and cross-entropy, so that
 * `bench:step --threads` runs the very step it times on one thread over worker replicas.
 */
import * as tf from '@tensorflow/tfjs';
import { deeplabV2 } from '../src/ops/model/deeplab.ts';
import type { Param } from '../src/ops/model/params.ts';
import { segCrossEntropy } from '../src/ops/losses.ts';
import { SGD, gradients } from '../src/ops/optim.ts';
import type { DataParallel } from '../src/parallel/data-parallel.ts';
import type { HostTensors, Program, ProgramRef, Replica } from '../src/parallel/program.ts';
import { plainNet } from './plain-net.ts';

export interface BenchNet extends Replica {
  params: Param[];
  forward(x: tf.Tensor4D): tf.Tensor4D;
}

export function benchNet(net: string, classes: number, bn: 'frozen' | 'trainable' = 'frozen'): BenchNet {
  if (net === 'plain') {
    const m = plainNet(classes, 0);
    return { params: m.params, variables: new Map(m.params.map((p) => [p.name, p.variable])), forward: m.forward, dispose: m.dispose };
  }
  const model = deeplabV2({ backbone: 'small', numClasses: classes, seed: 0, bn });
  return {
    params: model.trainableParams(),
    variables: new Map([...model.store.params].map(([k, p]) => [k, p.variable])),
    forward: (x) => model.forward(x, { training: true }).logits,
    setCrossReplicaSum: (sum) => model.setCrossReplicaSum(sum),
    dispose: () => model.dispose(),
  };
}

/** The step's optimiser: SGD (momentum, weight decay), the classifier's learning rate x10. */
export function benchOptimizer(net: BenchNet): SGD {
  return new SGD([
    { params: net.params.filter((p) => p.group === 'backbone'), lrMult: 1 },
    { params: net.params.filter((p) => p.group === 'classifier'), lrMult: 10 },
  ]);
}

/** The step's loss: CE of the logits upsampled to the labels, mean over labelled pixels. */
export function benchLoss(net: BenchNet, images: tf.Tensor4D, labels: tf.Tensor3D): tf.Scalar {
  const [h, w] = [labels.shape[1], labels.shape[2]];
  return segCrossEntropy(tf.image.resizeBilinear(net.forward(images), [h, w], true), labels);
}

/** The benchmark's batch: fixed seeds, so that every setting, thread and process times the same images. */
export interface BenchBatch {
  x: tf.Tensor4D;
  labels: tf.Tensor3D;
  /** The same in host memory: what a data-parallel step splits. */
  host: HostTensors;
}

export function benchBatch(batch: number, [h, w]: readonly [number, number], classes: number): BenchBatch {
  const x = tf.randomNormal([batch, h, w, 3], 0, 1, 'float32', 1) as tf.Tensor4D;
  const labels = tf.randomUniformInt([batch, h, w], 0, classes, 2) as tf.Tensor3D;
  const host = {
    images: { data: x.dataSync() as Float32Array, shape: x.shape },
    labels: { data: labels.dataSync() as Int32Array, shape: labels.shape },
  };
  return { x, labels, host };
}

/** One training step of the benchmark (over `dp`'s replicas when given), timed: its milliseconds. */
export function timedStep(net: BenchNet, opt: SGD, b: BenchBatch, dp: DataParallel | null = null): number {
  const t0 = performance.now();
  tf.tidy(() => {
    const { grads } = dp ? dp.gradients(b.host, {}, net.params) : gradients(() => benchLoss(net, b.x, b.labels), net.params);
    opt.step(grads, 1e-3);
  });
  return performance.now() - t0;
}

/** This module's program for a data-parallel group of the benchmark's net (`DataParallel.start`'s `program`). */
export function benchProgram(net: string, classes: number, bn: 'frozen' | 'trainable'): ProgramRef {
  return { module: new URL('./step-program.ts', import.meta.url).href, description: { net, classes, bn } };
}

export const program: Program<BenchNet> = {
  build: (d) => {
    const { net, classes, bn } = d as { net: string; classes: number; bn?: 'frozen' | 'trainable' };
    return benchNet(net, classes, bn);
  },
  loss: (net, t, _args, shard) => {
    const seg = shard.batchMean(benchLoss(net, t.images as tf.Tensor4D, t.labels as tf.Tensor3D), { labelledIn: 'labels' });
    return { total: seg, terms: { seg } };
  },
};

/**
 * Online self-training with a mean teacher and class mixing (DACS, Tranheden et al. 2021; DAFormer,
 * Hoyer et al. 2022), built from the same stages as SPCL. Each step:
 *
 * 1. the teacher (an exponential moving average of the student, inference mode, no gradients) labels the
 *    target batch: pseudo-label = argmax, and per image the share of pixels whose confidence exceeds
 *    `threshold` (the confidence weight);
 * 2. ClassMix: half of the classes of each source image (with their labels) are pasted onto its target
 *    image (with the teacher's labels); the source image is first resized to the target size;
 * 3. the student trains on the source batch (CE) and the mixed batch (CE, pixel weights 1 on pasted
 *    source pixels and the confidence weight elsewhere), plus, when `contrastWeight` > 0, SPCL's
 *    pixel-to-prototype term (paper Eq. 4 on the source, Eq. 6 on the mixed batch with its labels), with
 *    the prototype EMA of Eq. 3 (SePiCo-style: a prototypes phase must run before);
 * 4. teacher <- alpha * teacher + (1 - alpha) * student over every parameter and BN statistic.
 *
 * With `train.threads` > 1, step 3 runs over data-parallel replicas (mean-teacher-shard.ts, the same
 * loss function); steps 1, 2 and 4 stay on this thread (one teacher, one set of draws).
 *
 * BN's running statistics: under `model.bnStats: 'target'` (the synthetic preset) only target images move
 * them, as in every SPCL phase: the plain target batch passes forward for them (no gradient) and the
 * mixed batch, which carries source pixels, is normalised by its own batch statistics.
 *
 * The teacher starts as a copy of the student (the warm-up's model) and is checkpointed beside it
 * (`teacher/<name>` in the checkpoint's extra section), so a resume continues bit-identically. Settings:
 * `methods.mean-teacher.*` (defaults below: DACS's SGD, alpha 0.99, threshold 0.968).
 */
import * as tf from '@tensorflow/tfjs';
import {
  chooseMixClasses,
  classMixMask,
  confidenceWeight,
  confidentLabels,
  mixImages,
  mixLabels,
  mixedPixelWeights,
  presentClasses,
} from '../ops/mean-teacher.ts';
import { polyLR } from '../ops/optim.ts';
import { pseudoLabels } from '../ops/thresholds.ts';
import { IMAGENET_MEAN, IMAGENET_STD } from '../data/augment.ts';
import { Rng } from '../data/rng.ts';
import { drawStrongAugment, strongAugment } from '../ops/strong-augment.ts';
import { batchTensors } from '../stages/collate.ts';
import { applyIfFinite, parallelApplyIfFinite, parallelApplyWithPrototypes } from '../stages/train-step.ts';
import { MEAN_TEACHER_SHARD, meanTeacherLoss, type MeanTeacherShardArgs, type StudentBatch } from './mean-teacher-shard.ts';
import { POSITIVE, POSITIVE_INT, nonNegative } from '../recipe/config-merge.ts';
import type { RunContext } from '../recipe/context.ts';
import type { Method } from '../recipe/method.ts';
import { Teacher } from '../recipe/teacher.ts';
import {
  hostBatch,
  releaseBatches,
  restoreOptimizer,
  sgd,
  sourceTargetPairs,
  startDataParallel,
  train,
  type PhaseResult,
  type ResumePoint,
} from '../recipe/trainer.ts';

/** The method's settings (`methods.mean-teacher.*`). */
export interface MeanTeacherConfig {
  iterations: number;
  maxIter: number;
  /** Base learning rate of the poly schedule (SGD, classifier x optimizer.classifierLrMult). */
  lr: number;
  /** Teacher EMA factor (DACS 0.99, DAFormer 0.999). */
  alpha: number;
  /** Teacher confidence above which a pixel counts toward its image's weight (DACS/DAFormer 0.968). */
  threshold: number;
  /** ClassMix on (off: the student trains on the plain target batch with the teacher's labels). */
  classMix: boolean;
  /**
   * How the teacher's confidence counts: 'image' (DACS/DAFormer: every pixel labelled, the image weighted by
   * its share above `threshold`), 'pixel' (only pixels above `threshold` labelled) or 'class' (only pixels
   * above SPCL's per-class thresholds, from a thresholds pass before the phase: the pipeline adds it).
   */
  confidence: 'image' | 'pixel' | 'class';
  /** Colour jitter + Gaussian blur on the student's (mixed) images, as DACS and DAFormer (src/ops/strong-augment.ts). */
  strongAugment: boolean;
  /** Weight of SPCL's contrastive term (0 = off; > 0 needs the prototypes phase before). */
  contrastWeight: number;
  /** BN of the student: 'trainable' (batch statistics, target running statistics) or 'frozen'. */
  bn: 'frozen' | 'trainable';
}

/** Seed streams of its source and target batches (`+ 1`); ids unused elsewhere (recipe/streams.ts). */
const STREAM = 61;
/** Seed stream of the ClassMix draws (one Rng per iteration). */
const MIX_STREAM = 63;
/** Seed stream of the strong-augmentation draws (one Rng per iteration). */
const AUGMENT_STREAM = 64;
/** The decode stage's normalisation, which the strong augmentation undoes and redoes. */
const NORMALISATION = { mean: IMAGENET_MEAN, std: IMAGENET_STD };

function settings(ctx: RunContext): MeanTeacherConfig {
  const c = ctx.cfg.methods['mean-teacher'] as unknown as MeanTeacherConfig | undefined;
  if (!c) throw new Error("mean-teacher: no settings under methods.mean-teacher (the pipeline's config did not include the method)");
  if (c.iterations > c.maxIter)
    throw new Error(`config: methods.mean-teacher.iterations (${c.iterations}) must be <= methods.mean-teacher.maxIter (${c.maxIter})`);
  return c;
}

export async function meanTeacherPhase(ctx: RunContext, resume: ResumePoint = { iteration: 0 }): Promise<PhaseResult> {
  const { cfg, model } = ctx;
  const c = settings(ctx);
  if (c.confidence === 'class' && !ctx.thresholds) {
    throw new Error("mean-teacher: methods.mean-teacher.confidence 'class' needs class thresholds: run a pseudo-labels phase before");
  }
  if (c.contrastWeight > 0 && !ctx.prototypes.ready) {
    throw new Error('mean-teacher: methods.mean-teacher.contrastWeight > 0 needs prototypes: run the prototypes phase before');
  }
  model.setBatchNorm(c.bn);
  const teacher = new Teacher(ctx, resume, 'mean-teacher');
  const params = model.trainableParams();
  const opt = sgd(ctx, params);
  restoreOptimizer(opt, resume.optimizer);
  const schedule = { iterations: c.iterations, maxIter: c.maxIter, lr: c.lr };
  const shardArgs: MeanTeacherShardArgs = {
    bn: model.batchNorm,
    trackSource: cfg.model.bnStats === 'all',
    // BN's running statistics follow the target alone under model.bnStats 'target' (the synthetic
    // preset's): a mixed image carries source pixels, so the plain target batch passes forward for the
    // statistics, without gradient, and the mixed forward leaves them alone (as warm-up does)
    targetStats: cfg.model.bnStats === 'target' && model.batchNorm === 'trainable' && c.classMix,
    contrastWeight: c.contrastWeight,
    temperature: cfg.spcl.temperature,
    alpha: cfg.prototypes.alpha,
    absent: cfg.prototypes.absent,
  };
  const dp = await startDataParallel(ctx, 'mean-teacher', MEAN_TEACHER_SHARD, Math.min(cfg.batch.source, cfg.batch.target));
  try {
    return await train(ctx, {
      phase: 'mean-teacher',
      schedule,
      resume,
      input: sourceTargetPairs(ctx, resume.iteration, STREAM, null),
      release: releaseBatches,
      state: () => ({ optimizer: opt.getState(), extra: teacher.state() }),
      step: ({ s: sb, t: tb }, it) => {
        const lr = polyLR(c.lr, it, c.maxIter) * ctx.lrScale;
        let weight = 0;
        let mixedShare = 0;
        // steps 1-2b on this thread, the whole batch; 3, the student: source CE + weighted CE on the mixed
        // batch (+ the contrastive term), here or over the replicas
        const student = (xs: { images: tf.Tensor4D; labels: tf.Tensor3D | null }, xt: tf.Tensor4D): StudentBatch => {
          const taught = teach(ctx, c, teacher, xs, xt, it);
          ({ weight, mixedShare } = taught);
          return {
            source: { images: xs.images, labels: xs.labels! },
            mixed: { images: taught.images, labels: taught.labels, pixelWeights: taught.pixelWeights },
            target: shardArgs.targetStats ? xt : null,
          };
        };
        let g: { losses: Record<string, number>; finite: boolean };
        if (dp) {
          const taught: Record<string, tf.Tensor> = tf.tidy(() => {
            const b = student(batchTensors(sb), batchTensors(tb).images);
            return {
              mixed: b.mixed.images,
              mixedLabels: b.mixed.labels,
              pixelWeights: b.mixed.pixelWeights,
              ...(b.target ? { target: b.target } : {}),
            };
          });
          // read outside tf.tidy: typed arrays returned from tidy are walked element by element as a
          // possible tensor container (~0.5 us an element, every step)
          const batch = {
            ...hostBatch(sb),
            ...Object.fromEntries(
              Object.entries(taught).map(([k, t]) => [k, { data: t.dataSync() as Float32Array | Int32Array, shape: t.shape }]),
            ),
          };
          tf.dispose(Object.values(taught));
          g =
            c.contrastWeight > 0
              ? parallelApplyWithPrototypes(ctx.prototypes, dp, batch, { ...shardArgs }, params, opt, lr)
              : parallelApplyIfFinite(dp, batch, { ...shardArgs }, params, opt, lr);
        } else {
          g = tf.tidy(() => {
            const b = student(batchTensors(sb), batchTensors(tb).images);
            return applyIfFinite(
              () =>
                meanTeacherLoss(model, b, shardArgs, (fs, ms) => {
                  ctx.prototypes.update(fs, ms, { alpha: cfg.prototypes.alpha, absent: cfg.prototypes.absent }); // Eq. 3
                  return ctx.prototypes.tensor;
                }),
              params,
              opt,
              lr,
            );
          });
        }
        // 4. the teacher follows the student (after its update; a skipped step leaves both as they were)
        if (g.finite) teacher.update(c.alpha);
        return {
          losses: g.losses,
          stats: { teacher_weight: weight, mixed_share: mixedShare },
          lr,
          skipped: !g.finite,
          samples: { source: sb.n, target: tb.n },
        };
      },
    });
  } finally {
    await dp?.close();
    opt.dispose();
    teacher.dispose();
  }
}

/** The student's target-side batch of one step: what the teacher labelled, mixed and augmented (tensors of the caller's tidy). */
interface Taught {
  images: tf.Tensor4D;
  labels: tf.Tensor3D;
  pixelWeights: tf.Tensor3D;
  /** The batch's mean confidence weight. */
  weight: number;
  /** The share of pixels pasted from the source (0 without ClassMix). */
  mixedShare: number;
}

/**
 * Steps 1, 2 and 2b on the whole batch (the main thread's: one teacher): the teacher's labels and
 * confidence weight on the target batch `xt`, ClassMix with the source batch `xs` (resized to the target
 * size), the strong augmentation. Call inside tf.tidy.
 */
function teach(
  ctx: RunContext,
  c: MeanTeacherConfig,
  teacher: Teacher,
  xs: { images: tf.Tensor4D; labels: tf.Tensor3D | null },
  xt: tf.Tensor4D,
  it: number,
): Taught {
  const n = xt.shape[0];
  const size: [number, number] = [xt.shape[1], xt.shape[2]];
  // 1. the teacher's labels and confidence weight on the target batch
  const probs = tf.softmax(tf.image.resizeBilinear(teacher.model.forward(xt, { training: false }).logits, size, true)) as tf.Tensor4D;
  // 'image' (DACS, DAFormer): every pixel labelled, the image weighted by its confident share;
  // 'pixel': only the confident pixels labelled, weight 1 (the share is still reported)
  const share = confidenceWeight(probs, c.threshold);
  const weight = share.mean().dataSync()[0]!;
  // 'class': SPCL's per-class thresholds of the pass before (the upper median of each class, capped)
  const pseudo =
    c.confidence === 'pixel'
      ? confidentLabels(probs, c.threshold)
      : c.confidence === 'class'
        ? pseudoLabels(probs, ctx.thresholds!)
        : (tf.argMax(probs, 3).toInt() as tf.Tensor3D);
  const w = c.confidence === 'image' ? share : (tf.onesLike(share) as tf.Tensor1D);
  // 2. ClassMix, the source at the target size
  let images = xt;
  let labels = pseudo;
  let pixelWeights = mixedPixelWeights(tf.zeros([n, ...size]) as tf.Tensor3D, w);
  let mixedShare = 0;
  if (c.classMix) {
    const srcImages = tf.image.resizeBilinear(xs.images, size, true);
    // labels through float (255 and every class id are exact), nearest neighbour as the label resize
    const srcLabels = tf.image
      .resizeNearestNeighbor(xs.labels!.toFloat().expandDims(3) as tf.Tensor4D, size)
      .squeeze([3])
      .toInt() as tf.Tensor3D;
    const chosen = chooseMixClasses(
      presentClasses(srcLabels.dataSync() as Int32Array, n, size[0] * size[1]),
      Rng.derive(ctx.cfg.seed, MIX_STREAM, it),
    );
    const mask = classMixMask(srcLabels, chosen);
    mixedShare = mask.mean().dataSync()[0]!;
    images = mixImages(mask, srcImages, xt);
    labels = mixLabels(mask, srcLabels, pseudo);
    pixelWeights = mixedPixelWeights(mask, w);
  }
  // 2b. the strong augmentation of the student's input (colour jitter, blur): the teacher labelled the plain target
  if (c.strongAugment) images = strongAugment(images, drawStrongAugment(n, Rng.derive(ctx.cfg.seed, AUGMENT_STREAM, it)), NORMALISATION);
  return { images, labels, pixelWeights, weight, mixedShare };
}

export const meanTeacher: Method = {
  name: 'mean-teacher',
  kind: 'train',
  steps: (cfg) => (cfg.methods['mean-teacher']?.iterations as number | undefined) ?? 0,
  run: meanTeacherPhase,
  config: {
    // synthetic: as many steps as SPCL's contrastive + self-training phases, their learning rate;
    // the paper presets: DACS's DeepLab-v2 settings (SGD 2.5e-4, poly, 250k iterations, alpha 0.99)
    defaults: (preset): MeanTeacherConfig & Record<string, unknown> =>
      preset === 'synthetic'
        ? {
            iterations: 600,
            maxIter: 840,
            lr: 0.004,
            alpha: 0.99,
            threshold: 0.968,
            confidence: 'image',
            classMix: true,
            strongAugment: false,
            contrastWeight: 0,
            bn: 'trainable',
          }
        : {
            iterations: 250_000,
            maxIter: 250_000,
            lr: 2.5e-4,
            alpha: 0.99,
            threshold: 0.968,
            confidence: 'image',
            classMix: true,
            strongAugment: true,
            contrastWeight: 0,
            bn: 'frozen',
          },
    rules: {
      iterations: POSITIVE_INT,
      maxIter: POSITIVE_INT,
      lr: POSITIVE,
      alpha: [(v) => typeof v === 'number' && v >= 0 && v < 1, 'a number in [0, 1)'],
      threshold: [(v) => typeof v === 'number' && v >= 0 && v < 1, 'a number in [0, 1)'],
      contrastWeight: nonNegative('a number >= 0 (0 = off)'),
      bn: [(v) => v === 'frozen' || v === 'trainable', "'frozen' or 'trainable'"],
      confidence: [(v) => v === 'image' || v === 'pixel' || v === 'class', "'image', 'pixel' or 'class'"],
    },
  },
};

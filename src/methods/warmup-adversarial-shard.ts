/**
 * The warm-up's adversarial step (warmup.ts `warmupStep` with a discriminator) as a data-parallel
 * program (src/parallel/program.ts), two program calls per step:
 * - 'generator': the shard's source CE (warmupLoss) + lambda_adv * BCE(D(target softmax), source), each
 *   this shard's part of the whole batch's mean, w.r.t. the segmentation net; the shard's detached
 *   predictions (source softmax of logits / temperature, target softmax) stay in the replica;
 * - 'discriminator': D's loss on those kept predictions (0.5 BCE(D(source), 0) + 0.5 BCE(D(target), 1),
 *   means over the whole batch's patches), w.r.t. D, after the main thread updated the net.
 * The replica holds the model and the discriminator, their variables in one map (the main thread's D
 * weights arrive with the net's before each call). Over all replicas: the one-thread step.
 */
import * as tf from '@tensorflow/tfjs';
import { bceWithLogits } from '../ops/losses.ts';
import { deeplabV2, type SegModel } from '../ops/model/deeplab.ts';
import { discriminator, disposeTrace, type Discriminator, type DiscriminatorTrace } from '../ops/model/discriminator.ts';
import type { BnMode } from '../ops/model/layers.ts';
import { followBatchNorm, type DeeplabDescription, type DeeplabReplica } from '../parallel/deeplab-replica.ts';
import { meanPart, type Program, type ShardContext } from '../parallel/program.ts';
import { warmupLoss } from './warmup-shard.ts';

export interface AdversarialDescription extends DeeplabDescription {
  ndf: number;
}

export interface AdversarialReplica extends DeeplabReplica {
  disc: Discriminator;
  /** The last generator call's detached predictions of this shard (the discriminator call's input). */
  kept: KeptPredictions | null;
}

export interface AdversarialShardArgs {
  stage: 'generator' | 'discriminator';
  bn: BnMode;
  temperature: number;
  lambdaAdv: number;
  /** Source batches update BN's running statistics (model.bnStats 'all'); the target pass always does. */
  trackSource: boolean;
}

/**
 * The model and the discriminator as one replica. Their variable names must differ (they share one
 * layout in shared memory). `dispose` frees the kept predictions only: the main thread's model and
 * discriminator belong to the run; a worker's are freed with the worker.
 */
export function adversarialReplica(model: SegModel, disc: Discriminator): AdversarialReplica {
  const variables = new Map([...model.store.params].map(([name, p]) => [name, p.variable]));
  for (const [name, p] of disc.store.params) {
    if (variables.has(name)) throw new Error(`adversarial replica: discriminator variable '${name}' has the name of a model variable`);
    variables.set(name, p.variable);
  }
  const r: AdversarialReplica = {
    model,
    disc,
    kept: null,
    variables,
    setCrossReplicaSum: (sum) => model.setCrossReplicaSum(sum),
    dispose: () => keep(r, null),
  };
  return r;
}

/** Replaces the replica's kept predictions (frees the old ones). */
function keep(r: AdversarialReplica, kept: AdversarialReplica['kept']): void {
  if (r.kept) disposeKept(r.kept);
  r.kept = kept;
}

/** Predictions the discriminator's own update sees, detached (kept until that update). */
export interface KeptPredictions {
  source: tf.Tensor4D;
  target: tf.Tensor4D;
  /** D's forward on `target` in the adversarial term (same weights as the update's): the update reuses it. */
  trace: DiscriminatorTrace;
}

export function disposeKept(kept: KeptPredictions): void {
  disposeTrace(kept.trace);
  tf.dispose([kept.source, kept.target]);
}

/**
 * D(probs) for the adversarial term, differentiable w.r.t. `probs` only (what autodiff through
 * `disc.forward` gives the net: D's weights are not trained by this term), its forward kept for D's
 * own update (`discriminatorLoss`) instead of run again there.
 */
function discriminateKeeping(disc: Discriminator, probs: tf.Tensor4D): { logits: tf.Tensor4D; trace: DiscriminatorTrace } {
  let trace: DiscriminatorTrace | null = null;
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const t = disc.trace(args[0] as tf.Tensor4D);
    trace = t;
    return { value: t.logits.clone(), gradFunc: (dy: tf.Tensor) => disc.inputGradient(t, dy as tf.Tensor4D) };
  });
  const logits = op(probs) as tf.Tensor4D;
  return { logits, trace: trace! };
}

/**
 * The kept forward's logits as a function of D's weights, for D's update: its gradient w.r.t. them is
 * `disc.weightGradients` from the trace (the bits autodiff through a second forward would give).
 */
function tracedLogits(disc: Discriminator, trace: DiscriminatorTrace): tf.Tensor4D {
  const names = [...disc.store.params.keys()];
  const op = tf.customGrad(() => ({
    value: trace.logits.clone(),
    gradFunc: (dy: tf.Tensor) => {
      const g = disc.weightGradients(trace, dy as tf.Tensor4D);
      return names.map((n) => g.get(n)!);
    },
  }));
  return op(...names.map((n) => disc.store.get(n))) as tf.Tensor4D;
}

/**
 * The adversarial term of the warm-up (AdaptSegNet): lambda_adv * BCE(D(softmax of the target logits
 * upsampled to `target`), source), mean over D's patches (`batchMean`: this shard's part of the batch's); and the predictions D's update sees: the
 * tempered source prediction and the plain target one (REFERENCE 8.11), kept. The one-thread step's
 * and the shard program's.
 */
export function adversarialTerm(
  model: SegModel,
  disc: Discriminator,
  target: tf.Tensor4D,
  sourceLogits: tf.Tensor4D,
  o: { temperature: number; lambdaAdv: number },
  batchMean: ShardContext['batchMean'] | null = null,
): { adv: tf.Scalar; kept: KeptPredictions } {
  const lt = tf.image.resizeBilinear(model.forward(target, { training: true }).logits, [target.shape[1], target.shape[2]], true);
  const pt = tf.keep(tf.softmax(lt) as tf.Tensor4D);
  const { logits: out, trace } = discriminateKeeping(disc, pt);
  const adv = tf.mul(
    meanPart(batchMean, bceWithLogits(out, 0), () => out.size),
    o.lambdaAdv,
  ) as tf.Scalar;
  return { adv, kept: { source: tf.keep(tf.softmax(tf.div(sourceLogits, o.temperature)) as tf.Tensor4D), target: pt, trace } };
}

/**
 * D's loss on the kept predictions: 0.5 BCE(D(source), 0) + 0.5 BCE(D(target), 1), each a mean over D's
 * patches (`batchMean`: as above). D(target) is the adversarial term's forward (`kept.trace`).
 */
export function discriminatorLoss(
  disc: Discriminator,
  kept: KeptPredictions,
  batchMean: ShardContext['batchMean'] | null = null,
): tf.Scalar {
  const ds = disc.forward(kept.source);
  const dt = tracedLogits(disc, kept.trace);
  return tf.add(
    tf.mul(
      meanPart(batchMean, bceWithLogits(ds, 0), () => ds.size),
      0.5,
    ),
    tf.mul(
      meanPart(batchMean, bceWithLogits(dt, 1), () => dt.size),
      0.5,
    ),
  ) as tf.Scalar;
}

export const program: Program<AdversarialReplica> = {
  build: (d) => {
    const { backbone, numClasses, ndf } = d as AdversarialDescription;
    return adversarialReplica(deeplabV2({ backbone, numClasses }), discriminator({ numClasses, ndf }));
  },
  prepare: (r, args) => followBatchNorm(r, (args as unknown as AdversarialShardArgs).bn),
  loss: (r, t, args, shard): { total: tf.Scalar; terms: Record<string, tf.Scalar> } => {
    const a = args as unknown as AdversarialShardArgs;
    if (a.stage === 'discriminator') {
      if (!r.kept) throw new Error("adversarial program: the 'discriminator' stage needs a 'generator' call first");
      return { total: discriminatorLoss(r.disc, r.kept, shard.batchMean), terms: {} };
    }
    const labels = t.labels as tf.Tensor3D;
    const { ce, logits } = warmupLoss(r.model, t.images as tf.Tensor4D, labels, null, { ...a, targetStats: false });
    const seg = shard.batchMean(ce, { labelledIn: 'labels' });
    const { adv, kept } = adversarialTerm(r.model, r.disc, t.target as tf.Tensor4D, logits, a, shard.batchMean);
    keep(r, kept);
    return { total: tf.add(seg, adv) as tf.Scalar, terms: { seg, adv } };
  },
};

export const ADVERSARIAL_SHARD = new URL(import.meta.url).href;

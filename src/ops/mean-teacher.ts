/**
 * The math of online self-training with a mean teacher and class mixing (DACS, Tranheden et al. 2021;
 * DAFormer, Hoyer et al. 2022), pure and synchronous:
 *
 * - `emaUpdate`: teacher <- alpha * teacher + (1 - alpha) * student, variable by variable.
 * - `chooseMixClasses` + `classMixMask`: ClassMix. Of the classes present in a source label map (255 not a
 *   class), ceil(n / 2) are drawn without replacement (DACS's `(n + n % 2) / 2`); the mask is 1 where the
 *   source label is one of them. `mixImages` / `mixLabels` paste the masked source pixels onto the target.
 * - `confidenceWeight`: per image, the share of pixels whose teacher confidence (max softmax) exceeds the
 *   threshold (0.968 in DACS and DAFormer); `mixedPixelWeights` gives the mixed image's pixel weights: 1 on
 *   pasted source pixels (true labels), the image's confidence weight on target pixels (DAFormer).
 */
import * as tf from '@tensorflow/tfjs';
import { shapeStr } from './shape.ts';

/** Mean-teacher update (DACS / DAFormer): teacher <- alpha * teacher + (1 - alpha) * student, in place. */
export function emaUpdate(teacher: readonly tf.Variable[], student: readonly tf.Tensor[], alpha: number): void {
  if (!(alpha >= 0 && alpha <= 1)) throw new Error(`emaUpdate: alpha must be in [0, 1], got ${alpha}`);
  if (teacher.length !== student.length)
    throw new Error(`emaUpdate: ${teacher.length} teacher variables but ${student.length} student tensors`);
  tf.tidy(() => {
    teacher.forEach((t, i) => {
      const s = student[i]!;
      if (shapeStr(t.shape) !== shapeStr(s.shape))
        throw new Error(`emaUpdate: variable ${i} is ${shapeStr(t.shape)} in the teacher, ${shapeStr(s.shape)} in the student`);
      t.assign(tf.add(tf.mul(t, alpha), tf.mul(s, 1 - alpha)));
    });
  });
}

/** The classes present in each of `n` label maps of `hw` pixels (255 = ignore, never a class), ascending. */
export function presentClasses(labels: Int32Array | Uint8Array, n: number, hw: number): number[][] {
  if (labels.length !== n * hw) throw new Error(`presentClasses: ${labels.length} labels for ${n} maps of ${hw} pixels`);
  const out: number[][] = [];
  for (let b = 0; b < n; b++) {
    const seen = new Set<number>();
    for (let i = b * hw; i < (b + 1) * hw; i++) if (labels[i] !== 255) seen.add(labels[i]!);
    out.push([...seen].sort((x, y) => x - y));
  }
  return out;
}

/** ClassMix's draw: ceil(n / 2) of each map's n present classes, without replacement, ascending. */
export function chooseMixClasses(present: readonly (readonly number[])[], rng: { shuffle<T>(items: T[]): T[] }): number[][] {
  return present.map((classes) => {
    const pool = [...classes];
    rng.shuffle(pool);
    return pool.slice(0, Math.ceil(classes.length / 2)).sort((x, y) => x - y);
  });
}

/** ClassMix mask [B,H,W] (float32): 1 where `labels` [B,H,W] (int32) is one of that map's chosen classes. */
export function classMixMask(labels: tf.Tensor3D, chosen: readonly (readonly number[])[]): tf.Tensor3D {
  if (labels.rank !== 3) throw new Error(`classMixMask: labels must be rank 3 [B,H,W], got shape ${shapeStr(labels.shape)}`);
  if (chosen.length !== labels.shape[0]) throw new Error(`classMixMask: ${chosen.length} class lists for a batch of ${labels.shape[0]}`);
  return tf.tidy(() => {
    const maps = chosen.map((classes, b) => {
      const l = labels.slice([b, 0, 0], [1, -1, -1]);
      if (classes.length === 0) return tf.zerosLike(l).toFloat();
      const hits = classes.map((c) => tf.equal(l, c));
      return hits.reduce((a, h) => tf.logicalOr(a, h)).toFloat();
    });
    return tf.concat(maps, 0) as tf.Tensor3D;
  });
}

/** mask * source + (1 - mask) * target, images [B,H,W,C] with mask [B,H,W]. */
export function mixImages(mask: tf.Tensor3D, source: tf.Tensor4D, target: tf.Tensor4D): tf.Tensor4D {
  if (shapeStr(source.shape) !== shapeStr(target.shape))
    throw new Error(`mixImages: source ${shapeStr(source.shape)} and target ${shapeStr(target.shape)} differ`);
  if (shapeStr(mask.shape) !== shapeStr(source.shape.slice(0, 3)))
    throw new Error(`mixImages: mask ${shapeStr(mask.shape)} does not cover images ${shapeStr(source.shape)}`);
  return tf.tidy(() => {
    const m = mask.expandDims(3);
    return tf.add(tf.mul(m, source), tf.mul(tf.sub(1, m), target)) as tf.Tensor4D;
  });
}

/** Labels where the mask is 1 from `source`, elsewhere from `target` (int32 [B,H,W]). */
export function mixLabels(mask: tf.Tensor3D, source: tf.Tensor3D, target: tf.Tensor3D): tf.Tensor3D {
  if (shapeStr(source.shape) !== shapeStr(target.shape) || shapeStr(mask.shape) !== shapeStr(source.shape)) {
    throw new Error(
      `mixLabels: mask ${shapeStr(mask.shape)}, source ${shapeStr(source.shape)} and target ${shapeStr(target.shape)} must match`,
    );
  }
  return tf.tidy(() => tf.where(tf.greater(mask, 0.5), source, target) as tf.Tensor3D);
}

/** Per image [B]: the share of pixels whose max probability (probs [B,H,W,K]) exceeds `threshold`. */
export function confidenceWeight(probs: tf.Tensor4D, threshold: number): tf.Tensor1D {
  if (probs.rank !== 4) throw new Error(`confidenceWeight: probs must be rank 4 [B,H,W,K], got shape ${shapeStr(probs.shape)}`);
  return tf.tidy(() => tf.greater(tf.max(probs, 3), threshold).toFloat().mean([1, 2]) as tf.Tensor1D);
}

/**
 * The pixel-level alternative to the image weight (`methods.mean-teacher.confidence: 'pixel'`): the teacher's
 * argmax where its max probability exceeds `threshold`, 255 (ignored) elsewhere, as SPCL's thresholded
 * pseudo-labels are, with one threshold for every class.
 */
export function confidentLabels(probs: tf.Tensor4D, threshold: number): tf.Tensor3D {
  if (probs.rank !== 4) throw new Error(`confidentLabels: probs must be rank 4 [B,H,W,K], got shape ${shapeStr(probs.shape)}`);
  return tf.tidy(
    () => tf.where(tf.greater(tf.max(probs, 3), threshold), tf.argMax(probs, 3).toInt(), tf.scalar(255, 'int32')) as tf.Tensor3D,
  );
}

/** Pixel weights [B,H,W] of a mixed image: 1 on pasted source pixels, the image's confidence weight elsewhere. */
export function mixedPixelWeights(mask: tf.Tensor3D, weight: tf.Tensor1D): tf.Tensor3D {
  return tf.tidy(() => {
    const w = weight.reshape([-1, 1, 1]);
    return tf.add(mask, tf.mul(tf.sub(1, mask), w)) as tf.Tensor3D;
  });
}

/**
 * The prototypes of the contrastive phase and their update (paper Eq. 3, REFERENCE 4.4): `Prototypes`
 * holds the [K, C] tensor and is updated by EMA inside the step, before the loss (the current batch
 * contributes, as in the authors' code). It is checkpointed (the authors' code never saves it). Their
 * initialisation (Eq. 2) is the stage in init-prototypes.ts.
 */
import * as tf from '@tensorflow/tfjs';
import { updatePrototypes, type AbsentClassPolicy } from '../ops/prototypes.ts';

export class Prototypes {
  private value: tf.Variable | null = null;
  /** Norm of the last EMA change (metrics). */
  lastUpdateNorm = 0;

  get tensor(): tf.Tensor2D {
    if (!this.value) throw new Error('prototypes: not initialised (run the prototypes phase or resume from a checkpoint that has them)');
    return this.value as tf.Tensor2D;
  }

  get ready(): boolean {
    return this.value !== null;
  }

  set(t: tf.Tensor2D): void {
    if (this.value) this.value.assign(t);
    else this.value = tf.variable(t, false);
  }

  /** Paper Eq. 3: EMA update with the current batch's features (detached) and mask (REFERENCE 4.4). */
  update(features: tf.Tensor4D, mask: tf.Tensor3D, opts: { alpha: number; absent: AbsentClassPolicy }): void {
    tf.tidy(() => this.advance(updatePrototypes(this.tensor, features, mask, opts)));
  }

  /** Takes `next`, the EMA step computed elsewhere (data-parallel replicas: src/methods/spcl-shard.ts). */
  advance(next: tf.Tensor2D): void {
    tf.tidy(() => {
      this.lastUpdateNorm = tf.norm(tf.sub(next, this.tensor)).dataSync()[0]!;
      this.value!.assign(next);
    });
  }

  dispose(): void {
    this.value?.dispose();
    this.value = null;
  }
}

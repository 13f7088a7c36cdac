/**
 * Optimisers with PyTorch semantics and checkpointable state (REFERENCE 2):
 * - `polyLR`: lr = base * (1 - it / maxIter)^power, it = completed iterations;
 * - `SGD`: momentum 0.9, weight decay 5e-4 on every parameter (biases too), no Nesterov, parameter
 *   groups with LR multipliers (classifier x10): d = g + wd * p; buf = mu * buf + d; p -= lr * mult * buf;
 * - `Adam` (the discriminator): betas (0.9, 0.99), bias-corrected, no weight decay.
 * `step` takes gradients by parameter name; state is kept by name, so it survives a checkpoint.
 */
import * as tf from '@tensorflow/tfjs';
import type { Param } from './model/params.ts';

export function polyLR(base: number, iteration: number, maxIter: number, power = 0.9): number {
  if (!(maxIter > 0)) throw new Error(`polyLR: maxIter must be > 0, got ${maxIter}`);
  if (iteration < 0 || iteration > maxIter) {
    throw new Error(`polyLR: iteration ${iteration} outside 0..${maxIter}`);
  }
  return base * Math.pow(1 - iteration / maxIter, power);
}

export interface ParamGroupSpec {
  params: Param[];
  /** LR multiplier of the group (1 backbone, 10 classifier). */
  lrMult: number;
}

export interface OptimizerState {
  kind: 'sgd' | 'adam';
  step: number;
  /** Slot tensors by `${slot}:${paramName}`. */
  slots: Map<string, tf.Tensor>;
}

abstract class NamedOptimizer {
  protected readonly slots = new Map<string, tf.Variable>();
  protected groups: ParamGroupSpec[];
  steps = 0;

  constructor(groups: ParamGroupSpec[]) {
    this.groups = groups;
  }

  /** Slot kinds this optimiser keeps per parameter. */
  protected abstract readonly slotKinds: readonly string[];

  /**
   * Allocates every slot up front (PyTorch does it on the first step), so that the tensor count is flat
   * from the first step on. Called by the subclasses' constructors.
   */
  protected allocateSlots(): void {
    for (const p of this.paramList) for (const kind of this.slotKinds) this.slot(kind, p);
  }

  /** Replaces the parameter groups (e.g. BN becomes trainable); state of kept parameters stays. */
  setGroups(groups: ParamGroupSpec[]): void {
    this.groups = groups;
    this.allocateSlots();
  }

  get paramList(): Param[] {
    return this.groups.flatMap((g) => g.params);
  }

  protected slot(kind: string, p: Param): tf.Variable {
    const key = `${kind}:${p.name}`;
    let v = this.slots.get(key);
    if (!v) {
      // tf.variable shares the initial tensor's data and takes its own reference: free the temporary.
      const zeros = tf.zerosLike(p.variable);
      v = tf.variable(zeros, false);
      zeros.dispose();
      this.slots.set(key, v);
    }
    return v;
  }

  /** Applies one update. `grads` maps parameter names to gradients; a missing gradient is an error. */
  step(grads: ReadonlyMap<string, tf.Tensor>, lr: number): void {
    this.steps++;
    tf.tidy(() => {
      for (const group of this.groups) {
        for (const p of group.params) {
          const g = grads.get(p.name);
          if (!g) throw new Error(`optimizer: no gradient for parameter '${p.name}'`);
          this.update(p, g, lr * group.lrMult);
        }
      }
    });
  }

  protected abstract update(p: Param, g: tf.Tensor, lr: number): void;
  abstract readonly kind: 'sgd' | 'adam';

  getState(): OptimizerState {
    return { kind: this.kind, step: this.steps, slots: new Map([...this.slots].map(([k, v]) => [k, v as tf.Tensor])) };
  }

  setState(state: OptimizerState): void {
    if (state.kind !== this.kind) throw new Error(`optimizer: state of kind '${state.kind}' cannot load into '${this.kind}'`);
    this.disposeSlots();
    this.steps = state.step;
    // tf.variable takes its own reference to the data: the caller still owns (and disposes) `t`.
    for (const [k, t] of state.slots) this.slots.set(k, tf.variable(t, false));
  }

  private disposeSlots(): void {
    for (const v of this.slots.values()) v.dispose();
    this.slots.clear();
  }

  dispose(): void {
    this.disposeSlots();
  }
}

export class SGD extends NamedOptimizer {
  readonly kind = 'sgd' as const;
  readonly momentum: number;
  readonly weightDecay: number;

  constructor(groups: ParamGroupSpec[], opts: { momentum?: number; weightDecay?: number } = {}) {
    super(groups);
    this.momentum = opts.momentum ?? 0.9;
    this.weightDecay = opts.weightDecay ?? 5e-4;
    this.allocateSlots();
  }

  protected get slotKinds(): readonly string[] {
    return this.momentum ? ['momentum'] : [];
  }

  protected update(p: Param, g: tf.Tensor, lr: number): void {
    const d = this.weightDecay ? tf.add(g, tf.mul(p.variable, this.weightDecay)) : g;
    let dir = d;
    if (this.momentum) {
      const buf = this.slot('momentum', p);
      buf.assign(tf.add(tf.mul(buf, this.momentum), d));
      dir = buf;
    }
    p.variable.assign(tf.sub(p.variable, tf.mul(dir, lr)));
  }
}

export class Adam extends NamedOptimizer {
  readonly kind = 'adam' as const;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;

  constructor(groups: ParamGroupSpec[], opts: { beta1?: number; beta2?: number; eps?: number } = {}) {
    super(groups);
    this.beta1 = opts.beta1 ?? 0.9;
    this.beta2 = opts.beta2 ?? 0.99;
    this.eps = opts.eps ?? 1e-8;
    this.allocateSlots();
  }

  protected readonly slotKinds: readonly string[] = ['m', 'v'];

  protected update(p: Param, g: tf.Tensor, lr: number): void {
    const m = this.slot('m', p);
    const v = this.slot('v', p);
    m.assign(tf.add(tf.mul(m, this.beta1), tf.mul(g, 1 - this.beta1)));
    v.assign(tf.add(tf.mul(v, this.beta2), tf.mul(tf.square(g), 1 - this.beta2)));
    const c1 = 1 - Math.pow(this.beta1, this.steps);
    const c2 = 1 - Math.pow(this.beta2, this.steps);
    // PyTorch: p -= lr / c1 * m / (sqrt(v) / sqrt(c2) + eps)
    const denom = tf.add(tf.div(tf.sqrt(v), Math.sqrt(c2)), this.eps);
    p.variable.assign(tf.sub(p.variable, tf.mul(tf.div(m, denom), lr / c1)));
  }
}

/**
 * Gradients of `loss` w.r.t. `params`, by parameter name, plus the loss value. All intermediates are
 * freed; the caller disposes the returned gradients (or passes them to `step` inside its own tidy).
 */
export function gradients(loss: () => tf.Scalar, params: Param[]): { value: tf.Scalar; grads: Map<string, tf.Tensor> } {
  const { value, grads } = tf.variableGrads(
    loss,
    params.map((p) => p.variable),
  );
  const byVariable = new Map(params.map((p) => [p.variable.name, p.name]));
  const named = new Map<string, tf.Tensor>();
  for (const [varName, g] of Object.entries(grads)) named.set(byVariable.get(varName)!, g);
  return { value, grads: named };
}

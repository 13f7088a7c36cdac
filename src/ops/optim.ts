/**
 * Optimisers with PyTorch semantics and checkpointable state (REFERENCE 2):
 * - `polyLR`: lr = base * (1 - it / maxIter)^power, it = completed iterations;
 * - `SGD`: momentum 0.9, weight decay 5e-4 on every parameter (biases too), no Nesterov, parameter
 *   groups with LR multipliers (classifier x10): d = g + wd * p; buf = mu * buf + d; p -= lr * mult * buf;
 * - `Adam` (the discriminator): betas (0.9, 0.99), bias-corrected, no weight decay.
 * `step` takes gradients by parameter name; state is kept by name, so it survives a checkpoint.
 *
 * On the host backends an update can be one loop over the parameter instead of six to twelve
 * element-wise kernels, whose cost on a small tensor is all dispatch (a small DeepLab's 59 parameters
 * took ~360 kernel calls, 3-6 ms a step): on cpu always, on wasm up to `HOST_LOOP_MAX` elements. The
 * loop rounds to float32 after every operation, in the kernels' order, so the weights and slots come
 * out bit for bit the same: a float32 +, -, *, / or sqrt computed in float64 and rounded once is the
 * correctly rounded float32 result (53 >= 2 * 24 + 2 bits), which is what every kernel gives (the
 * tests compare both paths with Object.is).
 */
import * as tf from '@tensorflow/tfjs';
import { hostTensors, hostView, onHostBackend } from './host-memory.ts';
import type { Param } from './model/params.ts';

const f32 = Math.fround;

let hostUpdates = true;

/**
 * Largest parameter the host loop updates on wasm. A JS loop costs ~8-15 ns an element here, a kernel
 * call ~10 us plus its SIMD pass: the loop wins on small tensors (biases, batch norm) and loses on wide
 * convolutions (measured on a small DeepLab's 59 parameters: SGD 3.0 -> 1.6 ms a step at 4096, 3.3 ms
 * with every parameter on the loop; Adam 6.6 -> 3.0 ms, 5.2 ms).
 */
const HOST_LOOP_MAX = 4096;

/** Tests only: false makes every backend update through tfjs's element-wise kernels. */
export function setHostUpdates(enabled: boolean): void {
  hostUpdates = enabled;
}

/** Whether this update runs as a host loop (checks the gradient's shape, which the kernels would broadcast). */
function onHost(p: Param, g: tf.Tensor): boolean {
  if (!hostUpdates || !onHostBackend() || (tf.getBackend() === 'wasm' && p.variable.size > HOST_LOOP_MAX)) return false;
  if (g.size !== p.variable.size || g.dtype !== 'float32')
    throw new Error(
      `optimizer: gradient of '${p.name}' is ${g.dtype} [${g.shape}], expected float32 [${p.variable.shape}] like the parameter`,
    );
  return true;
}

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
    if (onHost(p, g)) return this.hostUpdate(p, g, lr);
    const d = this.weightDecay ? tf.add(g, tf.mul(p.variable, this.weightDecay)) : g;
    let dir = d;
    if (this.momentum) {
      const buf = this.slot('momentum', p);
      buf.assign(tf.add(tf.mul(buf, this.momentum), d));
      dir = buf;
    }
    p.variable.assign(tf.sub(p.variable, tf.mul(dir, lr)));
  }

  /** `update` as one loop, rounding as its kernels do (a store into a Float32Array rounds too). */
  private hostUpdate(p: Param, g: tf.Tensor, lr: number): void {
    const [wd, mu, rate] = [f32(this.weightDecay), f32(this.momentum), f32(lr)];
    const shape = p.variable.shape;
    if (!this.momentum) {
      const [next] = hostTensors([shape], ([out]) => sgdPlain(hostView(p.variable), hostView(g), out!, wd, rate));
      p.variable.assign(next!);
      return;
    }
    const buf = this.slot('momentum', p);
    const [next, nextBuf] = hostTensors([shape, shape], ([out, bufOut]) =>
      sgdMomentum(hostView(p.variable), hostView(g), hostView(buf), out!, bufOut!, wd, mu, rate),
    );
    buf.assign(nextBuf!);
    p.variable.assign(next!);
  }
}

/** SGD without momentum: w - lr * (g + wd * w) (wd 0: the gradient as it is), float32 after each operation. */
function sgdPlain(w: Float32Array, g: Float32Array, out: Float32Array, wd: number, rate: number): void {
  for (let i = 0; i < w.length; i++) {
    const d = wd ? f32(g[i]! + f32(w[i]! * wd)) : g[i]!;
    out[i] = w[i]! - f32(d * rate);
  }
}

/** SGD with momentum: buf' = mu * buf + (g + wd * w); w - lr * buf', float32 after each operation. */
function sgdMomentum(
  w: Float32Array,
  g: Float32Array,
  buf: Float32Array,
  out: Float32Array,
  bufOut: Float32Array,
  wd: number,
  mu: number,
  rate: number,
): void {
  for (let i = 0; i < w.length; i++) {
    const d = wd ? f32(g[i]! + f32(w[i]! * wd)) : g[i]!;
    const dir = f32(f32(buf[i]! * mu) + d);
    bufOut[i] = dir;
    out[i] = w[i]! - f32(dir * rate);
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
    if (onHost(p, g)) return this.hostUpdate(p, g, lr);
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

  /** `update` as one loop, rounding as its kernels do. */
  private hostUpdate(p: Param, g: tf.Tensor, lr: number): void {
    const m = this.slot('m', p);
    const v = this.slot('v', p);
    const [b1, b2, k1, k2] = [f32(this.beta1), f32(this.beta2), f32(1 - this.beta1), f32(1 - this.beta2)];
    const root2 = f32(Math.sqrt(1 - Math.pow(this.beta2, this.steps)));
    const [eps, rate] = [f32(this.eps), f32(lr / (1 - Math.pow(this.beta1, this.steps)))];
    const shape = p.variable.shape;
    const [next, nextM, nextV] = hostTensors([shape, shape, shape], ([wOut, mOut, vOut]) => {
      const [w, grad, mv, vv] = [hostView(p.variable), hostView(g), hostView(m), hostView(v)];
      for (let i = 0; i < w.length; i++) {
        const gi = grad[i]!;
        const mi = f32(f32(mv[i]! * b1) + f32(gi * k1));
        const vi = f32(f32(vv[i]! * b2) + f32(f32(gi * gi) * k2));
        mOut![i] = mi;
        vOut![i] = vi;
        const denom = f32(f32(f32(Math.sqrt(vi)) / root2) + eps);
        wOut![i] = w[i]! - f32(f32(mi / denom) * rate);
      }
    });
    m.assign(nextM!);
    v.assign(nextV!);
    p.variable.assign(next!);
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

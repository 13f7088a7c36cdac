/**
 * Named parameters of a model, stored as tfjs Variables under PyTorch names (`backbone.layer1.0.conv1.weight`),
 * so that importing PyTorch weights is a name map plus OIHW -> HWIO.
 *
 * tfjs registers variables globally by name, so each store prefixes its variables with a unique id;
 * `name` (the map key) is always the clean PyTorch-style name.
 */
import * as tf from '@tensorflow/tfjs';

export type ParamGroup = 'backbone' | 'classifier' | 'discriminator';
/** weight/bias are trained; bn-affine (BN gamma/beta) only when BN is trainable; bn-stat never (buffers). */
export type ParamRole = 'weight' | 'bias' | 'bn-affine' | 'bn-stat';

export type Initializer = { kind: 'normal'; std: number } | { kind: 'uniform'; bound: number } | { kind: 'const'; value: number };

export interface Param {
  readonly name: string;
  readonly group: ParamGroup;
  readonly role: ParamRole;
  readonly variable: tf.Variable;
}

let nextStoreId = 0;

/** FNV-1a of a string, for per-parameter seeds that do not depend on creation order. */
function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

export class ParamStore {
  readonly params = new Map<string, Param>();
  readonly seed: number;
  private readonly prefix: string;

  constructor(seed: number) {
    this.seed = seed;
    this.prefix = `p${nextStoreId++}/`;
  }

  add(name: string, shape: number[], group: ParamGroup, role: ParamRole, init: Initializer): tf.Variable {
    if (this.params.has(name)) throw new Error(`ParamStore: parameter '${name}' defined twice`);
    const seed = (hash32(name) ^ Math.imul(this.seed + 1, 0x9e3779b1)) >>> 0;
    const value = tf.tidy(() => {
      if (init.kind === 'normal') return tf.randomNormal(shape, 0, init.std, 'float32', seed);
      if (init.kind === 'uniform') return tf.randomUniform(shape, -init.bound, init.bound, 'float32', seed);
      return tf.fill(shape, init.value);
    });
    const variable = tf.variable(value, role === 'weight' || role === 'bias', this.prefix + name);
    value.dispose();
    this.params.set(name, { name, group, role, variable });
    return variable;
  }

  get(name: string): tf.Variable {
    const p = this.params.get(name);
    if (!p) throw new Error(`ParamStore: no parameter named '${name}'`);
    return p.variable;
  }

  /** Clean name of a variable created by this store. */
  nameOf(variable: tf.Variable): string {
    return variable.name.slice(this.prefix.length);
  }

  /** Trainable parameters; BN gamma/beta are included only when BN is trainable. */
  trainable(bnTrainable: boolean): Param[] {
    return [...this.params.values()].filter((p) => p.role === 'weight' || p.role === 'bias' || (bnTrainable && p.role === 'bn-affine'));
  }

  dispose(): void {
    for (const p of this.params.values()) p.variable.dispose();
    this.params.clear();
  }
}

/** PyTorch's default conv init (kaiming_uniform with a = sqrt(5)): U(+-1/sqrt(fan_in)) for weight and bias. */
export function torchDefaultBound(fanIn: number): number {
  return 1 / Math.sqrt(fanIn);
}

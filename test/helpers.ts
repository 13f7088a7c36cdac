/** Shared test helpers: backend set-up, seeded random tensors, numeric comparisons. */
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { selectBackend, type BackendName } from '../src/ops/backend.ts';

export async function useBackend(name: BackendName): Promise<void> {
  await selectBackend(name, { log: () => {} });
}

/** Deterministic pseudo-random floats in [-1, 1) (mulberry32). */
export function seededValues(n: number, seed: number): Float32Array {
  let a = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = (((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1;
  }
  return out;
}

export function randTensor<T extends tf.Tensor = tf.Tensor>(shape: number[], seed: number, scale = 1): T {
  const n = shape.reduce((a, b) => a * b, 1);
  const v = seededValues(n, seed).map((x) => x * scale);
  return tf.tensor(v, shape) as T;
}

/** Max |a - b| relative to max(1, max |b|). */
export function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number, what = ''): void {
  assert.equal(actual.length, expected.length, `${what}: length ${actual.length} vs ${expected.length}`);
  let scale = 1;
  for (let i = 0; i < expected.length; i++) scale = Math.max(scale, Math.abs(expected[i]!));
  let worst = 0;
  let at = -1;
  for (let i = 0; i < expected.length; i++) {
    const d = Math.abs(actual[i]! - expected[i]!);
    if (!(d <= worst)) {
      worst = d;
      at = i;
    }
  }
  assert.ok(
    worst / scale <= tol,
    `${what}: max error ${worst} (relative ${worst / scale}) at ${at}: ${actual[at]} vs ${expected[at]}; tol ${tol}`,
  );
}

/**
 * Central finite differences of a scalar function f(values) at `x` (float64 in JS, calling a float32
 * tfjs function), for the coordinates in `indices`.
 */
export function finiteDiff(f: (x: Float32Array) => number, x: Float32Array, indices: number[], eps = 1e-2): number[] {
  return indices.map((i) => {
    const xp = x.slice();
    xp[i] = xp[i]! + eps;
    const xm = x.slice();
    xm[i] = xm[i]! - eps;
    return (f(xp) - f(xm)) / (2 * eps);
  });
}

/**
 * `fn`'s result with a module's test switch (`set`, e.g. setReluGradWasm) at `on`; the switch is back on,
 * every switch's default, once `fn` returns or throws or, for a promise, once it settles.
 */
export function withSwitch<T>(set: (on: boolean) => void, on: boolean, fn: () => T): T {
  set(on);
  let result: T;
  try {
    result = fn();
  } catch (err) {
    set(true);
    throw err;
  }
  if (result instanceof Promise) return result.finally(() => set(true)) as T;
  set(true);
  return result;
}

/** Same shape and the same float32 values, element for element (-0 and +0 differ); names the first that differs. */
export function assertSameBits(actual: tf.Tensor, expected: tf.Tensor, what: string): void {
  assert.deepEqual(actual.shape, expected.shape, `${what}: shape`);
  assertSameValues(actual.dataSync(), expected.dataSync(), what);
}

/** The same length and values, element for element by Object.is (-0 and +0 differ, NaN equals NaN); names the first that differs. */
export function assertSameValues(actual: ArrayLike<number>, expected: ArrayLike<number>, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) {
    if (!Object.is(actual[i], expected[i])) assert.fail(`${what}: element ${i} is ${actual[i]}, expected ${expected[i]}`);
  }
}

/**
 * Watches `tf.tidy` (through the engine every tf.tidy calls) for callbacks that return host arrays:
 * tidy walks its result for tensors to keep, and walks a typed array element by element (~0.5 us an
 * element; 24 s for ResNet-101's weights). `found` names each such call (array length + the caller);
 * `restore` puts the engine's tidy back.
 */
export function watchTidyResults(minLength = 1024): { found: string[]; restore(): void } {
  const engine = tf.engine() as unknown as { tidy: (...args: unknown[]) => unknown };
  const original = engine.tidy;
  const found: string[] = [];
  const arraysIn = (v: unknown, depth: number): number[] => {
    if (ArrayBuffer.isView(v))
      return (v as unknown as ArrayLike<number>).length >= minLength ? [(v as unknown as ArrayLike<number>).length] : [];
    if (depth === 0 || v === null || typeof v !== 'object' || v instanceof tf.Tensor) return [];
    return Object.values(v as object).flatMap((x) => arraysIn(x, depth - 1));
  };
  engine.tidy = function (this: unknown, ...args: unknown[]) {
    const result = original.apply(this, args);
    const big = arraysIn(result, 3);
    if (big.length) {
      const caller = (new Error().stack ?? '').split('\n').find((l) => /\/(src|bench|pipelines)\//.test(l)) ?? '(unknown caller)';
      found.push(`typed array(s) of ${big.join(', ')} elements returned from tf.tidy ${caller.trim()}`);
    }
    return result;
  };
  return {
    found,
    restore: () => {
      engine.tidy = original;
    },
  };
}

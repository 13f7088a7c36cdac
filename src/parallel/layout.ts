/**
 * Named variables laid out in one flat Float32 area (weights broadcast, gradient slots): the offsets
 * follow the sorted names, so the main thread and every worker agree without exchanging anything but
 * the names and shapes.
 */
import * as tf from '@tensorflow/tfjs';
import { floatValues, hostTensor, onHostBackend } from '../ops/host-memory.ts';

export interface Layout {
  names: string[];
  offsets: Map<string, number>;
  sizes: Map<string, number>;
  /** Elements in all. */
  total: number;
}

export function layoutOf(variables: ReadonlyMap<string, tf.Variable>): Layout {
  const names = [...variables.keys()].sort();
  const offsets = new Map<string, number>();
  const sizes = new Map<string, number>();
  let total = 0;
  for (const name of names) {
    const size = variables.get(name)!.size;
    offsets.set(name, total);
    sizes.set(name, size);
    total += size;
  }
  return { names, offsets, sizes, total };
}

/** Copies the variables' values into `area` at their offsets. */
export function writeVariables(layout: Layout, variables: ReadonlyMap<string, tf.Variable>, area: Float32Array): void {
  for (const name of layout.names) area.set(floatValues(variables.get(name)!), layout.offsets.get(name)!);
}

/** Assigns every variable its value from `area` (on the host backends copied once, into the backend's memory). */
export function readVariables(layout: Layout, variables: ReadonlyMap<string, tf.Variable>, area: Float32Array): void {
  const host = onHostBackend();
  for (const name of layout.names) {
    const v = variables.get(name)!;
    const at = layout.offsets.get(name)!;
    const values = area.subarray(at, at + layout.sizes.get(name)!);
    tf.tidy(() => v.assign(host ? hostTensor(v.shape, (out) => out.set(values)) : tf.tensor(values, v.shape)));
  }
}

/** Checks that a replica's variables have the main model's names and sizes (`expected`: name -> size). */
export function checkSameLayout(expected: ReadonlyMap<string, number>, variables: ReadonlyMap<string, tf.Variable>, who: string): void {
  const problems = [
    ...[...expected]
      .filter(([n, size]) => variables.get(n)?.size !== size)
      .map(([n, size]) => `${n}: size ${variables.get(n)?.size ?? 'missing'}, expected ${size}`),
    ...[...variables.keys()].filter((n) => !expected.has(n)).map((n) => `${n}: not in the main model`),
  ];
  if (problems.length)
    throw new Error(
      `${who}: the replica's variables differ from the main model's (${problems.slice(0, 3).join('; ')}${problems.length > 3 ? `; ${problems.length - 3} more` : ''})`,
    );
}

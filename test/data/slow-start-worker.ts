/**
 * A piscina worker module for test/data/pool.test.ts that takes 300 ms to load (as one loading native
 * addons does) and then counts itself as loaded in the shared counter it was given.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { workerData } from 'piscina';

await sleep(300);
Atomics.add(new Int32Array(workerData as SharedArrayBuffer), 0, 1);

export default function echo(x: unknown): unknown {
  return x;
}

export { ready } from '../../src/data/pool.ts';

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Piscina } from 'piscina';
import { destroyPool } from '../../src/data/pool.ts';

const filename = new URL('./slow-start-worker.ts', import.meta.url).href;

test('destroyPool: every worker has loaded its module before the pool ends (a plain destroy ends them mid-load)', async () => {
  // what a pool ended right after its start does: neither worker has finished loading
  const plainLoaded = new SharedArrayBuffer(4);
  const plain = new Piscina({ filename, minThreads: 2, maxThreads: 2, workerData: plainLoaded });
  await plain.destroy();
  assert.equal(Atomics.load(new Int32Array(plainLoaded), 0), 0);

  const loaded = new SharedArrayBuffer(4);
  const pool = new Piscina({ filename, minThreads: 2, maxThreads: 2, workerData: loaded });
  assert.equal(pool.threads.length, 2);
  const t0 = performance.now();
  await destroyPool(pool);
  assert.equal(Atomics.load(new Int32Array(loaded), 0), 2, 'both workers loaded their module');
  assert.ok(performance.now() - t0 >= 250, 'it waited for the 300 ms load');
  assert.equal(pool.threads.length, 0);
});

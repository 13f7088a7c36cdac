/**
 * Ending a piscina pool without aborting the process. A worker terminated while it is still loading its
 * module's native addons (lmdb, sharp) takes the whole process down: node-addon-api makes an exception
 * it cannot throw into a terminating thread fatal ("FATAL ERROR: Error::ThrowAsJavaScriptException
 * napi_throw"; seen in CI when an ingest of one record ended while the pool's second worker was still
 * loading lmdb). So each worker first answers one no-op task (`ready` below, which every worker module
 * of this project re-exports): a worker takes a task only once its module is loaded, and piscina hands concurrent
 * tasks to distinct idle workers.
 */
import type { Piscina } from 'piscina';

/** The no-op task: each worker module re-exports it (`export { ready } from './pool.ts'`). */
export function ready(): null {
  return null;
}

/** Waits until every worker of `pool` has loaded its module, then destroys the pool. */
export async function destroyPool(pool: Piscina): Promise<void> {
  await Promise.allSettled(pool.threads.map(() => pool.run(null, { name: ready.name })));
  await pool.destroy();
}

/**
 * tfjs-wasm's multi-threaded build under Node (src/ops/wasm-threads.ts): kernel threads change the
 * speed, not the arithmetic. Each run is a child process (the backend's threads are fixed once it
 * starts): 4 training steps of the small DeepLab with trainable BN (test/fixtures/wasm-threads-child.ts),
 * at 1 and 2 kernel threads, alone and data-parallel over 2 replicas.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { selectBackend } from '../../src/ops/backend.ts';
import { prepareWasmThreads } from '../../src/ops/wasm-threads.ts';
import { kernelThreadsOf, replicasAsked } from '../../src/recipe/trainer.ts';
import { PRESETS, mergeConfig } from '../../src/recipe/config.ts';
import { availableParallelism } from 'node:os';

const CHILD = fileURLToPath(new URL('../fixtures/wasm-threads-child.ts', import.meta.url));

interface ChildRun {
  log: string[];
  kernelThreads: number;
  workerKernelThreads: number[];
  /** Jobs our filter-gradient kernel's helper threads ran in the main thread's backend (one entry per helper). */
  helperJobs: number[];
  losses: number[];
  weights: Record<string, string>;
  /** sha256 of an input gradient on conv.ts's matmul path. */
  wideInputGrad: string;
}

function child(kernelThreads: number, replicas: number, bn = 'trainable'): ChildRun {
  // the timeout fails a child whose thread pool keeps it alive after its last line
  const r = spawnSync(process.execPath, [CHILD, '--kernel-threads', String(kernelThreads), '--replicas', String(replicas), '--bn', bn], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  assert.equal(r.signal, null, `child (kernel threads ${kernelThreads}, replicas ${replicas}) did not exit by itself: ${r.stderr}`);
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as ChildRun;
}

test('2 kernel threads train bit-identically to 1, alone and in data-parallel replicas, and the process exits by itself', () => {
  const one = child(1, 1);
  const two = child(2, 1);
  assert.deepEqual(one.log, ['backend: wasm']);
  assert.deepEqual(two.log, ['backend: wasm, 2 kernel threads']);
  assert.equal(one.kernelThreads, 1);
  assert.equal(two.kernelThreads, 2);
  assert.equal(Object.keys(one.weights).length, 59);
  // at 2 kernel threads our filter-gradient kernel shares its calls with a helper thread
  assert.deepEqual(one.helperJobs, []);
  assert.equal(two.helperJobs.length, 1);
  assert.ok(two.helperJobs[0]! > 100, `helper jobs ${two.helperJobs}`);
  assert.deepEqual(two.losses, one.losses);
  assert.deepEqual(two.weights, one.weights);
  // the weights moved: the equality is not that of an idle model
  assert.ok(one.losses[3]! < one.losses[0]! - 0.01, `losses ${one.losses}`);
  // the matmul input gradient: the same bits with the matmul split over the pool
  assert.match(one.wideInputGrad, /^[0-9a-f]{64}$/);
  assert.equal(two.wideInputGrad, one.wideInputGrad);

  const dp1 = child(1, 2);
  const dp2 = child(2, 2);
  assert.deepEqual(dp1.workerKernelThreads, [1]);
  assert.deepEqual(dp2.workerKernelThreads, [2]);
  assert.equal(dp2.kernelThreads, 2);
  assert.deepEqual(dp2.losses, dp1.losses);
  assert.deepEqual(dp2.weights, dp1.weights);
  // data-parallel sums in another order: equal to one replica to float tolerance, not in bits
  for (let i = 0; i < 4; i++) assert.ok(Math.abs(dp1.losses[i]! - one.losses[i]!) < 1e-5 * one.losses[i]!, `step ${i + 1}`);
});

test("frozen BN: 2 kernel threads train bit-identically to 1 (frozen batch norm's wasm passes on the threaded build's shared memory)", () => {
  const [one, two] = [child(1, 1, 'frozen'), child(2, 1, 'frozen')];
  assert.equal(two.kernelThreads, 2);
  assert.deepEqual(two.losses, one.losses);
  assert.deepEqual(two.weights, one.weights);
  assert.ok(one.losses[3]! < one.losses[0]! - 0.01, `losses ${one.losses}`);
});

test("a shared memory grown behind the heap views' back: the backend still owns their buffer (identity with memory.buffer does not hold), frozen BN's passes run with the formula's bits", () => {
  const file = fileURLToPath(new URL('../fixtures/shared-heap-child.ts', import.meta.url));
  const r = spawnSync(process.execPath, [file], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout.trim().split('\n').pop()!), {
    grown: true,
    shared: true,
    identity: false,
    holds: true,
    foreign: false,
    loopsTaken: true,
    passesRan: true,
    sameBits: true,
  });
});

test('kernel threads: bad requests name what was expected; a backend already started keeps its threads and says so', async () => {
  await assert.rejects(
    selectBackend('wasm', { log: () => {}, wasmThreads: 0 }),
    /^Error: backend: wasmThreads must be an integer >= 1, got 0$/,
  );
  await assert.rejects(prepareWasmThreads(1), /^Error: wasm threads: expected an integer in 2\.\.64, got 1$/);
  const lines: string[] = [];
  await selectBackend('wasm', { log: () => {} });
  assert.equal(await selectBackend('wasm', { log: (l) => lines.push(l), wasmThreads: 2 }), 'wasm');
  assert.deepEqual(lines, ['backend: wasm, 1 kernel threads (started earlier in this process; 2 asked)']);
  await assert.rejects(
    prepareWasmThreads(2),
    /^Error: wasm threads: the wasm backend is already initialised \(set the threads before the backend\)$/,
  );
});

test('train.threads 0 is one replica on wasm (one per core on cpu); train.kernelThreads 0 gives each replica the cores left to it', () => {
  const cores = availableParallelism();
  const cfg = (train: { threads: number; kernelThreads: number }) => mergeConfig(PRESETS.synthetic!(), { train }, 'test');
  assert.deepEqual(PRESETS.synthetic!().train, { threads: 0, kernelThreads: 0 });
  assert.equal(replicasAsked(cfg({ threads: 0, kernelThreads: 0 }), 'wasm'), 1);
  assert.equal(replicasAsked(cfg({ threads: 0, kernelThreads: 0 }), 'cpu'), cores);
  assert.equal(replicasAsked(cfg({ threads: 3, kernelThreads: 0 }), 'wasm'), 3);
  assert.equal(kernelThreadsOf(cfg({ threads: 0, kernelThreads: 0 })), cores);
  assert.equal(kernelThreadsOf(cfg({ threads: 1, kernelThreads: 0 })), cores);
  assert.equal(kernelThreadsOf(cfg({ threads: 2, kernelThreads: 0 })), Math.max(1, Math.floor(cores / 2)));
  assert.equal(kernelThreadsOf(cfg({ threads: 64, kernelThreads: 0 })), 1);
  assert.equal(kernelThreadsOf(cfg({ threads: 1, kernelThreads: 3 })), 3);
});

/**
 * src/parallel/layout.ts: the weights' trip through shared memory (main thread -> area -> a replica's
 * variables) keeps every bit, in the layout's order, and leaves no tensor behind, on both host backends.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { floatValues } from '../../src/ops/host-memory.ts';
import { layoutOf, readVariables, writeVariables } from '../../src/parallel/layout.ts';
import { seededValues, useBackend } from '../helpers.ts';

for (const backend of ['cpu', 'wasm'] as const) {
  test(`layout on ${backend}: variables -> shared area -> other variables keep every bit, sorted by name, no tensor left`, async () => {
    await useBackend(backend);
    const shapes: Record<string, number[]> = { 'b.weight': [3, 3, 2, 4], 'a.bias': [4], 'c.running_var': [7] };
    const make = (seed: number) =>
      new Map(
        Object.entries(shapes).map(([name, shape], k) => {
          const n = shape.reduce((a, b) => a * b, 1);
          // odd values: a subnormal, -0, large magnitudes
          const values = seededValues(n, seed + k).map((v, i) => (i === 0 ? 1e-41 : i === 1 ? -0 : v * 10 ** (i % 7)));
          return [name, tf.variable(tf.tensor(values, shape), true, `layout-${backend}-${seed}-${name}`)];
        }),
      );
    const main = make(1);
    const replica = make(50);
    const layout = layoutOf(main);
    assert.deepEqual(layout.names, ['a.bias', 'b.weight', 'c.running_var']);
    assert.deepEqual([...layout.offsets.values()], [0, 4, 76]);
    assert.equal(layout.total, 83);
    const area = new Float32Array(new SharedArrayBuffer(layout.total * 4));
    writeVariables(layout, main, area);
    assert.ok(Object.is(area[4], Math.fround(1e-41)) && Object.is(area[5], -0), 'a subnormal and -0 of b.weight at offset 4');
    const before = tf.memory().numTensors;
    readVariables(layout, replica, area);
    assert.equal(tf.memory().numTensors, before, 'tensors after readVariables');
    for (const [name, v] of main) {
      const [want, got] = [v.dataSync(), replica.get(name)!.dataSync()];
      const differ = want.findIndex((x, i) => !Object.is(x, got[i]));
      assert.equal(differ, -1, `${name}: first differing element`);
      assert.deepEqual(replica.get(name)!.shape, v.shape);
    }
    // the replica's variables own their data: the area changing later leaves them as they were
    area.fill(7);
    assert.equal(replica.get('a.bias')!.dataSync()[0], main.get('a.bias')!.dataSync()[0]);
    assert.equal(floatValues(main.get('c.running_var')!).length, 7);
    for (const v of [...main.values(), ...replica.values()]) v.dispose();
  });
}

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { lastValueFrom, of } from 'rxjs';
import { evaluate } from '../../src/stages/evaluate.ts';
import { useBackend, assertClose } from '../helpers.ts';
import { oracleModel, batchOf } from './fixtures.ts';

test('evaluate: a perfect model scores IoU 1 on present classes; one wrong column gives the hand-computed IoU', async () => {
  await useBackend('cpu');
  const b = batchOf(
    [
      [0, 0, 1, 1],
      [2, 2, 2, 255],
    ],
    ['a', 'b'],
  );
  const perfect = await lastValueFrom(of(b).pipe(evaluate({ model: oracleModel(3), numClasses: 3, release: () => {} })));
  assert.deepEqual(
    perfect.classIoU.map((v) => +v.toFixed(6)),
    [1, 1, 1],
  );
  assert.equal(perfect.images, 2);
  // flipEvery 2: columns 0 and 2 are predicted as class 1
  const wrong = await lastValueFrom(of(b).pipe(evaluate({ model: oracleModel(3, 2), numClasses: 3, release: () => {} })));
  // labels: class0 at (0,0),(0,1); class1 at (0,2),(0,3); class2 at (1,0),(1,1),(1,2); (1,3) ignored
  // preds:  (0,0)->1 (0,1)->0 (0,2)->1 (0,3)->1 (1,0)->1 (1,1)->2 (1,2)->1
  // class0: I=1, U=2; class1: I=2, U = 5 predicted + 2 labelled - 2 = 5; class2: I=1, U=3
  assertClose(wrong.classIoU, [0.5, 0.4, 1 / 3], 1e-6, 'IoU');
  assert.ok(Math.abs(wrong.miou - (0.5 + 0.4 + 1 / 3) / 3) < 1e-6);
});

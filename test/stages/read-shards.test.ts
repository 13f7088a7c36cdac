import { test } from 'node:test';
import assert from 'node:assert/strict';
import { lastValueFrom, toArray } from 'rxjs';
import { Credits } from '../../src/graph/flow.ts';

test('readShards: one ref per credit with per-sample seeds from (run seed, stream, draw index); a pass ends after count', async () => {
  const { readShards, inOrder } = await import('../../src/stages/read-shards.ts');
  const { Rng } = await import('../../src/data/rng.ts');
  const dataset = { dir: 'd', keys: ['a', 'b', 'c'] } as unknown as Parameters<typeof readShards>[0]['dataset'];
  const credits = new Credits(8);
  const refs = await lastValueFrom(
    readShards({ dataset, sampler: inOrder(['a', 'b', 'c']), credits, seed: 7, stream: 3, count: 3, start: 5 }).pipe(toArray()),
  );
  assert.deepEqual(
    refs.map((r) => [r.key, r.index]),
    [
      ['a', 5],
      ['b', 6],
      ['c', 7],
    ],
  );
  assert.deepEqual(
    refs.map((r) => r.seed),
    [5, 6, 7].map((i) => Rng.derive(7, 3, i).nextU32()),
  );
  assert.equal(credits.inFlight, 3);
});

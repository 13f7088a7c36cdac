import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { lastValueFrom, of } from 'rxjs';
import { currentGeneration, generationFile } from '../../src/data/pseudo-labels.ts';
import type { SegModel } from '../../src/ops/model/deeplab.ts';
import { estimateThresholds } from '../../src/stages/estimate-thresholds.ts';
import { writeGeneration } from '../../src/stages/write-pseudo-labels.ts';
import { useBackend, assertClose, watchTidyResults } from '../helpers.ts';
import { batchOf } from './fixtures.ts';

test('thresholds + pseudo-labels: per-class upper median capped, labels kept where p >= threshold, one generation switched in', async () => {
  await useBackend('cpu');
  const dir = await mkdtemp(join(tmpdir(), 'spcl-pl-'));
  // Confidences per pixel come from logits: class 0 with margins giving p = 0.6, 0.7, 0.8, 0.95; class 1 at 0.99
  const probs = [0.6, 0.7, 0.8, 0.95, 0.99];
  const classes = [0, 0, 0, 0, 1];
  const model = {
    forward: (x: tf.Tensor4D) =>
      tf.tidy(() => {
        const n = x.shape[0];
        const logit = (p: number) => Math.log(p / (1 - p)); // 2 classes: softmax([l, 0]) = p
        const row = probs.flatMap((p, i) => (classes[i] === 0 ? [logit(p), 0] : [0, logit(p)]));
        const logits = tf.tensor4d(Array.from({ length: n }, () => row).flat(), [n, 1, 5, 2]);
        return { features: logits, logits };
      }),
  } as unknown as SegModel;
  const b = batchOf([[0, 0, 0, 0, 0]], ['img'], false);
  // the pass reads its predictions back outside tf.tidy (this image's 5 pixels stand for 512x1024)
  const tidy = watchTidyResults(1);
  const t = await lastValueFrom(
    of(b).pipe(estimateThresholds({ model, numClasses: 2, bins: 65536, cap: 0.9, scratch: join(dir, 'scratch.lmdb'), release: () => {} })),
  );
  tidy.restore();
  assert.deepEqual(tidy.found, []);
  // class 0: sorted [0.6, 0.7, 0.8, 0.95], index round_half_even(4/2) = 2 -> 0.8; class 1: one pixel 0.99 -> capped 0.9
  assertClose(t.thresholds, [0.8, 0.9], 1e-4, 'thresholds');
  assert.deepEqual(t.counts, [4, 1]);
  const info = await writeGeneration(t, { dir: join(dir, 'pl'), numClasses: 2, keep: 2, source: { phase: 'test' } });
  assert.equal(info.generation, 1);
  assert.deepEqual((await currentGeneration(join(dir, 'pl')))!.thresholds, t.thresholds);
  const { open } = await import('lmdb');
  const db = open({ path: join(dir, 'pl', generationFile(1)), compression: true, maxDbs: 2, readOnly: true }).openDB<
    { labels: Uint8Array },
    string
  >({ name: 'labels', encoding: 'msgpack' });
  // 0.6, 0.7 < 0.8 -> 255; 0.8 >= 0.8 kept; 0.95 kept; 0.99 >= 0.9 kept (class 1)
  assert.deepEqual(Array.from(db.get('img')!.labels), [255, 255, 0, 0, 1]);
  assertClose(info.coverage, [0.5, 1], 1e-9, 'coverage');
  await db.close();
  const t2 = await lastValueFrom(
    of(b).pipe(estimateThresholds({ model, numClasses: 2, bins: 65536, cap: 0.9, scratch: join(dir, 'scratch.lmdb'), release: () => {} })),
  );
  const second = await writeGeneration(t2, { dir: join(dir, 'pl'), numClasses: 2, keep: 1, source: {} });
  assert.equal(second.generation, 2);
  assert.deepEqual(
    (await readdir(join(dir, 'pl'))).filter((f) => f.endsWith('.lmdb')),
    [generationFile(2)],
  );
  await rm(dir, { recursive: true });
});

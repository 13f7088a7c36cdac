import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { CheckpointStore } from '../../src/stages/checkpoint.ts';
import { useBackend } from '../helpers.ts';

test('CheckpointStore: latest pointer, best per phase by mIoU, keeps the newest N plus pinned ones', async () => {
  await useBackend('cpu');
  const dir = await mkdtemp(join(tmpdir(), 'spcl-ckpt-'));
  const store = new CheckpointStore(dir, 2);
  const state = (v: number) => ({ model: new Map([['w', tf.tensor1d([v])]]), meta: { v } });
  await store.save(state(1), 'warmup', 10, 0.3);
  await store.save(state(2), 'warmup', 20, 0.2);
  await new Promise((r) => setTimeout(r, 20));
  await store.save(state(3), 'warmup', 30, null);
  await new Promise((r) => setTimeout(r, 20));
  await store.save(state(4), 'spcl', 5, null);
  assert.equal((await store.latest())!.file, CheckpointStore.fileName('spcl', 5));
  assert.equal((await store.best('warmup'))!.iteration, 10);
  const files = (await readdir(dir)).filter((f) => f.endsWith('.safetensors')).sort();
  // newest two (spcl 5, warmup 30) + the best (warmup 10); warmup 20 pruned
  assert.deepEqual(
    files,
    [CheckpointStore.fileName('spcl', 5), CheckpointStore.fileName('warmup', 10), CheckpointStore.fileName('warmup', 30)].sort(),
  );
  const loaded = await store.load((await store.best('warmup'))!);
  assert.deepEqual(Array.from(loaded.model.get('w')!.dataSync()), [1]);
  await rm(dir, { recursive: true });
});

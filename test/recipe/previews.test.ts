import { test } from 'node:test';
import assert from 'node:assert/strict';
import { from } from 'rxjs';
import sharp from 'sharp';
import * as tf from '@tensorflow/tfjs';
import { normalizeInto } from '../../src/data/augment.ts';
import { CITYSCAPES_PALETTE } from '../../src/data/palette.ts';
import { classColours, denormalize, previewImages, previewPngs, previewSize, PREVIEW_WIDTH } from '../../src/recipe/previews.ts';
import { useBackend } from '../helpers.ts';
import { batchOf, oracleModel } from '../stages/fixtures.ts';

test('denormalize undoes normalizeInto exactly: every byte value of every channel comes back', () => {
  const w = 256;
  const bytes = new Uint8Array(w * 3);
  for (let x = 0; x < w; x++) for (let c = 0; c < 3; c++) bytes[3 * x + c] = (x + 85 * c) % 256; // every value in every channel
  const out = new Float32Array(2 * w * 3);
  normalizeInto(bytes, w, 1, out, w * 3); // as sample 1 of a batch of 2
  assert.deepEqual(denormalize(out, 1, w, 1), bytes);
});

test('previewImages: per image the truth and the argmax prediction as evaluate computes them, every batch released', async () => {
  await useBackend('cpu');
  const tensors = tf.memory().numTensors;
  const released: string[] = [];
  const batch = (rows: number[][], keys: string[]) => ({ ...batchOf(rows, keys), release: () => released.push(keys.join()) });
  // oracle model with flipEvery 2: columns 0 and 2 are predicted as class 1, the others as the image's class
  const images = await previewImages(
    from([
      batch(
        [
          [0, 0, 2, 2],
          [3, 3, 255, 3],
        ],
        ['a', 'b'],
      ),
      batch([[4, 4, 4, 4]], ['c']),
    ]),
    oracleModel(5, 2),
    5,
  );
  assert.deepEqual(
    images.map((p) => p.key),
    ['a', 'b', 'c'],
  );
  assert.deepEqual([...images[0]!.truth], [0, 0, 2, 2]);
  assert.deepEqual([...images[0]!.prediction], [1, 0, 1, 2]);
  assert.deepEqual([...images[1]!.truth], [3, 3, 255, 3]);
  assert.deepEqual([...images[2]!.prediction], [1, 4, 1, 4]);
  assert.deepEqual(released, ['a,b', 'c']);
  assert.equal(tf.memory().numTensors, tensors, 'no tensor left behind');
});

test('previewPngs: truth and prediction in Cityscapes colours at the label size (nearest), the input resized to it', async () => {
  await useBackend('cpu');
  const [image] = await previewImages(from([batchOf([[0, 1, 2, 255]], ['k'])]), oracleModel(19), 19);
  const png = await previewPngs(image!, 19);
  const raw = async (b: Buffer) => {
    const { data, info } = await sharp(b).raw().toBuffer({ resolveWithObject: true });
    return { data: [...data], width: info.width, height: info.height, channels: info.channels };
  };
  const truth = await raw(png.truth);
  assert.deepEqual([truth.width, truth.height, truth.channels], [4, 1, 3]);
  assert.deepEqual(truth.data, [...CITYSCAPES_PALETTE[0]!, ...CITYSCAPES_PALETTE[1]!, ...CITYSCAPES_PALETTE[2]!, 0, 0, 0]);
  // the oracle predicts 255 (image channel 0) as no class in 0..18: argmax of all-zero logits is class 0
  const pred = await raw(png.prediction);
  assert.deepEqual(pred.data.slice(0, 9), [...CITYSCAPES_PALETTE[0]!, ...CITYSCAPES_PALETTE[1]!, ...CITYSCAPES_PALETTE[2]!]);
  const input = await raw(png.input);
  assert.deepEqual([input.width, input.height], [4, 1]);
  // wide labels shrink to PREVIEW_WIDTH, keeping the aspect; narrow ones keep their size
  assert.deepEqual(previewSize(2048, 1024), [PREVIEW_WIDTH, PREVIEW_WIDTH / 2]);
  assert.deepEqual(previewSize(256, 128), [256, 128]);
});

test('classColours: 19 classes in Cityscapes colours, a SYNTHIA ID in its Cityscapes class colour, no class black', () => {
  assert.deepEqual([...classColours([0, 10, 255], 19)], [...CITYSCAPES_PALETTE[0]!, ...CITYSCAPES_PALETTE[10]!, 0, 0, 0]);
  // the 16-class train ID 9 is sky (19-class ID 10), not terrain (19-class ID 9)
  assert.deepEqual([...classColours([9, 15, 16], 16)], [...CITYSCAPES_PALETTE[10]!, ...CITYSCAPES_PALETTE[18]!, 0, 0, 0]);
});

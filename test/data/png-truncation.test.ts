import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encodePng } from '../../src/data/png.ts';
import { pngTruncation } from '../../src/data/png-truncation.ts';

const png = encodePng({ width: 4, height: 3, channels: 3, bitDepth: 8, data: new Uint8Array(36).fill(7) });

test('pngTruncation: a whole PNG and non-PNG bytes pass; a PNG cut inside a chunk or before IEND is named with its sizes', () => {
  assert.equal(pngTruncation(png), null);
  assert.equal(pngTruncation(Buffer.from('not a png at all')), null);
  assert.equal(pngTruncation(Buffer.from([0xff, 0xd8, 0xff, 0xe0])), null); // JPEG: the decoder's
  // signature (8) + IHDR (12 + 13 = 25) + IDAT (12 + n) + IEND (12): cutting 20 bytes ends inside IDAT
  const idatEnd = png.length - 12;
  assert.equal(
    pngTruncation(png.subarray(0, png.length - 20)),
    `truncated: the file ends inside its IDAT chunk (${png.length - 20} bytes, the chunk needs ${idatEnd})`,
  );
  // IEND missing as a whole: every chunk before it is complete
  assert.equal(pngTruncation(png.subarray(0, idatEnd)), `truncated: the file ends before its IEND chunk (${idatEnd} bytes)`);
  // a cut inside a chunk header (fewer than 8 bytes of it left) is a missing IEND too
  assert.equal(pngTruncation(png.subarray(0, idatEnd + 5)), `truncated: the file ends before its IEND chunk (${idatEnd + 5} bytes)`);
});

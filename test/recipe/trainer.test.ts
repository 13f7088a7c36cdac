/** The trainer's small helpers: the durations progress lines show. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { duration } from '../../src/recipe/trainer.ts';

test('duration: seconds below a minute, minutes and zero-padded seconds below an hour, then hours and minutes', () => {
  assert.deepEqual([0, 0.4, 44.6, 59.4, 60, 725, 3599, 3600, 12_000, 90_061].map(duration), [
    '0s',
    '0s',
    '45s',
    '59s',
    '1m00s',
    '12m05s',
    '59m59s',
    '1h00m',
    '3h20m',
    '25h01m',
  ]);
});

/**
 * Error slots (src/ops/error-slots.ts): the messages data-parallel replicas and the filter-gradient
 * kernel's helpers leave in shared memory for the thread that waits on them.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ERROR_SLOT_BYTES, errorSlots, readErrorSlot, writeErrorSlot } from '../../src/ops/error-slots.ts';

test('error slots: each slot keeps its own message; an empty slot reads as empty; a rewrite clears the longer text before it', () => {
  const buffer = errorSlots(3);
  assert.equal(buffer.byteLength, 3 * ERROR_SLOT_BYTES);
  assert.equal(readErrorSlot(buffer, 1), '');
  writeErrorSlot(buffer, 0, new Error('replica 0: out of memory'));
  writeErrorSlot(buffer, 2, 'not an Error: a string');
  assert.equal(readErrorSlot(buffer, 0), 'replica 0: out of memory');
  assert.equal(readErrorSlot(buffer, 1), '');
  assert.equal(readErrorSlot(buffer, 2), 'not an Error: a string');
  writeErrorSlot(buffer, 0, new Error('short'));
  assert.equal(readErrorSlot(buffer, 0), 'short');
});

test('error slots: a long message keeps its first 512 characters, whole ones even where each takes 3 bytes', () => {
  const buffer = errorSlots(1);
  writeErrorSlot(buffer, 0, new Error('x'.repeat(5000)));
  assert.equal(readErrorSlot(buffer, 0), 'x'.repeat(512));
  // 3 UTF-8 bytes a character: 512 of them are 1536 bytes, within the 2047 a slot holds before its zero
  writeErrorSlot(buffer, 0, new Error('€'.repeat(1000)));
  assert.equal(readErrorSlot(buffer, 0), '€'.repeat(512));
});

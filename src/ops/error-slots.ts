/**
 * Error messages that threads leave for each other in shared memory: a SharedArrayBuffer cut into slots
 * of `ERROR_SLOT_BYTES`, one per thread, each a UTF-8 message ended by a zero byte (or by the slot's end).
 * A thread that fails writes its slot before it signals; the one that waits reads it after.
 */

/** Bytes of one thread's slot. */
export const ERROR_SLOT_BYTES = 2048;

/** A buffer of `slots` empty slots. */
export function errorSlots(slots: number): SharedArrayBuffer {
  return new SharedArrayBuffer(slots * ERROR_SLOT_BYTES);
}

/** `err`'s message into slot `slot` (at most a quarter of the slot in characters: whole characters fit). */
export function writeErrorSlot(buffer: SharedArrayBuffer, slot: number, err: unknown): void {
  const bytes = new Uint8Array(buffer, slot * ERROR_SLOT_BYTES, ERROR_SLOT_BYTES);
  const text = new TextEncoder().encode(String((err as Error)?.message ?? err).slice(0, ERROR_SLOT_BYTES / 4));
  bytes.fill(0);
  bytes.set(text.subarray(0, ERROR_SLOT_BYTES - 1));
}

/** The message in slot `slot` ('' when none was written). */
export function readErrorSlot(buffer: SharedArrayBuffer, slot: number): string {
  const bytes = new Uint8Array(buffer, slot * ERROR_SLOT_BYTES, ERROR_SLOT_BYTES);
  const end = bytes.indexOf(0);
  return new TextDecoder().decode(bytes.slice(0, end < 0 ? ERROR_SLOT_BYTES : end));
}

/**
 * Moving buffers between the main thread and piscina workers without copying: piscina transfers the
 * listed ArrayBuffers of a value marked with its transferable/value symbols.
 */
import { move, transferableSymbol, valueSymbol } from 'piscina';

export interface Movable<T> {
  readonly [transferableSymbol]: readonly ArrayBufferLike[];
  readonly [valueSymbol]: T;
}

/** Marks `value` so that piscina moves `buffers` (detaching them on the sending side) instead of copying. */
export function moveWith<T>(value: T, buffers: readonly ArrayBufferLike[]): Movable<T> {
  const unique = [...new Set(buffers)];
  const movable: Movable<T> = { [transferableSymbol]: unique, [valueSymbol]: value };
  move(movable as unknown as Parameters<typeof move>[0]); // marks it movable (in place)
  return movable;
}

/**
 * The bytes in an ArrayBuffer of their own. Node's small Buffers live in a shared pool: transferring
 * their ArrayBuffer would detach every other Buffer in that pool, so those are copied first.
 */
export function ownBytes(bytes: Uint8Array): Uint8Array {
  return bytes.byteOffset === 0 && bytes.buffer.byteLength === bytes.byteLength ? bytes : new Uint8Array(bytes);
}

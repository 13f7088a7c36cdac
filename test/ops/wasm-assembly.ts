/**
 * Test helpers for the modules of src/ops/wasm: both variants instantiated on fresh memories, and the
 * committed .wasm files against what wabt assembles from their .wat (what `npm run build:wasm` runs): a
 * .wat edited without rebuilding, or a .wasm edited by hand, fails.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import wabtInit from 'wabt';

const dir = new URL('../../src/ops/wasm/', import.meta.url);
const SHARED = '(memory 1 65536 shared)';

/** src/ops/wasm/<file> as bytes. */
export function wasmFile(file: string): Uint8Array {
  return new Uint8Array(readFileSync(new URL(file, dir)));
}

const wa = (globalThis as unknown as { WebAssembly: any }).WebAssembly;

/** A module variant instantiated on a memory of its own. */
export interface FreshInstance {
  file: string;
  memory: { buffer: ArrayBuffer | SharedArrayBuffer };
  exports: any;
}

/**
 * `<name>.wasm` on a fresh shared memory (the threaded build's kind) and `<name>-unshared.wasm` on a fresh
 * unshared one (the one-thread build's), each of `pages` 64 KiB pages.
 */
export function onFreshMemories(name: string, pages: number): FreshInstance[] {
  return [
    [`${name}.wasm`, true],
    [`${name}-unshared.wasm`, false],
  ].map(([file, shared]) => {
    const memory = new wa.Memory(shared ? { initial: pages, maximum: 65536, shared: true } : { initial: pages });
    const { exports } = new wa.Instance(new wa.Module(wasmFile(file as string)), { env: { memory } });
    return { file: file as string, memory, exports };
  });
}

/**
 * Asserts that `<name>.wasm` is `<name>.wat` assembled with threads, and with `unshared` that
 * `<name>-unshared.wasm` is the same text with its shared memory import made unshared (build:wasm's sed).
 */
export async function assertAssembled(name: string, { unshared }: { unshared: boolean }): Promise<void> {
  const wabt = await wabtInit();
  const text = readFileSync(new URL(`${name}.wat`, dir), 'utf8');
  const variants: [string, string][] = [[`${name}.wasm`, text]];
  if (unshared) {
    const plain = text.replace(SHARED, '(memory 1)');
    assert.notEqual(plain, text, `${name}.wat declares the shared memory import (${SHARED}) that the unshared variant replaces`);
    variants.push([`${name}-unshared.wasm`, plain]);
  }
  for (const [file, source] of variants) {
    const module = wabt.parseWat(file, source, { threads: true });
    const { buffer } = module.toBinary({});
    module.destroy();
    assert.deepEqual(new Uint8Array(buffer), wasmFile(file), `${file}: the committed bytes`);
  }
}

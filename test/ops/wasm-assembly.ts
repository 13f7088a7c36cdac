/**
 * The committed .wasm files of src/ops/wasm against what wabt assembles from their .wat (what
 * `npm run build:wasm` runs): a .wat edited without rebuilding, or a .wasm edited by hand, fails.
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

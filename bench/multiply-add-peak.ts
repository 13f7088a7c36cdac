/**
 * How fast one core multiply-adds in wasm SIMD, measured now (bench/wasm/multiply-add-peak.wat): the
 * ceiling no convolution on this engine can pass, beside which a benchmark's kernel rates are read.
 * `separate` is multiply then add (XNNPACK's wasm kernels and ours), `fused` relaxed SIMD's fused
 * multiply-add (none of the engine's kernels use it: its bits may differ between machines).
 */
import { readFileSync } from 'node:fs';

/** Multiply-adds per loop step of the module: 12 accumulators x 4 lanes. */
export const MULTIPLY_ADDS_PER_STEP = 48;

type Loop = (n: number, m: number, c: number) => number;
interface PeakLoops {
  separate: Loop;
  fused: Loop;
}

const wasm = (
  globalThis as unknown as { WebAssembly: { Instance: new (m: object) => { exports: PeakLoops }; Module: new (b: Uint8Array) => object } }
).WebAssembly;

/** The module's two loops (`n` steps of a <- a * m + c on accumulators that start at 0..11; returns 66 + 12 n c when m = 1). */
export function peakLoops(): PeakLoops {
  const bytes = readFileSync(new URL('./wasm/multiply-add-peak.wasm', import.meta.url));
  return new wasm.Instance(new wasm.Module(bytes)).exports;
}

export interface MultiplyAddPeak {
  /** Multiply-adds per second, in billions (GMAC/s), of the best of `tries` timings. */
  separate: number;
  fused: number;
}

/**
 * Each loop timed `tries` times for `ms` to 2 `ms` milliseconds each (m just under 1: the values settle near
 * c / (1 - m), no denormals), the best rate kept: a peak, not a typical figure.
 */
export function multiplyAddPeak(ms = 60, tries = 3): MultiplyAddPeak {
  const loops = peakLoops();
  const rate = (loop: Loop) => {
    loop(100_000, 0.9999999, 1e-7); // compiled before it is timed
    let steps = 1_000_000;
    let best = 0;
    for (let t = 0; t < tries; ) {
      const t0 = performance.now();
      loop(steps, 0.9999999, 1e-7);
      const took = performance.now() - t0;
      if (took < ms) {
        steps *= 2; // shorter than asked: longer, and this one does not count
        continue;
      }
      best = Math.max(best, (steps * MULTIPLY_ADDS_PER_STEP) / took / 1e6);
      t++;
    }
    return best;
  };
  return { separate: rate(loops.separate), fused: rate(loops.fused) };
}

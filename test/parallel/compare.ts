/**
 * Comparing two training runs' weights (the data-parallel tests): the weights of a run's latest
 * checkpoint, the model's initial weights, and per tensor the runs' difference relative to how far
 * training moved it.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { disposeCheckpoint, loadCheckpoint } from '../../src/io/weights.ts';
import { deeplabV2 } from '../../src/ops/model/deeplab.ts';

type Weights = Map<string, Float32Array>;

/** Every model tensor of the run's latest checkpoint (`<dir>/checkpoints/latest.json`). */
export async function latestWeights(dir: string): Promise<Weights> {
  const latest = JSON.parse(await readFile(join(dir, 'checkpoints', 'latest.json'), 'utf8')) as { file: string };
  const state = await loadCheckpoint(join(dir, 'checkpoints', latest.file));
  const weights = new Map([...state.model].map(([k, t]) => [k, t.dataSync() as Float32Array]));
  disposeCheckpoint(state);
  return weights;
}

/** The small DeepLab's tensors (parameters and BN buffers) at its seed-0 initialisation: where both runs start. */
export function initialWeights(): Weights {
  const init = deeplabV2({ backbone: 'small', numClasses: 19, seed: 0 });
  const start = new Map([...init.store.params].map(([k, p]) => [k, p.variable.dataSync() as Float32Array]));
  init.dispose();
  return start;
}

/** Per tensor that training moved: how far apart two runs' values are, relative to how far training moved it from the start. */
export function updateDiffs(a: Weights, b: Weights, start: Weights): Map<string, number> {
  const out = new Map<string, number>();
  for (const [name, x] of a) {
    const [y, x0] = [b.get(name)!, start.get(name)!];
    let diff = 0;
    let moved = 0;
    for (let i = 0; i < x.length; i++) {
      diff += (x[i]! - y[i]!) ** 2;
      moved += (x[i]! - x0[i]!) ** 2;
    }
    if (moved > 0) out.set(name, Math.sqrt(diff / moved));
  }
  return out;
}

/** The tensor with the largest relative difference, and the root mean square over all of them. */
export function summarize(diffs: Map<string, number>): { worst: [string, number]; rms: number } {
  const worst = [...diffs].reduce((w, e) => (e[1] > w[1] ? e : w), ['', 0] as [string, number]);
  const rms = Math.sqrt([...diffs.values()].reduce((acc, v) => acc + v * v, 0) / diffs.size);
  return { worst, rms };
}

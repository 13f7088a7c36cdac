/**
 * The data-parallel step's gradient sum (src/parallel/shared-step.ts `sumGradientPiece`): what one
 * thread summing every replica's slot costs (the step before the pieces) against the main thread's
 * piece of the sum plus its copy of the result (the replicas sum their pieces at once), side by side in
 * one run, for parameter counts and replica counts. Plain host arithmetic: no tfjs backend, and the
 * replica counts need not be cores this machine has (each piece is timed on this thread).
 *
 *   npm run bench:grad-sum -- [--floats 300000,3000000] [--replicas 2,4,8,16] [--reps 9]
 */
import { parseCli, parseIntFlag } from '../src/cli.ts';
import { AllReduce, Barrier } from '../src/parallel/collective.ts';
import type { Layout } from '../src/parallel/layout.ts';
import { sharedAreas, sumGradientPiece } from '../src/parallel/shared-step.ts';
import { median } from './median.ts';

const USAGE = `usage: npm run bench:grad-sum -- [options]
  --floats LIST        trained parameter elements, comma-separated (default 300000,3000000)
  --replicas LIST      replica counts, each >= 2 (default 2,4,8,16)
  --reps N             timed repetitions per setting, the median reported (default 9)
  -h, --help           this text
Prints, per setting, ms of the gradient sum before the pieces and of the main thread's piece + copy.`;

const cli = parseCli('bench:grad-sum', USAGE, {
  floats: { type: 'string', default: '300000,3000000' },
  replicas: { type: 'string', default: '2,4,8,16' },
  reps: { type: 'string', default: '9' },
});
const int = (flag: string, v: string, min: number) => parseIntFlag(v, flag, min, cli.fail)!;
const floatCounts = cli.values.floats.split(',').map((v) => int('floats', v, 1));
const replicaCounts = cli.values.replicas.split(',').map((v) => int('replicas', v, 2));
const reps = int('reps', cli.values.reps, 1);

console.log(
  "floats | replicas | one thread sums every slot, ms (median) | the main thread's piece and its copy of the sum, ms (median) | ratio",
);
for (const n of floatCounts)
  for (const parties of replicaCounts) {
    const layout: Layout = { names: ['w'], offsets: new Map([['w', 0]]), sizes: new Map([['w', n]]), total: n };
    const areas = sharedAreas(parties, n, Barrier.buffer(), AllReduce.buffer(parties, 1), 1);
    const slots = new Float32Array(areas.grads);
    for (let i = 0; i < slots.length; i++) slots[i] = Math.random() - 0.5;
    const whole: number[] = [];
    const piece: number[] = [];
    for (let k = 0; k < reps; k++) {
      // the sum before the pieces: slot 0 copied, then every other slot added, on one thread
      let t0 = performance.now();
      const total = Float32Array.from(slots.subarray(0, n));
      for (let r = 1; r < parties; r++) {
        const slot = slots.subarray(r * n, (r + 1) * n);
        for (let i = 0; i < n; i++) total[i]! += slot[i]!;
      }
      whole.push(performance.now() - t0);
      t0 = performance.now();
      sumGradientPiece(areas, layout, ['w'], 0, parties);
      // and the main thread's copy of the summed slot 0 (into the backend's memory in the step)
      Float32Array.from(slots.subarray(0, n));
      piece.push(performance.now() - t0);
    }
    const [a, b] = [median(whole), median(piece)];
    console.log(`${n} | ${parties} | ${a.toFixed(2)} | ${b.toFixed(2)} | ${(b / a).toFixed(2)}`);
  }

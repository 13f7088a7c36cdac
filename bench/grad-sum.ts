/**
 * The data-parallel step's gradient sum (src/parallel/shared-step.ts `sumGradientPiece`): what one
 * thread summing every replica's slot costs (the step before the pieces) against the main thread's
 * piece of the sum plus its copy of the result (the replicas sum their pieces at once), side by side in one run, for parameter counts and replica counts. Plain host
 * arithmetic: no tfjs backend, and the replica counts need not be cores this machine has (each piece is
 * timed on this thread).
 *
 *   node bench/grad-sum.ts [--floats 300000,3000000] [--replicas 2,4,8,16] [--reps 9]
 */
import { parseArgs } from 'node:util';
import { AllReduce, Barrier } from '../src/parallel/collective.ts';
import type { Layout } from '../src/parallel/layout.ts';
import { sharedAreas, sumGradientPiece } from '../src/parallel/shared-step.ts';

const { values: args } = parseArgs({
  options: {
    floats: { type: 'string', default: '300000,3000000' },
    replicas: { type: 'string', default: '2,4,8,16' },
    reps: { type: 'string', default: '9' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (args.help) {
  console.log('usage: node bench/grad-sum.ts [--floats 300000,3000000] [--replicas 2,4,8,16] [--reps 9]');
  process.exit(0);
}
const list = (flag: string, text: string, min: number) =>
  text.split(',').map((v) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) {
      console.error(`grad-sum: --${flag} takes integers >= ${min} separated by commas, got '${v}'`);
      process.exit(2);
    }
    return n;
  });
const floatCounts = list('floats', args.floats, 1);
const replicaCounts = list('replicas', args.replicas, 2);
const [reps] = list('reps', args.reps, 1);
const median = (v: number[]) => [...v].sort((a, b) => a - b)[v.length >> 1]!;

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
    for (let k = 0; k < reps!; k++) {
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

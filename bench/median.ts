/** The middle value of `values` (the upper of the two middle ones for an even count): the benchmarks' figure. */
export function median(values: readonly number[]): number {
  return [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
}

/**
 * The work of one filter-gradient call of our wasm kernel (src/ops/filter-grad-kernel.ts) cut into jobs
 * that threads can share: a job is one tap (i, j) and one block of input x output channels of dW, all
 * images and all output pixels; a thread runs a contiguous range of them. Jobs write disjoint parts of dW, and inside a job every element of dW
 * takes its terms in the order (image, output row, output column): whichever thread runs a job, and
 * however many share the call, every element is the same float32 sum, bit for bit.
 *
 * No tfjs here: the helper threads (filter-grad-helper.ts) import this file alone.
 */

/** The kernel's export: see src/ops/wasm/filter-grad.wat. */
export type KernelRun = (
  x: number,
  dy: number,
  out: number,
  count: number,
  xstride: number,
  cn: number,
  on: number,
  cout: number,
  rows: number,
  xrow: number,
  dyrow: number,
) => void;

/**
 * One call's shapes and where its operands lie in the kernel's memory (float offsets). `cin` and `cout`
 * are the padded channel counts (multiples of 4 and 8) that x's, dy's and dW's rows hold.
 */
export interface FilterGradCall {
  n: number;
  h: number;
  w: number;
  cin: number;
  ho: number;
  wo: number;
  cout: number;
  kh: number;
  kw: number;
  sh: number;
  sw: number;
  dh: number;
  dw: number;
  top: number;
  left: number;
  atX: number;
  atDy: number;
  atOut: number;
}

/** The fields of a call in the order they travel to the helpers (an Int32Array each). */
export const CALL_FIELDS = [
  'n',
  'h',
  'w',
  'cin',
  'ho',
  'wo',
  'cout',
  'kh',
  'kw',
  'sh',
  'sw',
  'dh',
  'dw',
  'top',
  'left',
  'atX',
  'atDy',
  'atOut',
] as const satisfies readonly (keyof FilterGradCall)[];

/**
 * A job covers at most CHANNELS input x CHANNELS output channels, and a kernel call at most PIXELS output
 * pixels (a 64-byte line of x and of dy per pixel): a call's x and dy data, ~2-4 lines a pixel, stay in
 * the first-level cache while the kernel walks them once per register tile.
 */
const CHANNELS = 16;
const PIXELS = 192;

/** Jobs of a call: taps x input-channel blocks x output-channel blocks. */
export function jobCount(c: FilterGradCall): number {
  return c.kh * c.kw * Math.ceil(c.cin / CHANNELS) * Math.ceil(c.cout / CHANNELS);
}

/** The first job of `rank`'s share when `parties` threads split `jobs` (contiguous, as even as possible). */
export function shareStart(jobs: number, rank: number, parties: number): number {
  return Math.floor((jobs * rank) / parties);
}

/**
 * Runs jobs [from, to) of call `c` (job order: tap row, tap column, input block, output block), tap by tap
 * and, within a tap, image by image over the tap's blocks in the range: an image's x and dy rows are
 * walked for all the tap's blocks before the next image's (10 % faster than image inside block here).
 */
export function runJobs(run: KernelRun, c: FilterGradCall, from: number, to: number): void {
  const oBlocks = Math.ceil(c.cout / CHANNELS);
  const perTap = Math.ceil(c.cin / CHANNELS) * oBlocks;
  for (let tap = Math.floor(from / perTap); tap * perTap < to; tap++) {
    const [first, last] = [Math.max(from, tap * perTap) - tap * perTap, Math.min(to, (tap + 1) * perTap) - tap * perTap];
    const i = Math.floor(tap / c.kw);
    const j = tap % c.kw;
    for (let b = 0; b < c.n; b++)
      for (let block = first; block < last; block++)
        runBlock(run, c, i, j, b, Math.floor(block / oBlocks) * CHANNELS, (block % oBlocks) * CHANNELS);
  }
}

/**
 * dW[i][j][c0 .. c0 + 16][o0 .. o0 + 16] += x[b, y*sh + i*dh - top, xo*sw + j*dw - left, ci] * dy[b, y, xo, co]
 * over the output pixels (y, xo) of image b whose input pixel for tap (i, j) lies inside the image
 * (padding contributes zeros: those pixels are left out, a rectangle of rows and columns).
 */
function runBlock(run: KernelRun, c: FilterGradCall, i: number, j: number, b: number, c0: number, o0: number): void {
  const { h, w, cin, ho, wo, cout, sh, sw } = c;
  // the output rows whose input row for tap row i lies inside the image: y * sh + i * dh - top in [0, h)
  const rowShift = i * c.dh - c.top;
  const y0 = Math.max(0, Math.ceil(-rowShift / sh));
  const y1 = Math.min(ho, Math.floor((h - 1 - rowShift) / sh) + 1);
  // likewise the output columns for tap column j: xo * sw + j * dw - left in [0, w)
  const colShift = j * c.dw - c.left;
  const x0 = Math.max(0, Math.ceil(-colShift / sw));
  const x1 = Math.min(wo, Math.floor((w - 1 - colShift) / sw) + 1);
  if (y1 <= y0 || x1 <= x0) return;
  const length = x1 - x0;
  const cn = Math.min(CHANNELS, cin - c0);
  const on = Math.min(CHANNELS, cout - o0);
  const out = (c.atOut + (i * c.kw + j) * cin * cout + c0 * cout + o0) * 4;
  const xAt = (y: number, xo: number) => (c.atX + ((b * h + y * sh + rowShift) * w + xo * sw + colShift) * cin + c0) * 4;
  const dyAt = (y: number, xo: number) => (c.atDy + ((b * ho + y) * wo + xo) * cout + o0) * 4;
  if (length >= PIXELS) {
    // long rows: each in pieces of PIXELS
    for (let y = y0; y < y1; y++)
      for (let xo = x0; xo < x1; xo += PIXELS)
        run(xAt(y, xo), dyAt(y, xo), out, Math.min(PIXELS, x1 - xo), sw * cin * 4, cn, on, cout, 1, 0, 0);
  } else {
    // short rows: as many whole rows a call as make at most PIXELS
    const rows = Math.floor(PIXELS / length);
    for (let y = y0; y < y1; y += rows)
      run(xAt(y, x0), dyAt(y, x0), out, length, sw * cin * 4, cn, on, cout, Math.min(rows, y1 - y), sh * w * cin * 4, wo * cout * 4);
  }
}

/**
 * The control words main thread and helpers share (an Int32Array over a SharedArrayBuffer): the call's
 * sequence number (-1: close), its fields and its job count and parties, then per helper rank r >= 1 its
 * ready flag, the last sequence it finished, the jobs it ran and the error it met (1: failed).
 */
export const CONTROL = {
  seq: 0,
  fields: 1,
  jobs: 1 + CALL_FIELDS.length,
  parties: 2 + CALL_FIELDS.length,
  helper: (rank: number) => {
    const at = 3 + CALL_FIELDS.length + (rank - 1) * 4;
    return { ready: at, done: at + 1, ran: at + 2, failed: at + 3 };
  },
  words: (helpers: number) => 3 + CALL_FIELDS.length + helpers * 4,
} as const;

/** The call whose fields lie in `control` (written by `writeCall`). */
export function readCall(control: Int32Array): FilterGradCall {
  return Object.fromEntries(CALL_FIELDS.map((f, i) => [f, control[CONTROL.fields + i]!])) as unknown as FilterGradCall;
}

export function writeCall(control: Int32Array, c: FilterGradCall): void {
  CALL_FIELDS.forEach((f, i) => {
    control[CONTROL.fields + i] = c[f];
  });
}

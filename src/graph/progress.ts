/**
 * Progress of long work: a bar redrawn in place on a TTY, plain periodic lines otherwise (logs, CI).
 */
export interface Progress {
  tick(n?: number): void;
  /** Replaces the detail text (e.g. "12 problems"). */
  detail(text: string): void;
  done(): void;
}

export interface ProgressOptions {
  label: string;
  total: number;
  stream?: NodeJS.WriteStream;
  /** Plain mode: at most one line per this many ms. Default 5000. */
  intervalMs?: number;
}

export function createProgress(opts: ProgressOptions): Progress {
  const stream = opts.stream ?? process.stderr;
  const tty = Boolean(stream.isTTY);
  const interval = opts.intervalMs ?? 5000;
  const start = performance.now();
  let done = 0;
  let detail = '';
  let last = 0;
  const line = () => {
    const secs = (performance.now() - start) / 1000;
    const rate = done / Math.max(secs, 1e-9);
    const pct = opts.total ? (100 * done) / opts.total : 100;
    const eta = rate > 0 && opts.total ? (opts.total - done) / rate : 0;
    const counts = `${done}/${opts.total} (${pct.toFixed(1)}%) ${rate.toFixed(1)}/s eta ${eta.toFixed(0)}s`;
    if (!tty) return `${opts.label}: ${counts}${detail ? ` ${detail}` : ''}`;
    const width = 24;
    const filled = Math.round((width * pct) / 100);
    return `\r${opts.label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${counts}${detail ? ` ${detail}` : ''}\x1b[K`;
  };
  const draw = (force: boolean) => {
    const now = performance.now();
    if (!force && now - last < (tty ? 100 : interval)) return;
    last = now;
    stream.write(tty ? line() : `${line()}\n`);
  };
  return {
    tick(n = 1) {
      done += n;
      draw(false);
    },
    detail(text: string) {
      detail = text;
    },
    done() {
      draw(true);
      if (tty) stream.write('\n');
    },
  };
}

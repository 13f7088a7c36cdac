/**
 * Runs inside a private mount namespace with a small tmpfs at MOUNT (see disk-full.test.ts):
 *
 *   node test/reliability/disk-full-driver.ts MOUNT STEPS_JSON
 *
 * STEPS_JSON is a list of steps: `{ "run": [node args], "env": {...}, "fillOnStop": true }` runs a child
 * (with `fillOnStop`, when the child stops itself at a `SIGSTOP` crash point, the file system is filled
 * to the last byte by a second file and the child continued: the disk fills up under it, as when
 * another process takes the space); `{ "remount": "64m" }` resizes the tmpfs; `{ "unfill": true }` deletes
 * the filler. After each step one JSON line goes to stdout: exit code and signal, stdout, stderr, the free bytes
 * (statfs), every file under MOUNT with its size, and whether the committed state is whole
 * (`committedState` of the run folder). The test asserts on those lines.
 */
import { spawn, spawnSync } from 'node:child_process';
import { open, readFile, readdir, rm, stat } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { freeBytes } from '../../src/io/atomic.ts';
import { committedState, node, root } from './harness.ts';

const [mount, stepsJson, out] = process.argv.slice(2) as [string, string, string];

interface Step {
  run?: string[];
  env?: Record<string, string>;
  fillOnStop?: boolean;
  remount?: string;
  unfill?: boolean;
}

const filler = join(mount, 'filler');

/** Writes zeros until the file system refuses (ENOSPC), then smaller pieces until not a byte fits. */
async function fill(): Promise<number> {
  const fh = await open(filler, 'a');
  let written = 0;
  try {
    for (const size of [1 << 20, 1 << 12, 1]) {
      const zeros = new Uint8Array(size);
      for (;;) {
        try {
          written += (await fh.write(zeros)).bytesWritten;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
          break;
        }
      }
    }
  } finally {
    await fh.close();
  }
  return written;
}

async function files(dir: string): Promise<Record<string, number>> {
  const outFiles: Record<string, number> = {};
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else outFiles[relative(mount, p)] = (await stat(p)).size;
    }
  };
  await walk(dir);
  return outFiles;
}

/** Resolves once process `pid` is stopped (state T in /proc/PID/stat) or has ended. */
async function stoppedOrGone(pid: number): Promise<void> {
  for (;;) {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => null);
    // the state follows the command name in parentheses (which may itself hold spaces or parentheses)
    if (stat === null || stat.slice(stat.lastIndexOf(')') + 2).startsWith('T')) return;
    await new Promise((r) => setTimeout(r, 5));
  }
}

function run(step: Step): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string; filled: number | null }> {
  const child = spawn(node, step.run!, { cwd: root, env: { ...process.env, ...step.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  child.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
  });
  let stderr = '';
  let filled: number | null = null;
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
    if (step.fillOnStop && filled === null && /^crash-point: \S+: SIGSTOP$/m.test(stderr)) {
      filled = 0;
      // the child prints the line, then stops itself: a SIGCONT sent before it has stopped is lost and the
      // child stays stopped (seen once in CI under load: killed by the 240 s timer)
      void stoppedOrGone(child.pid!)
        .then(fill)
        .then((n) => {
          filled = n;
          child.kill('SIGCONT');
        });
    }
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), 240_000);
  return new Promise((resolve) =>
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, filled });
    }),
  );
}

for (const step of JSON.parse(stepsJson) as Step[]) {
  let result: Record<string, unknown> = {};
  if (step.run) result = await run(step);
  if (step.remount) {
    const r = spawnSync('mount', ['-o', `remount,size=${step.remount}`, mount], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`remount ${mount} size=${step.remount}: ${r.stderr}`);
  }
  if (step.unfill) await rm(filler, { force: true });
  let committed: unknown;
  try {
    committed = await committedState(out);
  } catch (err) {
    committed = { error: (err as Error).message };
  }
  process.stdout.write(`${JSON.stringify({ step, ...result, free: await freeBytes(mount), files: await files(mount), committed })}\n`);
}

/**
 * A real headless Chromium for the report tests, driven over the DevTools protocol (Node's WebSocket,
 * no dependency): load a page, collect every console error, uncaught exception and browser log error
 * (a CSP violation, a failed load), read values from the rendered DOM, take a screenshot.
 * `CHROMIUM` is null when Debian's `chromium` is not installed (the tests skip, saying so).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p)) ?? null;
export const NO_CHROMIUM = 'no /usr/bin/chromium (Debian package chromium; .ci/run installs it)';

interface Pending {
  resolve: (v: Record<string, unknown>) => void;
  reject: (e: Error) => void;
}

export interface PageVisit {
  /** Console errors, uncaught exceptions and browser log errors, as text. */
  errors: string[];
  /** `expression`'s value (JSON-serialisable), evaluated in the page after load. */
  value: unknown;
  /** PNG of the viewport. */
  screenshot: Buffer;
}

export class Chromium {
  private readonly proc: ChildProcess;
  private readonly ws: WebSocket;
  private readonly profile: string;
  private constructor(proc: ChildProcess, ws: WebSocket, profile: string) {
    this.proc = proc;
    this.ws = ws;
    this.profile = profile;
  }
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly listeners = new Set<(method: string, params: Record<string, unknown>, session?: string) => void>();

  static async launch(): Promise<Chromium> {
    if (!CHROMIUM) throw new Error(NO_CHROMIUM);
    const profile = await mkdtemp(join(tmpdir(), 'report-chromium-'));
    const proc = spawn(
      CHROMIUM,
      [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--no-first-run',
        '--hide-scrollbars',
        '--disable-breakpad',
        '--disable-crash-reporter',
        '--remote-debugging-port=0',
        `--user-data-dir=${profile}`,
        'about:blank',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    const url = await new Promise<string>((resolve, reject) => {
      let err = '';
      const timer = setTimeout(() => reject(new Error(`chromium did not start in 30 s: ${err.slice(-2000)}`)), 30_000);
      proc.stderr!.setEncoding('utf8');
      proc.stderr!.on('data', (d: string) => {
        err += d;
        const m = /DevTools listening on (ws:\/\/\S+)/.exec(err);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]!);
        }
      });
      proc.on('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`chromium exited (${code}) before listening: ${err.slice(-2000)}`));
      });
    });
    const ws = new WebSocket(url);
    await new Promise<void>((resolve, reject) => {
      ws.addEventListener('open', () => resolve(), { once: true });
      ws.addEventListener('error', () => reject(new Error(`cannot connect to ${url}`)), { once: true });
    });
    const browser = new Chromium(proc, ws, profile);
    ws.addEventListener('message', (ev) => browser.onMessage(String(ev.data)));
    return browser;
  }

  private onMessage(text: string): void {
    const msg = JSON.parse(text) as {
      id?: number;
      result?: Record<string, unknown>;
      error?: { message: string };
      method?: string;
      params?: Record<string, unknown>;
      sessionId?: string;
    };
    if (msg.id !== undefined) {
      const p = this.pending.get(msg.id);
      this.pending.delete(msg.id);
      if (msg.error) p?.reject(new Error(`DevTools: ${msg.error.message}`));
      else p?.resolve(msg.result ?? {});
    } else if (msg.method) for (const l of this.listeners) l(msg.method, msg.params ?? {}, msg.sessionId);
  }

  /** One DevTools command (10 s at most). */
  send(method: string, params: Record<string, unknown> = {}, sessionId?: string): Promise<Record<string, unknown>> {
    const id = this.nextId++;
    this.ws.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`DevTools: ${method} got no answer in 10 s`)), 10_000).unref();
      this.pending.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
    });
  }

  /** Opens `url` in a new tab of `width` x `height`, waits for load (and 200 ms for late errors), evaluates `expression`, screenshots. */
  async visit(url: string, expression: string, width = 1280, height = 2400): Promise<PageVisit> {
    const { targetId } = (await this.send('Target.createTarget', { url: 'about:blank' })) as { targetId: string };
    const { sessionId } = (await this.send('Target.attachToTarget', { targetId, flatten: true })) as { sessionId: string };
    const errors: string[] = [];
    let loaded!: () => void;
    const load = new Promise<void>((r) => (loaded = r));
    const listener = (method: string, params: Record<string, unknown>, session?: string) => {
      if (session !== sessionId) return;
      if (method === 'Runtime.exceptionThrown') {
        const d = params.exceptionDetails as { text: string; exception?: { description?: string } };
        errors.push(`exception: ${d.exception?.description ?? d.text}`);
      } else if (method === 'Runtime.consoleAPICalled' && (params.type === 'error' || params.type === 'assert')) {
        errors.push(
          `console.${params.type}: ${(params.args as { value?: unknown; description?: string }[]).map((a) => a.value ?? a.description).join(' ')}`,
        );
      } else if (method === 'Log.entryAdded') {
        const e = params.entry as { level: string; text: string; source: string };
        if (e.level === 'error') errors.push(`log (${e.source}): ${e.text}`);
      } else if (method === 'Page.loadEventFired') loaded();
    };
    this.listeners.add(listener);
    try {
      for (const domain of ['Runtime.enable', 'Log.enable', 'Page.enable']) await this.send(domain, {}, sessionId);
      await this.send('Emulation.setDeviceMetricsOverride', { width, height, deviceScaleFactor: 1, mobile: false }, sessionId);
      await this.send('Page.navigate', { url }, sessionId);
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        load,
        new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`${url}: no load event in 20 s`)), 20_000))),
      ]);
      clearTimeout(timer);
      await new Promise((r) => setTimeout(r, 200));
      const evaluated = (await this.send('Runtime.evaluate', { expression, returnByValue: true }, sessionId)) as {
        result: { value?: unknown };
        exceptionDetails?: { text: string };
      };
      if (evaluated.exceptionDetails) throw new Error(`evaluating in the page: ${evaluated.exceptionDetails.text}`);
      const shot = (await this.send('Page.captureScreenshot', { format: 'png' }, sessionId)) as { data: string };
      return { errors, value: evaluated.result.value, screenshot: Buffer.from(shot.data, 'base64') };
    } finally {
      this.listeners.delete(listener);
      await this.send('Target.closeTarget', { targetId }).catch(() => {});
    }
  }

  /** Closes the browser (killed if it has not exited 5 s later) and removes its profile. */
  async close(): Promise<void> {
    const exited = this.proc.exitCode === null ? new Promise((r) => this.proc.once('exit', r)) : Promise.resolve();
    // the browser may drop the connection before it answers: do not wait for the answer
    this.send('Browser.close').catch(() => {});
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
    // a helper process that outlives the browser may hold the stderr pipe open: stop reading it
    this.proc.stderr?.destroy();
    this.ws.close();
    for (const p of this.pending.values()) p.reject(new Error('browser closed'));
    await rm(this.profile, { recursive: true, force: true });
  }
}

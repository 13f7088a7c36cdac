/**
 * A real Prometheus scrapes a real `spcl.ts --quick` run on loopback; then every dashboard query is
 * evaluated through the HTTP API at the time of the run's last scrape and must return data, the alert
 * rules must evaluate without error (and none fire on a healthy run), and `promtool check metrics`
 * must accept a scrape of /metrics. Skipped where Prometheus is not installed (CI installs it).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { annotationQueries, panelQueries } from '../../ops-dashboards/build.ts';
import { PROMETHEUS_CONFIG, RULES_FILE, readAlerts, root } from './promql.ts';

const PROMETHEUS = process.env.PROMETHEUS ?? 'prometheus';
const PROMTOOL = process.env.PROMTOOL ?? 'promtool';
const installed = (bin: string) => !spawnSync(bin, ['--version'], { encoding: 'utf8' }).error;
const RUN_TIMEOUT_MS = 240_000;
/** `$__rate_interval` as Grafana would resolve it for a 1 s scrape interval at a fine zoom */
const RATE_INTERVAL = '30s';

/** Distinct free loopback ports (each held open until all are chosen). */
async function freePorts(n: number): Promise<number[]> {
  const servers: Server[] = [];
  for (let i = 0; i < n; i++) {
    const s = createServer();
    await new Promise<void>((resolve, reject) => s.once('error', reject).listen(0, '127.0.0.1', resolve));
    servers.push(s);
  }
  const ports = servers.map((s) => (s.address() as AddressInfo).port);
  await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  return ports;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function get(url: string, timeoutMs = 5000): Promise<{ status: number; text: string }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  return { status: res.status, text: await res.text() };
}

interface ApiResponse<T> {
  status: 'success' | 'error';
  error?: string;
  data: T;
}
interface QueryData {
  resultType: 'vector' | 'matrix' | 'scalar' | 'string';
  result: { metric: Record<string, string>; value?: [number, string]; values?: [number, string][] }[] | [number, string];
}

function exited(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve(child.exitCode);
    else child.once('exit', (code) => resolve(code));
  });
}

async function stop(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const done = exited(child);
  if (await Promise.race([done.then(() => true), sleep(10_000).then(() => false)])) return;
  child.kill('SIGKILL');
  await done;
}

const tail = (s: string, n = 3000) => s.slice(-n);

test(
  'a real Prometheus scrapes a quick run: every dashboard query returns data, rules evaluate, promtool accepts /metrics',
  { timeout: 420_000 },
  async (t) => {
    if (!installed(PROMETHEUS)) {
      t.skip('prometheus not installed');
      return;
    }
    const dir = await mkdtemp(join(tmpdir(), 'spcl-prometheus-'));
    const [metricsPort, promPort] = (await freePorts(2)) as [number, number];
    const api = `http://127.0.0.1:${promPort}/api/v1`;
    let prometheus: ChildProcess | undefined;
    let run: ChildProcess | undefined;
    let promLog = '';
    let runLog = '';
    try {
      // the committed config, scraping every second the run's port, with the rules by absolute path
      const original = await readFile(PROMETHEUS_CONFIG, 'utf8');
      const config = original
        .replace(/^(\s+scrape_interval:) 15s$/m, '$1 1s')
        .replace(/^(\s+evaluation_interval:) 15s$/m, '$1 1s')
        .replace("'127.0.0.1:9464'", `'127.0.0.1:${metricsPort}'`)
        .replace(/^(\s+- )rules\/spcl-alerts\.yml$/m, `$1${RULES_FILE}`);
      for (const s of ['scrape_interval: 1s', 'evaluation_interval: 1s', `'127.0.0.1:${metricsPort}'`, RULES_FILE])
        assert.ok(config.includes(s), `config rewrite: ${s}`);
      const configFile = join(dir, 'prometheus.yml');
      await writeFile(configFile, config);

      prometheus = spawn(
        PROMETHEUS,
        [
          `--config.file=${configFile}`,
          `--storage.tsdb.path=${join(dir, 'tsdb')}`,
          `--web.listen-address=127.0.0.1:${promPort}`,
          '--storage.tsdb.retention.time=1d',
          '--log.level=warn',
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      prometheus.stdout!.on('data', (d: Buffer) => {
        promLog = tail(promLog + d.toString(), 20_000);
      });
      prometheus.stderr!.on('data', (d: Buffer) => {
        promLog = tail(promLog + d.toString(), 20_000);
      });
      const readyBy = Date.now() + 30_000;
      for (;;) {
        assert.equal(prometheus.exitCode, null, `prometheus exited: ${tail(promLog)}`);
        const ready = await get(`http://127.0.0.1:${promPort}/-/ready`, 1000).catch(() => null);
        if (ready?.status === 200) break;
        assert.ok(Date.now() < readyBy, `prometheus not ready after 30 s: ${tail(promLog)}`);
        await sleep(200);
      }

      // the run; /metrics disappears when it exits, so keep the last scrape taken while it was alive
      const started = Date.now();
      run = spawn(
        process.execPath,
        [join(root, 'pipelines/spcl.ts'), '--quick', '--out', join(dir, 'run'), '--metrics-port', String(metricsPort)],
        { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] },
      );
      run.stdout!.on('data', (d: Buffer) => {
        runLog = tail(runLog + d.toString(), 20_000);
      });
      run.stderr!.on('data', (d: Buffer) => {
        runLog = tail(runLog + d.toString(), 20_000);
      });
      const runExit = exited(run);
      let lastScrape = '';
      let scrapes = 0;
      let finished = false;
      void runExit.then(() => {
        finished = true;
      });
      while (!finished) {
        assert.ok(Date.now() - started < RUN_TIMEOUT_MS, `the quick run did not finish in ${RUN_TIMEOUT_MS / 1000} s: ${tail(runLog)}`);
        const r = await get(`http://127.0.0.1:${metricsPort}/metrics`, 5000).catch(() => null);
        if (r?.status === 200 && r.text.length > 0) {
          lastScrape = r.text;
          scrapes++;
        }
        await Promise.race([runExit, sleep(2000)]);
      }
      const code = await runExit;
      const runSeconds = (Date.now() - started) / 1000;
      assert.equal(code, 0, `spcl.ts --quick exited ${code}: ${tail(runLog)}`);
      t.diagnostic(`quick run ${runSeconds.toFixed(0)} s, ${scrapes} scrapes by the test`);

      // the time of Prometheus' last sample of the run: queries are evaluated there, while it was alive
      const q = async <T = QueryData>(path: string): Promise<ApiResponse<T>> => {
        const r = await get(`${api}/${path}`, 15_000);
        return JSON.parse(r.text) as ApiResponse<T>;
      };
      const raw = await q(`query?query=${encodeURIComponent('spcl_build_info[15m]')}&time=${Date.now() / 1000}`);
      assert.equal(raw.status, 'success', raw.error);
      const samples = (raw.data.result as { values: [number, string][] }[]).flatMap((s) => s.values.map((v) => v[0]));
      assert.ok(samples.length >= 20, `Prometheus scraped the run only ${samples.length} times: ${tail(promLog)}`);
      const at = Math.max(...samples);
      t.diagnostic(`Prometheus scraped the run ${samples.length} times; queries at ${new Date(at * 1000).toISOString()}`);

      await t.test('every panel and annotation query returns data at the end of the run', async () => {
        const queries = [
          ...panelQueries.map((p) => ({ where: `panel ${p.panelId} "${p.panelTitle}" ${p.refId}`, expr: p.expr })),
          ...annotationQueries.map((a) => ({ where: `annotation "${a.name}"`, expr: a.expr })),
        ];
        const empty: string[] = [];
        const nan: string[] = [];
        for (const { where, expr } of queries) {
          const promql = expr.replaceAll('$job', '.*').replaceAll('$instance', '.*').replaceAll('$__rate_interval', RATE_INTERVAL);
          assert.ok(!promql.includes('$'), `${where}: unresolved variable in ${promql}`);
          const r = await q(`query?query=${encodeURIComponent(promql)}&time=${at}`);
          assert.equal(r.status, 'success', `${where}: ${promql}: ${r.error}`);
          const result = r.data.result as { value: [number, string] }[];
          if (result.length === 0) empty.push(`${where}: ${promql}`);
          else if (result.every((s) => s.value[1] === 'NaN')) nan.push(`${where}: ${promql}`);
        }
        if (nan.length) t.diagnostic(`only NaN (no events in the last ${RATE_INTERVAL}):\n${nan.join('\n')}`);
        assert.deepEqual(empty, [], `queries without data:\n${empty.join('\n')}`);
      });

      await t.test('the job / instance variables find the run', async () => {
        const range = `start=${at - 900}&end=${at}`;
        const jobs = await q<string[]>(`label/job/values?match[]=${encodeURIComponent('spcl_build_info')}&${range}`);
        assert.equal(jobs.status, 'success');
        assert.deepEqual(jobs.data, ['spcl']);
        const instances = await q<string[]>(`label/instance/values?match[]=${encodeURIComponent('spcl_build_info{job=~"spcl"}')}&${range}`);
        assert.deepEqual(instances.data, [`127.0.0.1:${metricsPort}`]);
      });

      await t.test('the alert rules load and evaluate without error; none fires on a healthy run', async () => {
        const rules = await q<{ groups: { name: string; rules: { name: string; health: string; lastError?: string; type: string }[] }[] }>(
          'rules',
        );
        assert.equal(rules.status, 'success');
        const loaded = rules.data.groups.flatMap((g) => g.rules);
        assert.deepEqual(
          loaded.map((r) => r.name).sort(),
          readAlerts()
            .map((a) => a.name)
            .sort(),
        );
        for (const r of loaded) assert.equal(r.health, 'ok', `${r.name}: ${r.health} ${r.lastError ?? ''}`);
        const firing = await q(`query?query=${encodeURIComponent('ALERTS{alertstate="firing"}')}&time=${at}`);
        assert.equal(firing.status, 'success');
        assert.deepEqual(
          (firing.data.result as { metric: Record<string, string> }[]).map((s) => s.metric.alertname),
          [],
        );
      });

      await t.test('promtool check metrics accepts a scrape of /metrics', (st) => {
        if (!installed(PROMTOOL)) {
          st.skip('promtool not installed');
          return;
        }
        assert.ok(lastScrape.includes('spcl_train_steps_total'), 'no scrape of the run');
        const r = spawnSync(PROMTOOL, ['check', 'metrics'], { input: lastScrape, encoding: 'utf8', timeout: 30_000 });
        assert.equal(r.status, 0, `promtool check metrics exit ${r.status}:\n${r.stdout}${r.stderr}`);
      });
    } finally {
      await stop(run);
      await stop(prometheus);
      await rm(dir, { recursive: true, force: true });
    }
  },
);

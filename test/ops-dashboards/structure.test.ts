import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createMetrics } from '../../src/observe/metrics.ts';
import {
  DASHBOARD_PATH,
  DASHBOARD_UID,
  DATASOURCE_UID,
  annotationQueries,
  dashboard,
  panelQueries,
  render,
  variableQueries,
} from '../../ops-dashboards/build.ts';
import { PROMETHEUS_CONFIG, callArguments, parseExpr, readAlerts, root } from './promql.ts';

interface Panel {
  id: number;
  type: string;
  title?: string;
  description?: string;
  datasource?: { type: string; uid: string };
  gridPos: { h: number; w: number; x: number; y: number };
  fieldConfig?: { defaults: { unit?: string } };
  targets?: { refId: string; expr: string; legendFormat: string; datasource: { uid: string } }[];
}
const panels = dashboard.panels as unknown as Panel[];
const contentPanels = panels.filter((p) => p.type !== 'row');
const alerts = readAlerts();

/** Registry metric name -> type and label names; histograms also under their _bucket/_sum/_count series. */
async function registryMetrics(): Promise<Map<string, { type: string; labels: string[] }>> {
  const { registry } = createMetrics();
  const out = new Map<string, { type: string; labels: string[] }>();
  for (const m of await registry.getMetricsAsJSON()) {
    const labels = (registry.getSingleMetric(m.name) as unknown as { labelNames?: string[] }).labelNames ?? [];
    const type = String(m.type);
    out.set(m.name, { type, labels });
    if (type === 'histogram') {
      out.set(`${m.name}_bucket`, { type: 'histogram-series', labels: [...labels, 'le'] });
      out.set(`${m.name}_sum`, { type: 'histogram-series', labels });
      out.set(`${m.name}_count`, { type: 'histogram-series', labels });
    }
  }
  return out;
}

const allQueries = [
  ...panelQueries.map((q) => ({ where: `panel ${q.panelId} "${q.panelTitle}" ${q.refId}`, expr: q.expr })),
  ...annotationQueries.map((q) => ({ where: `annotation "${q.name}"`, expr: q.expr })),
];

test('dashboard: fixed uid and title, datasource / job / instance variables', () => {
  assert.equal(dashboard.uid, DASHBOARD_UID);
  assert.equal(DASHBOARD_UID, 'spcl-training');
  assert.equal(dashboard.id, null);
  assert.ok(dashboard.title.length > 0);
  const vars = Object.fromEntries(dashboard.templating.list.map((v) => [v.name, v as Record<string, unknown>]));
  assert.deepEqual(Object.keys(vars), ['datasource', 'job', 'instance']);
  assert.equal(vars.datasource!.type, 'datasource');
  assert.equal(vars.datasource!.query, 'prometheus');
  assert.equal((vars.datasource!.current as { value: string }).value, DATASOURCE_UID);
  for (const name of ['job', 'instance']) {
    assert.equal(vars[name]!.type, 'query');
    assert.deepEqual(vars[name]!.datasource, { type: 'prometheus', uid: '${datasource}' });
  }
  assert.equal(vars.job!.definition, 'label_values(spcl_build_info, job)');
  assert.equal(vars.instance!.definition, 'label_values(spcl_build_info{job=~"$job"}, instance)');
  assert.deepEqual(
    variableQueries.map((v) => v.query),
    [vars.job!.definition, vars.instance!.definition],
  );
});

test('panels: unique ids, a title, a description, a unit, the ${datasource} datasource, a grid position without overlap', () => {
  const ids = panels.map((p) => p.id);
  assert.equal(new Set(ids).size, ids.length, `duplicate ids: ${ids}`);
  assert.ok(ids.every((id) => Number.isInteger(id) && id > 0));
  const rows = panels.filter((p) => p.type === 'row').map((p) => p.title);
  assert.deepEqual(rows, ['Overview', 'Data pipeline', 'Training', 'Adaptation state', 'Evaluation', 'Runtime']);
  const titles = new Set<string>();
  for (const p of contentPanels) {
    const what = `panel ${p.id} "${p.title}"`;
    assert.ok(p.title && p.title.trim().length > 0, `${what}: title`);
    assert.ok(!titles.has(p.title), `${what}: title used twice`);
    titles.add(p.title);
    assert.ok(p.description && p.description.trim().length > 20, `${what}: description`);
    assert.ok(p.fieldConfig?.defaults.unit, `${what}: fieldConfig.defaults.unit`);
    assert.deepEqual(p.datasource, { type: 'prometheus', uid: '${datasource}' }, `${what}: datasource`);
    assert.ok(p.targets && p.targets.length > 0, `${what}: no query`);
    for (const t of p.targets) assert.equal(t.datasource.uid, '${datasource}', `${what} ${t.refId}: datasource`);
    assert.equal(new Set(p.targets.map((t) => t.refId)).size, p.targets.length, `${what}: refIds`);
  }
  // grid: inside 24 columns, no two panels on the same cells
  const cells = new Map<string, number>();
  for (const p of panels) {
    const { h, w, x, y } = p.gridPos;
    assert.ok(w > 0 && h > 0 && x >= 0 && x + w <= 24 && y >= 0, `panel ${p.id}: gridPos ${JSON.stringify(p.gridPos)}`);
    for (let i = x; i < x + w; i++) {
      for (let j = y; j < y + h; j++) {
        const other = cells.get(`${i},${j}`);
        assert.equal(other, undefined, `panels ${other} and ${p.id} overlap at ${i},${j}`);
        cells.set(`${i},${j}`, p.id);
      }
    }
  }
});

test('queries: every selector filtered by job and instance, every rate/increase on $__rate_interval', () => {
  assert.equal(
    panelQueries.length,
    contentPanels.reduce((n, p) => n + p.targets!.length, 0),
  );
  for (const { where, expr } of allQueries) {
    const parsed = parseExpr(expr);
    assert.deepEqual(parsed.unknownCalls, [], `${where}: unknown functions in ${expr}`);
    assert.ok(parsed.metrics.length > 0, `${where}: no metric in ${expr}`);
    const selectors = parsed.matchers.filter((m) => m.metric.startsWith('spcl_'));
    assert.equal(selectors.length, expr.match(/\bspcl_\w+/g)!.length, `${where}: a metric without label matchers in ${expr}`);
    for (const s of selectors) {
      assert.match(s.text, /(^|,\s*)job=~"\$job"/, `${where}: ${s.metric} not filtered by job`);
      assert.match(s.text, /(^|,\s*)instance=~"\$instance"/, `${where}: ${s.metric} not filtered by instance`);
    }
    for (const fn of ['rate', 'increase', 'irate']) {
      for (const args of callArguments(expr, fn))
        assert.match(args, /\[\$__rate_interval\]$/, `${where}: ${fn}(${args}) must use [$__rate_interval]`);
    }
    assert.ok(
      parsed.ranges.every((r) => r === '$__rate_interval'),
      `${where}: range windows ${parsed.ranges} (use $__rate_interval)`,
    );
  }
});

test('every metric and label in panel queries, legends and alert expressions exists in createMetrics().registry', async () => {
  const registry = await registryMetrics();
  const problems: string[] = [];
  const check = (where: string, expr: string, legend?: string) => {
    const parsed = parseExpr(expr);
    const known = new Set(['job', 'instance']);
    for (const name of parsed.metrics) {
      const m = registry.get(name);
      if (!m) {
        problems.push(`${where}: ${name} is not in the registry`);
        continue;
      }
      for (const l of m.labels) known.add(l);
    }
    for (const s of parsed.matchers) {
      const m = registry.get(s.metric);
      for (const l of s.labels) {
        if (l !== 'job' && l !== 'instance' && m && !m.labels.includes(l)) problems.push(`${where}: ${s.metric} has no label ${l}`);
      }
    }
    for (const l of parsed.labelLists)
      if (!known.has(l)) problems.push(`${where}: label ${l} (by/on list) is on none of ${parsed.metrics}`);
    for (const m of (legend ?? '').matchAll(/\{\{\s*(\w+)\s*\}\}/g)) {
      // a legend label survives aggregation only if it is in the by list (or there is no aggregation)
      if (!known.has(m[1]!)) problems.push(`${where}: legend label ${m[1]} is on none of ${parsed.metrics}`);
    }
  };
  for (const p of contentPanels) for (const t of p.targets!) check(`panel ${p.id} "${p.title}" ${t.refId}`, t.expr, t.legendFormat);
  for (const q of annotationQueries) check(`annotation "${q.name}"`, q.expr);
  for (const v of variableQueries) check(`variable ${v.name}`, v.query.replace(/^label_values\((.*),\s*\w+\)$/, '$1'));
  for (const a of alerts) check(`alert ${a.name}`, a.expr);
  assert.deepEqual(problems, []);
  // and the default metrics the Runtime row needs are really named with the spcl_ prefix
  for (const name of [
    'spcl_process_resident_memory_bytes',
    'spcl_nodejs_eventloop_lag_seconds',
    'spcl_process_cpu_seconds_total',
    'spcl_nodejs_heap_size_used_bytes',
  ]) {
    assert.ok(registry.has(name), name);
  }
});

test('every pipeline metric of the registry is shown on the dashboard', async () => {
  const registry = await registryMetrics();
  const used = new Set(
    allQueries
      .flatMap((q) => parseExpr(q.expr).metrics)
      .map((n) => (registry.get(n)?.type === 'histogram-series' ? n.replace(/_(bucket|sum|count)$/, '') : n)),
  );
  const own = [...registry]
    .filter(([name, m]) => m.type !== 'histogram-series' && !/^spcl_(process|nodejs)_/.test(name))
    .map(([name]) => name);
  assert.ok(own.length > 30, `${own.length} pipeline metrics`);
  assert.deepEqual(
    own.filter((n) => !used.has(n)),
    [],
    'metrics with no panel',
  );
});

test('alerts: the expected set, each with for, severity, summary, description and explicit range windows', () => {
  assert.deepEqual(alerts.map((a) => a.name).sort(), [
    'SpclCheckpointTooOld',
    'SpclEvaluationRegression',
    'SpclLossExploding',
    'SpclLossNotFinite',
    'SpclSkippedSampleSpike',
    'SpclTrainerStarved',
    'SpclTrainingStalled',
  ]);
  for (const a of alerts) {
    assert.ok(a.expr.length > 0, `${a.name}: expr`);
    assert.match(a.for ?? '', /^\d+[smh]$/, `${a.name}: for`);
    assert.match(a.severity ?? '', /^(critical|warning|info)$/, `${a.name}: severity`);
    assert.ok(a.summary && a.description, `${a.name}: summary and description annotations`);
    assert.ok(!a.expr.includes('$'), `${a.name}: Grafana variables in an alert`);
    const parsed = parseExpr(a.expr);
    assert.deepEqual(parsed.unknownCalls, [], `${a.name}: unknown functions`);
    for (const r of parsed.ranges) assert.match(r, /^\d+[smhdw]$/, `${a.name}: range [${r}]`);
    for (const fn of ['rate', 'increase', 'max_over_time']) {
      for (const args of callArguments(a.expr, fn)) assert.match(args, /\[\d+[smhdw]\]$/, `${a.name}: ${fn}(${args}) without a window`);
    }
  }
});

test('the committed dashboard JSON is what build.ts generates (run node ops-dashboards/build.ts)', () => {
  const committed = readFileSync(DASHBOARD_PATH, 'utf8');
  assert.ok(committed === render(), `${DASHBOARD_PATH} is stale: run node ops-dashboards/build.ts`);
  assert.deepEqual(JSON.parse(committed), JSON.parse(JSON.stringify(dashboard)));
});

test('provisioning and scrape config agree with the dashboard', () => {
  const ds = readFileSync(join(root, 'ops-dashboards/grafana/provisioning/datasources.yml'), 'utf8');
  assert.match(ds, new RegExp(`^\\s+uid: ${DATASOURCE_UID}$`, 'm'));
  assert.match(ds, /^\s+type: prometheus$/m);
  assert.match(ds, /^\s+url: http:\/\/127\.0\.0\.1:9090$/m);
  const dash = readFileSync(join(root, 'ops-dashboards/grafana/provisioning/dashboards.yml'), 'utf8');
  assert.match(dash, /^apiVersion: 1$/m);
  assert.match(dash, /^\s+type: file$/m);
  assert.match(dash, /^\s+path: \S+/m);
  const prom = readFileSync(PROMETHEUS_CONFIG, 'utf8');
  assert.match(prom, /^\s+- job_name: spcl$/m);
  assert.match(prom, /targets: \['127\.0\.0\.1:9464'\]/);
  assert.match(prom, /^rule_files:\n\s+- rules\/spcl-alerts\.yml$/m);
  assert.match(prom, /^\s+scrape_interval: 15s$/m);
  assert.match(ds, /^\s+timeInterval: 15s$/m, 'the datasource timeInterval is the scrape interval');
});

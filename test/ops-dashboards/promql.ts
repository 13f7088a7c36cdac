/**
 * Just enough PromQL and rules-YAML reading for the dashboard tests: metric names, label matchers,
 * label lists and range windows of an expression; the alerts of a rules file.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export const root = new URL('../../', import.meta.url).pathname;
export const PROMETHEUS_DIR = join(root, 'ops-dashboards/prometheus');
export const RULES_FILE = join(PROMETHEUS_DIR, 'rules/spcl-alerts.yml');
export const RULES_TEST_FILE = join(PROMETHEUS_DIR, 'rules/spcl-alerts.test.yml');
export const PROMETHEUS_CONFIG = join(PROMETHEUS_DIR, 'prometheus.yml');

const AGGREGATIONS = ['sum', 'min', 'max', 'avg', 'group', 'stddev', 'stdvar', 'count', 'count_values', 'bottomk', 'topk', 'quantile'];
const FUNCTIONS = [
  'abs',
  'absent',
  'absent_over_time',
  'ceil',
  'changes',
  'clamp',
  'clamp_max',
  'clamp_min',
  'day_of_month',
  'day_of_week',
  'day_of_year',
  'days_in_month',
  'delta',
  'deriv',
  'exp',
  'floor',
  'histogram_quantile',
  'holt_winters',
  'hour',
  'idelta',
  'increase',
  'irate',
  'label_join',
  'label_replace',
  'ln',
  'log2',
  'log10',
  'minute',
  'month',
  'predict_linear',
  'rate',
  'resets',
  'round',
  'scalar',
  'sgn',
  'sort',
  'sort_desc',
  'sqrt',
  'time',
  'timestamp',
  'vector',
  'year',
  'avg_over_time',
  'min_over_time',
  'max_over_time',
  'sum_over_time',
  'count_over_time',
  'quantile_over_time',
  'stddev_over_time',
  'stdvar_over_time',
  'last_over_time',
  'present_over_time',
];
const KNOWN_CALLS = new Set([...AGGREGATIONS, ...FUNCTIONS]);
const KEYWORDS = new Set([
  'by',
  'without',
  'on',
  'ignoring',
  'group_left',
  'group_right',
  'and',
  'or',
  'unless',
  'bool',
  'offset',
  'inf',
  'nan',
]);
const LABEL_LIST = /\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)/g;

const stripStrings = (expr: string) => expr.replace(/"(?:[^"\\]|\\.)*"/g, '""');

export interface ParsedExpr {
  /** metric names as written (histograms with their _bucket/_sum/_count suffix) */
  metrics: string[];
  /** function / aggregation names that are not PromQL's */
  unknownCalls: string[];
  /** metric name -> label names of its matchers */
  matchers: { metric: string; labels: string[]; text: string }[];
  /** labels of by / without / on / ignoring / group_left / group_right */
  labelLists: string[];
  /** each range window, e.g. `$__rate_interval`, `10m` */
  ranges: string[];
}

export function parseExpr(expr: string): ParsedExpr {
  const matchers: ParsedExpr['matchers'] = [];
  for (const m of expr.matchAll(/([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}/g)) {
    matchers.push({ metric: m[1]!, text: m[2]!, labels: [...m[2]!.matchAll(/([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*"/g)].map((x) => x[1]!) });
  }
  const ranges = [...expr.matchAll(/\[([^\]]+)\]/g)].map((m) => m[1]!.trim());
  let e = stripStrings(expr)
    .replace(/\{[^}]*\}/g, '')
    .replace(/\[[^\]]*\]/g, '');
  const labelLists: string[] = [];
  e = e.replace(LABEL_LIST, (_all, kw: string, list: string) => {
    labelLists.push(
      ...list
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean),
    );
    return kw;
  });
  const metrics: string[] = [];
  const unknownCalls: string[] = [];
  for (const m of e.matchAll(/(?<![\w.:$])([a-zA-Z_:][\w:]*)(\s*\()?/g)) {
    const id = m[1]!;
    if (KEYWORDS.has(id)) continue;
    if (m[2] !== undefined) {
      if (!KNOWN_CALLS.has(id)) unknownCalls.push(id);
      continue;
    }
    if (KNOWN_CALLS.has(id)) continue;
    metrics.push(id);
  }
  return { metrics: [...new Set(metrics)], unknownCalls, matchers, labelLists: [...new Set(labelLists)], ranges };
}

/** The argument text of each call of `fn` in `expr` (balanced parentheses). */
export function callArguments(expr: string, fn: string): string[] {
  const out: string[] = [];
  const re = new RegExp(`(?<![\\w:])${fn}\\s*\\(`, 'g');
  for (const m of expr.matchAll(re)) {
    let depth = 1;
    let i = m.index + m[0].length;
    const start = i;
    for (; i < expr.length && depth > 0; i++) {
      if (expr[i] === '(') depth++;
      else if (expr[i] === ')') depth--;
    }
    out.push(expr.slice(start, i - 1));
  }
  return out;
}

export interface AlertRule {
  name: string;
  expr: string;
  for: string | null;
  severity: string | null;
  summary: string | null;
  description: string | null;
}

/** The alerting rules of a rules file written like ours (`- alert:`, `expr: |` blocks). */
export function readAlerts(path = RULES_FILE): AlertRule[] {
  const lines = readFileSync(path, 'utf8').split('\n');
  const starts = lines.flatMap((l, i) => (/^\s*- alert:\s*\S/.test(l) ? [i] : []));
  return starts.map((s, k) => {
    const block = lines.slice(s, starts[k + 1] ?? lines.length);
    const field = (key: string) => {
      const line = block.find((l) => new RegExp(`^\\s*${key}:\\s`).test(l));
      return line ? line.replace(new RegExp(`^\\s*${key}:\\s*`), '').trim() : null;
    };
    let expr = field('expr') ?? '';
    if (expr === '|' || expr === '>') {
      const at = block.findIndex((l) => /^\s*expr:/.test(l));
      const indent = block[at]!.search(/\S/);
      const body: string[] = [];
      for (const l of block.slice(at + 1)) {
        if (l.trim() !== '' && l.search(/\S/) <= indent) break;
        body.push(l.trim());
      }
      expr = body.join('\n').trim();
    }
    return {
      name: field('- alert')!,
      expr,
      for: field('for'),
      severity: field('severity'),
      summary: field('summary'),
      description: field('description'),
    };
  });
}

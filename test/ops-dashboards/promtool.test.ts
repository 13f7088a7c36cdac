import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { PROMETHEUS_CONFIG, RULES_FILE, RULES_TEST_FILE, root } from './promql.ts';

const PROMTOOL = process.env.PROMTOOL ?? 'promtool';
const hasPromtool = !spawnSync(PROMTOOL, ['--version'], { encoding: 'utf8' }).error;
const promtool = (args: string[]) => spawnSync(PROMTOOL, args, { cwd: root, encoding: 'utf8', timeout: 60_000 });

for (const [what, args] of [
  ['promtool check config: prometheus.yml (and the rule files it loads)', ['check', 'config', PROMETHEUS_CONFIG]],
  ['promtool check rules: spcl-alerts.yml', ['check', 'rules', RULES_FILE]],
  ['promtool test rules: every alert fires on its input series and stays quiet on the others', ['test', 'rules', RULES_TEST_FILE]],
] as const) {
  test(what, (t) => {
    if (!hasPromtool) {
      t.skip('promtool not installed');
      return;
    }
    const r = promtool([...args]);
    assert.equal(r.status, 0, `${PROMTOOL} ${args.join(' ')}\n${r.stdout}\n${r.stderr}`);
  });
}

/**
 * Writes a run's visual report, report.html, again from its run folder (every run writes it at its end;
 * src/observe/report-html.ts says what it shows):
 *
 *   node pipelines/report.ts --run runs/synthetic
 */
import { stat } from 'node:fs/promises';
import { parseCli } from '../src/cli.ts';
import { REPORT_DATA } from '../src/observe/report-data.ts';
import { writeReportHtml } from '../src/observe/report-html.ts';

const USAGE = `usage: node pipelines/report.ts --run DIR [options]
Writes DIR/report.html, one self-contained page (no network, no script): target mIoU per phase and
evaluation, loss terms and learning rate per phase, per-class IoU before and after adaptation,
thresholds and pseudo-label coverage per class, target-val images with the first and last phase's
predictions. Drawn from DIR/report.json and DIR/${REPORT_DATA}/ (recorded by the run).
  --run DIR          a run folder (the --out of pipelines/spcl.ts, source-only.ts, ...)
  --step-log FILE    training curves from this step log (the run's --step-log: every step) instead of
                     DIR/${REPORT_DATA}/steps.jsonl (every logEvery-th step)
  --out FILE         write the page here instead of DIR/report.html
  -h, --help         this text`;

const cli = parseCli('report', USAGE, {
  run: { type: 'string' },
  'step-log': { type: 'string' },
  out: { type: 'string' },
});
const args = cli.values;
const run = args.run ?? cli.fail('--run is required');

try {
  const isDir = await stat(run).then(
    (s) => s.isDirectory(),
    () => false,
  );
  if (!isDir) throw new Error(`run folder ${run} does not exist (or is not a folder)`);
  const out = await writeReportHtml(run, { stepLog: args['step-log'], out: args.out });
  process.stderr.write(`report: ${out}\n`);
} catch (err) {
  process.stderr.write(`report: ${process.env.SPCL_DEBUG ? (err as Error).stack : (err as Error).message}\n`);
  process.exit(1);
}

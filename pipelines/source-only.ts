/**
 * The source-only baseline, built from the same stages as the SPCL recipe: the warm-up phase with the
 * adversarial term off (lambdaAdv = 0: no discriminator) and BN running statistics from the only domain
 * it sees (model.bnStats = 'all': no target image is used), then evaluation on the target validation set.
 * Compute-matched by default: it trains as many steps as the whole recipe (warm-up + spcl + ssl) from the
 * same start (model.weights), with the warm-up's poly schedule stretched to that length, so an adaptation
 * gain cannot come from training longer. The options of pipelines/spcl.ts (--config, --set, --backend,
 * --quick, --resume, ...) plus --iterations; the same report.
 *
 *   node pipelines/source-only.ts [--seed N] [--out runs/synthetic-source-only]
 */
import { SOURCE_ONLY } from '../src/methods/registry.ts';
import { runPipelineCli } from '../src/recipe/cli-run.ts';
import { computeMatched, mergeConfig } from '../src/recipe/config.ts';

await runPipelineCli({
  name: 'source-only',
  describe: 'The compute-matched source-only baseline: the warm-up without the adversarial term, BN statistics of the source.',
  recipe: () => SOURCE_ONLY,
  methods: SOURCE_ONLY,
  outSuffix: '-source-only',
  preset: (cfg) => mergeConfig(cfg, { warmup: { lambdaAdv: 0 }, model: { bnStats: 'all' } }, 'source-only'),
  own: {
    options: { iterations: { type: 'string' } },
    usage: '  --iterations N       source steps (default: warm-up + spcl + ssl iterations of the config, compute-matched)',
    apply: (cfg, { iterations }, usageError) => {
      const n = iterations === undefined ? undefined : Number(iterations);
      if (n !== undefined && !(Number.isInteger(n) && n >= 1)) usageError(`--iterations must be an integer >= 1, got '${iterations}'`);
      return computeMatched(cfg, n);
    },
  },
  summary: (r) => {
    const w = r.phases[0];
    const miou = w?.miou == null ? '-' : (100 * w.miou).toFixed(2);
    return `source-only  target val mIoU ${miou}  (${w?.seconds.toFixed(0) ?? 0} s, backend ${r.backend}, seed ${r.seed})`;
  },
});

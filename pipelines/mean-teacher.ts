/**
 * Online self-training with a mean teacher and ClassMix (DACS / DAFormer), from the same stages as SPCL:
 * the warm-up, then the mean-teacher method (src/methods/mean-teacher.ts). With
 * `--set methods.mean-teacher.contrastWeight=1` the prototypes phase runs before it and SPCL's
 * pixel-to-prototype term joins the loss (SePiCo-style). Same options and report as pipelines/spcl.ts;
 * `--continuous` keeps adapting after it (`--set continuous.teacher=true`: refreshes from a mean teacher).
 */
import { METHODS } from '../src/methods/registry.ts';
import { runPipelineCli } from '../src/recipe/cli-run.ts';

const warmup = METHODS.warmup!;
const prototypes = METHODS.prototypes!;
const meanTeacher = METHODS['mean-teacher']!;

await runPipelineCli({
  name: 'mean-teacher',
  describe:
    'Warm-up, then online self-training with a mean teacher and ClassMix (methods.mean-teacher.* settings); --continuous keeps adapting.',
  recipe: (cfg) =>
    (cfg.methods['mean-teacher']?.contrastWeight as number) > 0 ? [warmup, prototypes, meanTeacher] : [warmup, meanTeacher],
  endless: METHODS.continuous!,
  methods: [warmup, prototypes, meanTeacher],
  outSuffix: '-mean-teacher',
});

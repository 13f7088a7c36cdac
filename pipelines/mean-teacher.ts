/**
 * Online self-training with a mean teacher and ClassMix (DACS / DAFormer), from the same stages as SPCL:
 * the warm-up, then the mean-teacher method (src/methods/mean-teacher.ts). With
 * `--set methods.mean-teacher.contrastWeight=1` the prototypes phase runs before it and SPCL's
 * pixel-to-prototype term joins the loss (SePiCo-style); with `--set methods.mean-teacher.confidence='"class"'`
 * a thresholds pass (SPCL's per-class thresholds, pseudo-labels-2) runs before it. Same options and report as pipelines/spcl.ts;
 * `--continuous` keeps adapting after it (`--set continuous.teacher=true`: refreshes from a mean teacher).
 */
import { METHODS } from '../src/methods/registry.ts';
import { runPipelineCli } from '../src/recipe/cli-run.ts';

const warmup = METHODS.warmup!;
const prototypes = METHODS.prototypes!;
const meanTeacher = METHODS['mean-teacher']!;
const thresholds = METHODS['pseudo-labels-2']!; // the thresholds pass (ssl.pseudoCap) that confidence 'class' needs

await runPipelineCli({
  name: 'mean-teacher',
  describe:
    'Warm-up, then online self-training with a mean teacher and ClassMix (methods.mean-teacher.* settings); --continuous keeps adapting.',
  recipe: (cfg) => {
    const mt = cfg.methods['mean-teacher']!;
    return [
      warmup,
      ...((mt.contrastWeight as number) > 0 ? [prototypes] : []),
      ...(mt.confidence === 'class' ? [thresholds] : []),
      meanTeacher,
    ];
  },
  endless: METHODS.continuous!,
  methods: [warmup, prototypes, thresholds, meanTeacher],
  outSuffix: '-mean-teacher',
});

/**
 * The SPCL recipe (REFERENCE 1): warm-up -> prototypes -> thresholds + pseudo-labels -> contrastive
 * training -> pseudo-labels -> self-training. With no arguments: the embedded synthetic benchmark on
 * this machine (generated and ingested on first use), CPU-sized; `--preset gta5-cityscapes` etc. give
 * the paper's settings on real shards. `--continuous` follows the recipe with continuous adaptation.
 */
import { METHODS } from '../src/methods/registry.ts';
import { runPipelineCli } from '../src/recipe/cli-run.ts';

/**
 * REFERENCE 1 step by step (steps 2 and 6, checkpoint selection on target val, are
 * `checkpoint.select: best-val`).
 */
const RECIPE = [
  METHODS.warmup!, //             1  source CE on logits / 1.8 (+ output-space adversarial term)
  METHODS.prototypes!, //         3  class prototypes: source feature centroids (Eq. 2)
  METHODS['pseudo-labels']!, //   4  class thresholds + offline target pseudo-labels
  METHODS.spcl!, //               5  seg + lambda (Lcl_s + Lcl_t) against EMA prototypes (Eq. 8)
  METHODS['pseudo-labels-2']!, // 7  thresholds + pseudo-labels again, from the contrastive model
  METHODS.ssl!, //                8  self-training on them (Eq. 9)
];

await runPipelineCli({
  name: 'spcl',
  describe: 'The SPCL recipe (REFERENCE 1) on the embedded synthetic benchmark or a preset; --continuous keeps adapting.',
  recipe: () => RECIPE,
  endless: METHODS.continuous!,
  methods: RECIPE,
});

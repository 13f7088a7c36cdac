/**
 * Every method phase the project has, by name, and the recipes the pipelines compose from them. A new
 * method is one file in this folder and one line here.
 */
import type { Method } from '../recipe/method.ts';
import { continuous } from './continuous.ts';
import { meanTeacher } from './mean-teacher.ts';
import { prototypes } from './prototypes.ts';
import { pseudoLabels, pseudoLabels2 } from './pseudo-labels.ts';
import { selfTraining } from './self-training.ts';
import { spcl } from './spcl.ts';
import { warmup } from './warmup.ts';

export const METHODS: Readonly<Record<string, Method>> = {
  [warmup.name]: warmup,
  [prototypes.name]: prototypes,
  [pseudoLabels.name]: pseudoLabels,
  [spcl.name]: spcl,
  [pseudoLabels2.name]: pseudoLabels2,
  [selfTraining.name]: selfTraining,
  [continuous.name]: continuous,
  [meanTeacher.name]: meanTeacher,
};

/** Source-only training: the warm-up alone (the baseline sets lambdaAdv 0 and source BN statistics). */
export const SOURCE_ONLY: readonly Method[] = [warmup];

/**
 * Seed streams: each batch stream of a run derives its per-sample seeds (augmentation draws) and its
 * shuffle from (run seed, stream id, draw index). Every stream has its own id so that no two streams
 * draw alike, and the ids never change: a resumed or re-run run draws exactly the batches it drew
 * before. A new stream takes a new id here.
 */
export const STREAMS = {
  /** Warm-up source batches; its target batches are `warmup + 1`. */
  warmup: 11,
  /** Prototype initialisation pass over the source set. */
  prototypes: 30,
  /** Thresholds + pseudo-labels pass over the target set. */
  pseudoLabels: 40,
  /** Contrastive phase source batches; its target batches are `spcl + 1`. */
  spcl: 51,
  /** Self-training target batches, and the source batches beside them (ssl.sourceWeight). */
  sslTarget: 81,
  sslSource: 82,
  /** Evaluation pass over the target validation set. */
  evaluation: 900,
  /** Continuous phase: refresh r trains on target stream `continuousTarget + r`, source `continuousSource + r`. */
  continuousTarget: 100_000,
  continuousSource: 200_000,
} as const;

/** The second stream of a two-domain phase (its target batches). */
export const targetStreamOf = (stream: number): number => stream + 1;

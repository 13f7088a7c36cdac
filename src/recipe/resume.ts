/**
 * Resume, rollback and best-checkpoint selection: how a run gets back to a checkpointed state. `restore`
 * loads the last checkpoint (or a named one) into the run context and says where the interrupted phase
 * goes on; `rollBack` answers a streak of non-finite steps; `selectBest` is `checkpoint.select: best-val`.
 */
import { basename, join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { recoverGenerations } from '../data/pseudo-labels.ts';
import { exists } from '../io/exists.ts';
import { applyModelState, disposeCheckpoint, loadCheckpoint, type CheckpointState } from '../io/weights.ts';
import type { CheckpointPointer } from '../stages/checkpoint.ts';
import type { NonFiniteStreak } from '../stages/train-step.ts';
import type { ContinuousState, PhaseResultLike, RunContext } from './context.ts';
import { evaluatePhase, type ResumePoint } from './trainer.ts';

/**
 * A streak of non-finite steps (`nonFinite`): with action 'rollback', back to the last complete checkpoint
 * with every learning rate x lrFactor, at most maxRollbacks times in a run; otherwise the run stops with a
 * message that says where its last good state is. Returns where the phase starts again.
 */
export async function rollBack(ctx: RunContext, phase: string, streak: NonFiniteStreak): Promise<ResumePoint> {
  const nf = ctx.cfg.nonFinite;
  const latest = await ctx.checkpoints.latest();
  const where = latest
    ? `the last complete checkpoint is ${join(ctx.checkpoints.dir, latest.file)} (phase ${latest.phase}, iteration ${latest.iteration})`
    : 'no checkpoint was written yet';
  if (nf.action === 'stop') {
    throw new Error(`${streak.message}; stopping (nonFinite.action is 'stop'); ${where}: lower the learning rate and --resume`);
  }
  if (ctx.rollbacks >= nf.maxRollbacks) {
    throw new Error(
      `${streak.message}; stopping after ${ctx.rollbacks} rollback(s) (nonFinite.maxRollbacks ${nf.maxRollbacks}); ${where}: lower the learning rate and --resume`,
    );
  }
  if (!latest) throw new Error(`${streak.message}; cannot roll back: ${where} (checkpoint.every sets how often one is)`);
  const scale = ctx.lrScale * nf.lrFactor;
  const rollbacks = ctx.rollbacks + 1;
  const back = await restore(ctx);
  ctx.lrScale = scale;
  ctx.rollbacks = rollbacks;
  ctx.events.log(
    `${streak.message}: rolling back to ${latest.file} (phase ${latest.phase}, iteration ${latest.iteration}), ` +
      `learning rates x${scale} from now on (rollback ${rollbacks} of at most ${nf.maxRollbacks})`,
  );
  ctx.events.rolledBack?.(phase, scale);
  return back?.phase === phase ? back.point : { iteration: 0 };
}

/**
 * `checkpoint.select: best-val` (the authors' choice, REFERENCE 1 steps 2 and 6): the next phase starts
 * from the checkpoint of this phase with the best target-val mIoU, not from the last weights.
 */
export async function selectBest(ctx: RunContext, phase: string, result: PhaseResultLike): Promise<void> {
  const best = await ctx.checkpoints.best(phase);
  if (!best || best.miou === null || result.eval === null || best.miou <= result.eval.miou) return;
  const state = await ctx.checkpoints.load(best);
  try {
    applyModelState(ctx.model, state.model, { source: best.file });
    const protos = state.extra?.get('prototypes');
    if (protos) ctx.prototypes.set(protos as tf.Tensor2D);
  } finally {
    disposeCheckpoint(state);
  }
  ctx.events.log(
    `${phase}: best-val selection: continuing from ${best.file} (mIoU ${(100 * best.miou).toFixed(2)} > last ${(100 * result.eval.miou).toFixed(2)})`,
  );
  result.eval = await evaluatePhase(ctx, `${phase} (best-val checkpoint)`);
}

/**
 * The checkpoint latest.json names or, when that file is missing or cannot be read, the newest intact one
 * of the folder (the damaged file set aside as `<file>.damaged`), said in the log; an error naming both
 * when there is none. `pointer` is updated to the one loaded.
 */
async function loadOrFallBack(ctx: RunContext, pointer: CheckpointPointer): Promise<CheckpointState> {
  try {
    return await ctx.checkpoints.load(pointer);
  } catch (err) {
    const path = join(ctx.checkpoints.dir, pointer.file);
    const missing = (err as NodeJS.ErrnoException).code === 'ENOENT';
    const why = missing ? 'does not exist' : `cannot be read (${(err as Error).message})`;
    const fallback = await ctx.checkpoints.newestIntact(pointer.file);
    if (!fallback)
      throw new Error(
        `resume: ${path}, which latest.json names, ${why}, and no other checkpoint in ${ctx.checkpoints.dir} loads: run again without --resume to start over`,
      );
    const aside = missing ? null : await ctx.checkpoints.setAside(pointer.file);
    ctx.events.log(
      `resume: ${path}, which latest.json names, ${why}; going on from the newest intact checkpoint ${fallback.pointer.file} ` +
        `(phase ${fallback.pointer.phase}, iteration ${fallback.pointer.iteration})${aside ? `; the damaged file is kept as ${aside}` : ''}`,
    );
    Object.assign(pointer, fallback.pointer);
    return fallback.state;
  }
}

/** Restores the last checkpoint: weights, prototypes, thresholds, pseudo-labels, phases done. */
export async function restore(ctx: RunContext, file?: string): Promise<{ phase: string; point: ResumePoint } | null> {
  // what interrupted writes left (temporary files, a generation never committed) is deleted, never read
  for (const f of [...(await ctx.checkpoints.recover()), ...(await recoverGenerations(ctx.dirs.pseudo))])
    ctx.events.log(`resume: removed ${f} (left by an interrupted write)`);
  const pointer = file ? { file, phase: '', iteration: 0, miou: null, savedAt: '' } : await ctx.checkpoints.latest();
  if (!pointer) {
    ctx.events.log(`resume: no checkpoint in ${ctx.checkpoints.dir}, starting from scratch`);
    return null;
  }
  const state = file ? await loadCheckpoint(file) : await loadOrFallBack(ctx, pointer);
  const meta = state.meta as {
    phase: string;
    iteration: number;
    losses?: Record<string, number>;
    done: string[];
    results: PhaseResultLike[];
    bn: 'frozen' | 'trainable';
    thresholds: number[] | null;
    pseudo: string | null;
    continuous?: ContinuousState | null;
    lrScale?: number;
    rollbacks?: number;
  };
  ctx.model.setBatchNorm(meta.bn);
  applyModelState(ctx.model, state.model, { source: pointer.file });
  const protos = state.extra?.get('prototypes');
  if (protos) ctx.prototypes.set(protos as tf.Tensor2D);
  ctx.thresholds = meta.thresholds;
  ctx.pseudo = meta.pseudo;
  ctx.continuous = meta.continuous ?? null;
  ctx.lrScale = meta.lrScale ?? 1;
  ctx.rollbacks = meta.rollbacks ?? 0;
  if (meta.pseudo && !(await exists(meta.pseudo)))
    throw new Error(`resume: ${pointer.file} names the pseudo-label generation ${meta.pseudo}, which does not exist`);
  ctx.done = [...meta.done];
  ctx.results = meta.results.filter((r) => meta.done.includes(r.phase));
  ctx.events.log(
    `resume: ${pointer.file} (phase ${meta.phase}, iteration ${meta.iteration}; done: ${meta.done.join(', ') || 'nothing'}; ` +
      `pseudo-labels: ${meta.pseudo ? basename(meta.pseudo) : 'none'})`,
  );
  // copies: the point outlives the loaded state, which is disposed below
  const copies = (m: ReadonlyMap<string, tf.Tensor>) => new Map([...m].map(([k, v]) => [k, v.clone()]));
  const own = new Map([...(state.extra ?? [])].filter(([k]) => k !== 'prototypes'));
  const point: ResumePoint = {
    iteration: meta.iteration,
    ...(own.size ? { extra: copies(own) } : {}),
    losses: meta.losses,
    optimizer: state.optimizer ? { ...state.optimizer, slots: copies(state.optimizer.slots) } : undefined,
    discriminator: state.discriminator ? copies(state.discriminator) : undefined,
    discriminatorOptimizer: state.discriminatorOptimizer
      ? { ...state.discriminatorOptimizer, slots: copies(state.discriminatorOptimizer.slots) }
      : undefined,
  };
  disposeCheckpoint(state);
  return meta.done.includes(meta.phase) ? null : { phase: meta.phase, point };
}

/**
 * Thresholds + pseudo-labels (REFERENCE 1 steps 4 and 7, REFERENCE 5; paper Eq. 5's offline target labels):
 * one model pass over the target set gives each class's threshold (the upper median of its confidences,
 * capped) and the labels, written as a new generation. The first pass (`pseudo.cap`) feeds the
 * contrastive phase, the second (`ssl.pseudoCap`) self-training; continuous adaptation refreshes them.
 */
import { basename } from 'node:path';
import { lastValueFrom } from 'rxjs';
import type { GenerationInfo } from '../data/pseudo-labels.ts';
import { failOnAbort } from '../graph/flow.ts';
import type { SegModel } from '../ops/model/deeplab.ts';
import { estimateThresholds } from '../stages/estimate-thresholds.ts';
import { writeGeneration } from '../stages/write-pseudo-labels.ts';
import { batches, type RunContext } from '../recipe/context.ts';
import type { Method } from '../recipe/method.ts';
import { STREAMS } from '../recipe/streams.ts';
import { release, specs, unlessAborted, type PhaseResult } from '../recipe/trainer.ts';

/** Steps 4 and 7: thresholds (per-class upper median, capped) and pseudo-labels, one model pass. */
export async function pseudoLabelPhase(ctx: RunContext, phase: string): Promise<PhaseResult> {
  const t0 = performance.now();
  const info = await refreshPseudoLabels(ctx, phase, { phase }, phase === 'pseudo-labels' ? ctx.cfg.pseudo.cap : ctx.cfg.ssl.pseudoCap);
  return { phase, seconds: (performance.now() - t0) / 1000, iterations: 0, eval: null, losses: {}, aborted: info === null };
}

/**
 * One thresholds + pseudo-labels pass over every target image known now, written as a new generation and
 * made current (ctx.thresholds, ctx.pseudo). `source` is the generation's provenance; `cap` the thresholds'
 * confidence cap (pseudo.cap for the first pass, ssl.pseudoCap for the ones self-training learns from);
 * `model` the one that labels (the run's model unless given: a mean teacher under `continuous.teacher`).
 * Null when a signal stopped it: nothing of the pass is kept and the current generation stays.
 */
export async function refreshPseudoLabels(
  ctx: RunContext,
  label: string,
  source: Record<string, unknown>,
  cap: number,
  model: SegModel = ctx.model,
): Promise<GenerationInfo | null> {
  const { cfg } = ctx;
  const made = await unlessAborted(
    ctx,
    label,
    (async () => {
      const t = await lastValueFrom(
        batches(ctx, { domain: 'target', spec: specs(ctx).threshold, batchSize: 4, mode: 'pass', stream: STREAMS.pseudoLabels }).pipe(
          failOnAbort(ctx.signal, 'thresholds'),
          estimateThresholds({
            model,
            numClasses: cfg.data.numClasses,
            bins: cfg.pseudo.bins,
            cap,
            scratch: ctx.dirs.scratch,
            release,
          }),
        ),
      );
      // generations that retained checkpoints (or this run) use stay: a resume from one of them needs its labels
      const pinned = await ctx.checkpoints.pseudoLabelGenerations();
      if (ctx.pseudo) pinned.add(basename(ctx.pseudo));
      return {
        t,
        info: await writeGeneration(t, {
          dir: ctx.dirs.pseudo,
          numClasses: cfg.data.numClasses,
          keep: cfg.pseudo.keep,
          source: { ...source, cap },
          pinned,
          signal: ctx.signal,
        }),
      };
    })(),
  );
  if (!made) return null;
  const { t, info } = made;
  ctx.thresholds = t.thresholds;
  ctx.pseudo = `${ctx.dirs.pseudo}/${info.file}`;
  ctx.events.pseudoLabels?.(info, t.counts);
  const labelled =
    info.coverage.reduce((a, c, k) => a + c * t.counts[k]!, 0) /
    Math.max(
      1,
      t.counts.reduce((a, b) => a + b, 0),
    );
  ctx.events.log(
    `${label}: generation ${info.generation}, ${info.count} images, ${(100 * labelled).toFixed(1)}% of pixels labelled; ` +
      `thresholds (cap ${cap}) ${t.thresholds.map((v) => v.toFixed(2)).join(' ')}`,
  );
  return info;
}

/** The first pass: its labels feed the contrastive phase. */
export const pseudoLabels: Method = { name: 'pseudo-labels', kind: 'pass', run: (ctx) => pseudoLabelPhase(ctx, 'pseudo-labels') };
/** The second pass, after the contrastive phase: its labels feed self-training. */
export const pseudoLabels2: Method = { name: 'pseudo-labels-2', kind: 'pass', run: (ctx) => pseudoLabelPhase(ctx, 'pseudo-labels-2') };

/**
 * Prototype initialisation (REFERENCE 1 step 3, paper Eq. 2): the class centroids of source features over
 * the whole source set, eval mode, no augmentation, pixels kept only where the prediction agrees with the
 * label (`spcl.refineSource`).
 */
import { lastValueFrom } from 'rxjs';
import { failOnAbort } from '../graph/flow.ts';
import { accumulatePrototypes } from '../stages/init-prototypes.ts';
import { batches, type RunContext } from '../recipe/context.ts';
import type { Method } from '../recipe/method.ts';
import { STREAMS } from '../recipe/streams.ts';
import { release, specs, unlessAborted, type PhaseResult } from '../recipe/trainer.ts';

/** Step 3: prototypes over the whole source set (eval mode, no augmentation, agreement filter). */
export async function prototypesPhase(ctx: RunContext): Promise<PhaseResult> {
  const t0 = performance.now();
  const r = await unlessAborted(
    ctx,
    'prototypes',
    lastValueFrom(
      batches(ctx, { domain: 'source', spec: specs(ctx).prototypeInit, batchSize: 4, mode: 'pass', stream: STREAMS.prototypes }).pipe(
        failOnAbort(ctx.signal, 'prototypes'),
        accumulatePrototypes({
          model: ctx.model,
          numClasses: ctx.cfg.data.numClasses,
          refine: ctx.cfg.spcl.refineSource,
          release,
          bnStats: ctx.cfg.model.bnStats === 'target' && ctx.model.batchNorm === 'trainable' ? 'batch' : 'running',
        }),
      ),
    ),
  );
  if (!r) return { phase: 'prototypes', seconds: (performance.now() - t0) / 1000, iterations: 0, eval: null, losses: {}, aborted: true };
  ctx.prototypes.set(r.prototypes);
  r.prototypes.dispose();
  ctx.events.prototypes?.(ctx.prototypes);
  const names = ctx.data.source.manifest.classNames;
  ctx.events.log(
    `prototypes: ${ctx.cfg.data.numClasses - r.missing.length} classes initialised` +
      (r.missing.length ? `; never seen (kept at 0): ${r.missing.map((k) => names[k]).join(', ')}` : ''),
  );
  return { phase: 'prototypes', seconds: (performance.now() - t0) / 1000, iterations: 0, eval: null, losses: {} };
}

export const prototypes: Method = { name: 'prototypes', kind: 'pass', run: prototypesPhase };

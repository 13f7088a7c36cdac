/** The discriminator's arithmetic in one warm-up step (bench:warmup's bound). */
import { discriminatorMultiplyAdds } from '../src/ops/model/discriminator.ts';

/**
 * D's multiply-adds in one warm-up step (F: a forward pass, by conv; `discriminatorMultiplyAdds`): the
 * target's forward and input gradient through all five convs (the adversarial term), then D's update:
 * the source's forward, the weight gradients of both passes and their input gradients down to conv2 (the
 * predictions are constants of D's loss): 4 F(target) + 3 F(source) - F1(target) - F1(source).
 */
export function discriminatorStepMultiplyAdds(
  classes: number,
  ndf: number,
  batch: number,
  [sh, sw]: readonly [number, number],
  [th, tw]: readonly [number, number],
): number {
  const t = discriminatorMultiplyAdds(classes, ndf, [batch, th, tw]);
  const s = discriminatorMultiplyAdds(classes, ndf, [batch, sh, sw]);
  const sum = (v: number[]) => v.reduce((p, q) => p + q, 0);
  return 4 * sum(t) + 3 * sum(s) - t[0]! - s[0]!;
}

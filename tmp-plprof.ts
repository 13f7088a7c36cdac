import * as tf from '@tensorflow/tfjs';
import { selectBackend } from './src/ops/backend.ts';
import { deeplabV2 } from './src/ops/model/deeplab.ts';
import { ConfidenceHistogram } from './src/ops/thresholds.ts';
await selectBackend('wasm', { log: () => {} });
const m = deeplabV2({ backbone: 'small', numClasses: 19, seed: 0, bn: 'trainable' });
const B = Number(process.env.B ?? 4), H = 256, W = 512;
const x = tf.randomNormal([B, H, W, 3]) as tf.Tensor4D;
const hist = new ConfidenceHistogram(19, { bins: 65536 });
const step = () => {
  const [p, c] = tf.tidy(() => {
    const { logits } = m.forward(x);
    const probs = tf.softmax(tf.image.resizeBilinear(logits, [H, W], true)) as tf.Tensor4D;
    hist.add(probs);
    return [probs.argMax(-1), probs.max(-1)];
  });
  p!.dataSync(); c!.dataSync(); tf.dispose([p!, c!]);
};
step();
const t0 = performance.now(); step(); console.log('step ms', (performance.now() - t0).toFixed(0));
const prof = await tf.profile(step);
const agg = new Map<string, number>();
for (const k of prof.kernels) agg.set(k.name, (agg.get(k.name) ?? 0) + (k.kernelTimeMs as number));
for (const [k, v] of [...agg].sort((a, b) => b[1] - a[1]).slice(0, 12)) console.log(v.toFixed(1).padStart(8), k);

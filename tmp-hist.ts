import * as tf from '@tensorflow/tfjs';
import { selectBackend } from './src/ops/backend.ts';
import { ConfidenceHistogram } from './src/ops/thresholds.ts';
await selectBackend('wasm', { log: () => {} });
const probs = tf.softmax(tf.randomNormal([4, 256, 512, 19], 0, 3)) as tf.Tensor4D;
const hist = new ConfidenceHistogram(19, { bins: 65536 });
hist.add(probs);
for (let i = 0; i < 3; i++) { const t0 = performance.now(); hist.add(probs); console.log('add ms', (performance.now() - t0).toFixed(1)); }
const prof = await tf.profile(() => hist.add(probs));
for (const k of prof.kernels) console.log((k.kernelTimeMs as number).toFixed(2).padStart(8), k.name, JSON.stringify(k.inputShapes));

/**
 * Fix for tfjs-backend-cpu 4.22's `ResizeBilinearGrad`: it computes the right values in
 * [batch, height, width, depth] order but labels the result [batch, width, height, depth], so the
 * gradient of a bilinear resize of any non-square input throws a shape error. We wrap the kernel and
 * return the same data under the right shape. (The bilinear upsampling of logits is in every loss.)
 */
import * as tf from '@tensorflow/tfjs';

let registered = false;

export function registerCpuKernelFixes(): void {
  if (registered) return;
  const original = tf.getKernel('ResizeBilinearGrad', 'cpu');
  if (!original) return;
  registered = true;
  tf.unregisterKernel('ResizeBilinearGrad', 'cpu');
  tf.registerKernel({
    kernelName: 'ResizeBilinearGrad',
    backendName: 'cpu',
    kernelFunc: (args) => {
      const out = original.kernelFunc(args) as tf.TensorInfo;
      const images = args.inputs.images!;
      return { dataId: out.dataId, shape: images.shape.slice(), dtype: out.dtype };
    },
  });
}

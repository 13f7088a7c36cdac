/**
 * DeepLab-v2 as SPCL uses it (REFERENCE 3): an OS-8 encoder (ResNet-101/50 with frozen BN, VGG-16, or a
 * small CPU-sized ResNet through the same code) and the ASPP classifier. `forward` returns the encoder
 * output (`features`, the prototype space, post-ReLU) and the ASPP `logits`, both at output stride 8;
 * upsampling to the label size happens outside the model, as in the authors' code. NHWC throughout.
 */
import * as tf from '@tensorflow/tfjs';
import { asppClassifier } from './aspp.ts';
import type { BatchNormState, BnMode, CrossReplicaSum } from './layers.ts';
import { ParamStore, type Param } from './params.ts';
import { RESNET101, RESNET50, RESNET_SMALL, resnetEncoder, type Encoder, type ResNetConfig } from './resnet.ts';
import { vgg16Encoder } from './vgg.ts';

export type BackboneName = 'resnet101' | 'resnet50' | 'vgg16' | 'small';
export const BACKBONES: readonly BackboneName[] = ['resnet101', 'resnet50', 'vgg16', 'small'];

export interface DeeplabConfig {
  backbone: BackboneName;
  numClasses: number;
  /** Seed of the random initialisation. Default 0. */
  seed?: number;
  /** 'frozen' (warm-up, contrastive) or 'trainable' (self-training). Default 'frozen'. */
  bn?: BnMode;
  /** Overrides the ResNet layout (blocks/widths); for tests and custom small nets. */
  resnet?: ResNetConfig;
  /** Divides VGG widths; for tests. Default 1. */
  vggWidthDivisor?: number;
}

export interface ForwardResult {
  /** Encoder output [B, h, w, C] (after ReLU), h = ceil-ish(H / 8). */
  features: tf.Tensor4D;
  /** ASPP logits [B, h, w, K]. */
  logits: tf.Tensor4D;
}

export interface SegModel {
  readonly config: Readonly<Required<Pick<DeeplabConfig, 'backbone' | 'numClasses' | 'seed'>>>;
  readonly store: ParamStore;
  /** Feature channels C of the encoder output (2048 for ResNet-101, 1024 for VGG-16). */
  readonly featureChannels: number;
  /**
   * `training`: BN (when trainable) normalises by batch statistics; `trackStats` (default true): such a
   * forward also updates the running statistics. Training without tracking = batch statistics, BN buffers untouched.
   */
  forward(x: tf.Tensor4D, opts?: { training?: boolean; trackStats?: boolean }): ForwardResult;
  /** BN switch: 'trainable' for the self-training phase. */
  setBatchNorm(mode: BnMode): void;
  /**
   * Data-parallel replicas (src/parallel): batch statistics over every replica's shard through `sum`
   * (synchronised BN); null (the default) for one process.
   */
  setCrossReplicaSum(sum: CrossReplicaSum | null): void;
  readonly batchNorm: BnMode;
  /** Parameters the optimiser updates now (BN gamma/beta only when BN is trainable). */
  trainableParams(): Param[];
  dispose(): void;
}

function checkConfig(cfg: DeeplabConfig): void {
  if (!BACKBONES.includes(cfg.backbone)) {
    throw new Error(`deeplabV2: unknown backbone '${String(cfg.backbone)}', expected one of ${BACKBONES.join(', ')}`);
  }
  if (!Number.isInteger(cfg.numClasses) || cfg.numClasses < 2 || cfg.numClasses > 254) {
    throw new Error(`deeplabV2: numClasses must be an integer in 2..254, got ${cfg.numClasses}`);
  }
}

export function deeplabV2(cfg: DeeplabConfig): SegModel {
  checkConfig(cfg);
  const seed = cfg.seed ?? 0;
  const store = new ParamStore(seed);
  const bn: BatchNormState = { mode: cfg.bn ?? 'frozen', training: false, track: true };
  let encoder: Encoder;
  if (cfg.backbone === 'vgg16') {
    encoder = vgg16Encoder(store, { widthDivisor: cfg.vggWidthDivisor ?? 1 });
  } else {
    const layout = cfg.resnet ?? (cfg.backbone === 'resnet101' ? RESNET101 : cfg.backbone === 'resnet50' ? RESNET50 : RESNET_SMALL);
    encoder = resnetEncoder(store, layout, bn);
  }
  const classifier = asppClassifier(store, encoder.outChannels, cfg.numClasses);
  const setBatchNorm = (mode: BnMode) => {
    bn.mode = mode;
    for (const p of store.params.values()) if (p.role === 'bn-affine') p.variable.trainable = mode === 'trainable';
  };
  setBatchNorm(bn.mode);
  return {
    config: { backbone: cfg.backbone, numClasses: cfg.numClasses, seed },
    store,
    featureChannels: encoder.outChannels,
    get batchNorm() {
      return bn.mode;
    },
    setBatchNorm,
    setCrossReplicaSum(sum) {
      bn.sum = sum;
    },
    forward(x, opts = {}) {
      if (x.rank !== 4 || x.shape[3] !== 3) {
        throw new Error(`deeplabV2.forward: expected images [B,H,W,3] (NHWC, normalised RGB), got shape [${x.shape}]`);
      }
      bn.training = opts.training ?? false;
      bn.track = opts.trackStats ?? true;
      const features = encoder.forward(x);
      return { features, logits: classifier(features) };
    },
    trainableParams() {
      return store.trainable(bn.mode === 'trainable');
    },
    dispose() {
      store.dispose();
    },
  };
}

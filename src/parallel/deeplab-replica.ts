/**
 * The segmentation model as a data-parallel replica (src/parallel/program.ts): its named variables
 * (trained ones and BN buffers) and its synchronised-BN hook. The main thread wraps the run's model; a
 * worker builds its own from the description (weights arrive before each step).
 */
import { deeplabV2, type BackboneName, type SegModel } from '../ops/model/deeplab.ts';
import type { BnMode } from '../ops/model/layers.ts';
import type { Replica } from './program.ts';

export interface DeeplabDescription {
  backbone: BackboneName;
  numClasses: number;
}

export interface DeeplabReplica extends Replica {
  model: SegModel;
}

export function deeplabReplica(model: SegModel): DeeplabReplica {
  return {
    model,
    variables: new Map([...model.store.params].map(([name, p]) => [name, p.variable])),
    setCrossReplicaSum: (sum) => model.setCrossReplicaSum(sum),
    dispose: () => model.dispose(),
  };
}

export function describeDeeplab(model: SegModel): DeeplabDescription {
  return { backbone: model.config.backbone, numClasses: model.config.numClasses };
}

export function buildDeeplabReplica(d: unknown): DeeplabReplica {
  const { backbone, numClasses } = d as DeeplabDescription;
  return deeplabReplica(deeplabV2({ backbone, numClasses }));
}

/** The phase's BN mode on a replica (a step names it: the replicas follow the main model's switch). */
export function followBatchNorm(r: DeeplabReplica, mode: BnMode): void {
  if (r.model.batchNorm !== mode) r.model.setBatchNorm(mode);
}

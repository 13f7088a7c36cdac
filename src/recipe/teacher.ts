/**
 * A mean teacher (Tarvainen & Valpola 2017; DACS; DAFormer): the student's architecture whose weights and
 * BN statistics follow the student's as an exponential moving average, used in inference mode only,
 * never trained. Methods that label the target from it (the mean-teacher method every step, continuous
 * adaptation at each refresh under `continuous.teacher`) keep it in their checkpoints under `teacher/<name>`
 * in the extra section, so a resume goes on with the same teacher bit for bit.
 */
import * as tf from '@tensorflow/tfjs';
import { emaUpdate } from '../ops/mean-teacher.ts';
import { deeplabV2, type SegModel } from '../ops/model/deeplab.ts';
import { applyModelState, modelState } from '../io/weights.ts';
import type { RunContext } from './context.ts';
import type { ResumePoint } from './trainer.ts';

/** Key prefix of the teacher's tensors in a checkpoint's extra section. */
export const TEACHER = 'teacher/';

export class Teacher {
  readonly model: SegModel;
  private readonly names: string[];
  private readonly teacherVars: tf.Variable[];
  private readonly studentVars: tf.Variable[];

  /**
   * The teacher of `ctx.model`: restored from `resume.extra` when that holds one, else a copy of the
   * student now. Takes ownership of `resume.extra` (disposes it). `what` names the user in log lines.
   */
  constructor(ctx: RunContext, resume: ResumePoint, what: string) {
    const student = ctx.model;
    this.model = deeplabV2({ backbone: ctx.cfg.model.backbone, numClasses: ctx.cfg.data.numClasses, seed: ctx.cfg.seed });
    this.model.setBatchNorm(student.batchNorm);
    const saved = [...(resume.extra ?? [])].filter(([k]) => k.startsWith(TEACHER));
    try {
      if (saved.length) {
        applyModelState(this.model, new Map(saved.map(([k, v]) => [k.slice(TEACHER.length), v])), { source: 'checkpoint (teacher)' });
      } else {
        if (resume.iteration > 0) ctx.events.log(`${what}: the checkpoint holds no teacher; it starts as a copy of the student`);
        const state = modelState(student);
        applyModelState(this.model, state, { source: 'student' });
      }
    } catch (err) {
      this.model.dispose();
      throw err;
    } finally {
      tf.dispose([...(resume.extra?.values() ?? [])]);
    }
    this.names = [...student.store.params.keys()];
    this.teacherVars = this.names.map((n) => this.model.store.get(n));
    this.studentVars = this.names.map((n) => student.store.get(n));
  }

  /** teacher <- alpha * teacher + (1 - alpha) * student, over every parameter and BN statistic. */
  update(alpha: number): void {
    emaUpdate(this.teacherVars, this.studentVars, alpha);
  }

  /** The teacher's tensors for a checkpoint's extra section (borrowed: the teacher keeps owning them). */
  state(): Map<string, tf.Tensor> {
    return new Map(this.names.map((n, i) => [TEACHER + n, this.teacherVars[i] as tf.Tensor]));
  }

  dispose(): void {
    this.model.dispose();
  }
}

/**
 * The dataflow runtime: RxJS with pull-based, bounded flow.
 *
 * RxJS is push-only, and `mergeMap(f, n)` caps work in flight but buffers its input without bound. Here
 * a `Credits` pool holds `capacity` tokens; a `pullSource` produces one item per token, so at most
 * `capacity` source items exist anywhere downstream until the consumer that finishes them calls
 * `release` (a dropped/skipped item releases its token too). Memory is bounded by configuration
 * (capacity x item size), whatever the dataset size or the speed ratio of producer and consumer.
 *
 * Everything is an Observable (no promises in the core), so RxJS's TestScheduler drives it in virtual
 * time: ordering, the in-flight bound, error propagation and teardown are tested exactly.
 * Nothing here knows about images or tensors.
 */
import {
  EMPTY,
  Observable,
  Subject,
  catchError,
  concat,
  concatMap,
  defer,
  finalize,
  from,
  ignoreElements,
  map,
  mergeMap,
  range,
  takeUntil,
  takeWhile,
  tap,
  throwError,
  type ObservableInput,
  type OperatorFunction,
} from 'rxjs';

/** Token pool of a bounded flow. */
export class Credits {
  readonly capacity: number;
  private readonly tokens = new Subject<void>();
  private readonly stopped = new Subject<void>();
  private outstanding = 0;
  private maxOutstanding = 0;

  constructor(capacity: number) {
    if (!(Number.isInteger(capacity) && capacity >= 1)) throw new Error(`Credits: capacity must be an integer >= 1, got ${capacity}`);
    this.capacity = capacity;
  }

  /** Items taken and not yet released (the queue depth of the whole flow). */
  get inFlight(): number {
    return this.outstanding;
  }

  /** Highest `inFlight` seen (tests and metrics). */
  get peak(): number {
    return this.maxOutstanding;
  }

  /** A token stream: `capacity` tokens at once, then one per `release`; ends on `stop`. */
  get tokens$(): Observable<void> {
    return concat(range(0, this.capacity).pipe(map(() => undefined)), this.tokens).pipe(takeUntil(this.stopped));
  }

  /** Called by a source when it produced an item. */
  taken(): void {
    this.outstanding++;
    if (this.outstanding > this.maxOutstanding) this.maxOutstanding = this.outstanding;
  }

  /** Returns `n` tokens: the items are finished (consumed, dropped or failed). */
  release(n = 1): void {
    for (let i = 0; i < n; i++) {
      if (this.outstanding <= 0) throw new Error('Credits: release without a matching item in flight');
      this.outstanding--;
      this.tokens.next();
    }
  }

  /** No new items after this; items in flight drain normally (graceful shutdown). */
  stop(): void {
    this.stopped.next();
  }
}

/** Returned by a pull function when the source has no more items. */
export const END: unique symbol = Symbol('END');
export type Pulled<T> = T | typeof END;

/**
 * A source that produces the next item only when a credit is free. `pull` returns the item (or END) as
 * any ObservableInput (a value via `of`, a promise, an observable); pulls never overlap.
 */
export function pullSource<T>(credits: Credits, pull: () => ObservableInput<Pulled<T>>): Observable<T> {
  return credits.tokens$.pipe(
    concatMap(() => from(pull())),
    takeWhile((v): v is T => v !== END),
    map((v) => {
      credits.taken();
      return v;
    }),
  );
}

/**
 * An error inside a stage, with the stage name, the sample key when there is one, and a reason: a short
 * code from a bounded set (a metric label, a log tag). The reason is the cause's own `reason` when it
 * carries a string one (errors made where the fault arises know why it happened), else 'other'.
 */
export class StageError extends Error {
  readonly stage: string;
  readonly key: string | undefined;
  readonly reason: string;
  readonly cause: unknown;

  constructor(stage: string, key: string | undefined, cause: unknown) {
    const why = cause instanceof Error ? cause.message : String(cause);
    super(`stage ${stage}${key === undefined ? '' : ` (sample ${key})`}: ${why}`);
    this.name = 'StageError';
    this.stage = stage;
    this.key = key;
    const own = typeof cause === 'object' && cause !== null ? (cause as { reason?: unknown }).reason : undefined;
    this.reason = typeof own === 'string' && own !== '' ? own : 'other';
    this.cause = cause;
  }
}

export type ErrorPolicy = 'skip' | 'fail';

export interface StageOptions<I> {
  /** Items processed at once. Default 1. */
  concurrency?: number;
  /** Keep input order in the output (default true: training must be reproducible). */
  ordered?: boolean;
  /** 'skip': count and drop the item (its credit is released); 'fail': error the flow. Default 'fail'. */
  onError?: ErrorPolicy;
  /** The sample key of an item, for error messages. */
  keyOf?: (item: I) => string | undefined;
  /** Credits to release for a skipped item. */
  credits?: Credits;
  /** Called for each skipped item (metrics, logs). */
  onSkip?: (error: StageError, item: I) => void;
}

/**
 * A stage: `fn` per item with bounded concurrency, errors wrapped with the stage name and key, and a
 * skip-or-fail policy. With `ordered`, results leave in input order (at most `concurrency` are held).
 */
export function stage<I, O>(name: string, fn: (item: I) => ObservableInput<O>, opts: StageOptions<I> = {}): OperatorFunction<I, O> {
  const concurrency = opts.concurrency ?? 1;
  const ordered = opts.ordered ?? true;
  const guarded = (item: I): Observable<O> =>
    defer(() => fn(item)).pipe(
      catchError((err: unknown) => {
        const e = err instanceof StageError ? err : new StageError(name, opts.keyOf?.(item), err);
        if (opts.onError === 'skip') {
          opts.onSkip?.(e, item);
          opts.credits?.release();
          return EMPTY;
        }
        return throwError(() => e);
      }),
    );
  if (!ordered || concurrency === 1) return mergeMap(guarded, concurrency);
  return orderedMergeMap(guarded, concurrency);
}

/** mergeMap with bounded concurrency whose outputs keep input order (each input yields 0..n outputs). */
export function orderedMergeMap<I, O>(fn: (item: I) => Observable<O>, concurrency: number): OperatorFunction<I, O> {
  return (source) =>
    new Observable<O>((subscriber) => {
      const slots = new Map<number, { values: O[]; done: boolean }>();
      let nextIn = 0;
      let nextOut = 0;
      const flush = () => {
        for (let s = slots.get(nextOut); s?.done; s = slots.get(nextOut)) {
          slots.delete(nextOut++);
          for (const v of s.values) subscriber.next(v);
        }
      };
      return source
        .pipe(
          mergeMap((item) => {
            const slot = { values: [] as O[], done: false };
            slots.set(nextIn++, slot);
            return fn(item).pipe(
              tap({
                next: (v) => slot.values.push(v),
                complete: () => {
                  slot.done = true;
                  flush();
                },
              }),
              ignoreElements(),
            );
          }, concurrency),
        )
        .subscribe({ error: (e) => subscriber.error(e), complete: () => subscriber.complete() });
    });
}

/** Runs `cleanup` when the flow ends for any reason (complete, error, unsubscribe): close workers, handles. */
export function onTeardown<T>(cleanup: () => void): OperatorFunction<T, T> {
  return finalize(cleanup);
}

/**
 * Folds a finite stream into one result: `each` handles an item (synchronously), `release` always runs
 * after it (buffers, credits), `done` makes the result once the stream completes (may be async).
 * An error in `each` or `done` errors the flow.
 */
export function reduceItems<T, R>(
  each: (item: T) => void,
  done: () => R | Promise<R>,
  release: (item: T) => void = () => {},
): OperatorFunction<T, R> {
  return (source) =>
    new Observable<R>((subscriber) => {
      let failed = false;
      const sub = source.subscribe({
        next(item) {
          try {
            if (!failed) each(item);
          } catch (err) {
            failed = true;
            subscriber.error(err);
          } finally {
            release(item); // items arriving after a failure are released unprocessed
          }
        },
        error: (e) => subscriber.error(e),
        complete() {
          Promise.resolve()
            .then(done)
            .then(
              (r) => {
                subscriber.next(r);
                subscriber.complete();
              },
              (e: unknown) => subscriber.error(e),
            );
        },
      });
      return () => sub.unsubscribe();
    });
}

/** A flow stopped by its AbortSignal (SIGINT/SIGTERM): whatever it was computing is incomplete. */
export class AbortedError extends Error {
  constructor(what: string) {
    super(`${what}: aborted`);
    this.name = 'AbortedError';
  }
}

/**
 * Errors the flow with an `AbortedError` as soon as `signal` aborts, also while it waits for an item, so
 * a fold downstream (`reduceItems`) never emits a result made from part of its input; upstream is
 * unsubscribed (a pull source stops pulling). Each item is passed on one turn of the event loop later
 * (setImmediate, in order): a signal that arrives while an item is being processed (SIGTERM's handler
 * runs on the event loop) is seen before the next item, even when that one is already waiting.
 */
export function failOnAbort<T>(signal: AbortSignal | undefined, what: string): OperatorFunction<T, T> {
  if (!signal) return (source) => source;
  const nextTurn = (item: T) =>
    new Observable<T>((subscriber) => {
      const handle = setImmediate(() => {
        if (signal.aborted) {
          subscriber.error(new AbortedError(what));
          return;
        }
        subscriber.next(item);
        subscriber.complete();
      });
      return () => clearImmediate(handle);
    });
  return (source) =>
    new Observable<T>((subscriber) => {
      const onAbort = () => subscriber.error(new AbortedError(what));
      if (signal.aborted) {
        onAbort();
        return undefined;
      }
      signal.addEventListener('abort', onAbort, { once: true });
      const sub = source.pipe(concatMap(nextTurn)).subscribe(subscriber);
      return () => {
        signal.removeEventListener('abort', onAbort);
        sub.unsubscribe();
      };
    });
}

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { concatMap, map, of, tap, throwError, timer } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { Credits, END, StageError, onTeardown, pullSource, stage, type Pulled } from '../../src/graph/flow.ts';

const scheduler = () => new TestScheduler((actual, expected) => assert.deepEqual(actual, expected));

/** A source of items 0..n-1 whose every pull takes `pullFrames` virtual frames. */
function numbers(credits: Credits, n: number, pullFrames: number, pulls: number[], now: () => number) {
  let i = 0;
  return pullSource<number>(credits, () => {
    const v: Pulled<number> = i < n ? i++ : END;
    if (v !== END) pulls.push(now());
    return timer(pullFrames).pipe(map(() => v));
  });
}

test('a slow consumer never lets more than capacity items be in flight; items arrive in order', () => {
  scheduler().run(({ flush }) => {
    const credits = new Credits(3);
    const values: number[] = [];
    numbers(credits, 20, 1, [], () => 0)
      .pipe(
        concatMap((x) => timer(10).pipe(map(() => x))),
        tap(() => credits.release()),
      )
      .subscribe((v) => values.push(v));
    flush();
    assert.deepEqual(
      values,
      Array.from({ length: 20 }, (_, i) => i),
    );
    assert.equal(credits.peak, 3);
    assert.equal(credits.inFlight, 0);
  });
});

test('production waits for consumption: item k is pulled only after item k-capacity was released (virtual time)', () => {
  const ts = scheduler();
  ts.run(({ flush }) => {
    const credits = new Credits(2);
    const pulls: number[] = [];
    const released: number[] = [];
    const out = numbers(credits, 6, 1, pulls, () => ts.now()).pipe(
      concatMap((x) => timer(5).pipe(map(() => x))),
      tap(() => {
        released.push(ts.now());
        credits.release();
      }),
    );
    out.subscribe();
    flush();
    // first two pulls at 0 and 1 (one frame each), later ones right after a release
    assert.deepEqual(pulls.slice(0, 2), [0, 1]);
    for (let k = 2; k < 6; k++) assert.ok(pulls[k]! >= released[k - 2]!, `pull ${k} at ${pulls[k]} before release ${released[k - 2]}`);
    assert.equal(credits.peak, 2);
  });
});

test('ordered stage keeps input order under concurrency; unordered emits in completion order', () => {
  scheduler().run(({ cold, expectObservable }) => {
    const delays: Record<string, number> = { a: 5, b: 1, c: 3 };
    const src = cold('abc|');
    const slow = (x: string) => timer(delays[x]!).pipe(map(() => x.toUpperCase()));
    // a done at 0+5, b at 1+1, c at 2+3: in order A waits for 5, then B and C are flushed with it
    expectObservable(src.pipe(stage('upper', slow, { concurrency: 3 }))).toBe('-----(ABC|)');
    expectObservable(src.pipe(stage('upper', slow, { concurrency: 3, ordered: false }))).toBe('--B--(AC|)');
  });
});

test('an error carries the stage name and the sample key; policy fail ends the flow', () => {
  scheduler().run(({ cold, expectObservable }) => {
    const src = cold('a-b-c|');
    const fn = (x: string) => (x === 'b' ? throwError(() => new Error('bad pixels')) : of(x));
    const error = new StageError('decode', 'key-b', new Error('bad pixels'));
    expectObservable(src.pipe(stage('decode', fn, { keyOf: (x) => `key-${x}` }))).toBe('a-#', undefined, error);
    assert.equal(error.message, 'stage decode (sample key-b): bad pixels');
  });
});

test('policy skip drops the item, counts it, releases its credit and goes on', () => {
  scheduler().run(({ cold, expectObservable, flush }) => {
    const credits = new Credits(5);
    credits.taken();
    credits.taken();
    const skipped: string[] = [];
    const fn = (x: string) => (x === 'b' ? throwError(() => new Error('corrupt record')) : of(x));
    const out = cold('a-b-c|').pipe(
      stage('decode', fn, {
        onError: 'skip',
        credits,
        keyOf: (x) => x,
        onSkip: (e) => skipped.push(e.message),
      }),
    );
    expectObservable(out).toBe('a---c|');
    flush();
    assert.deepEqual(skipped, ['stage decode (sample b): corrupt record']);
    assert.equal(credits.inFlight, 1);
  });
});

test('teardown: unsubscribing runs the cleanup and no pull happens afterwards', () => {
  const ts = scheduler();
  ts.run(({ flush }) => {
    const credits = new Credits(2);
    const pulls: number[] = [];
    let cleaned = 0;
    const sub = numbers(credits, 100, 1, pulls, () => ts.now())
      .pipe(
        concatMap((x) => timer(3).pipe(map(() => x))),
        tap(() => credits.release()),
        onTeardown(() => cleaned++),
      )
      .subscribe();
    ts.schedule(() => sub.unsubscribe(), 10);
    flush();
    assert.equal(cleaned, 1);
    assert.ok(
      pulls.every((t) => t <= 10),
      `pulls after teardown: ${pulls}`,
    );
    assert.ok(pulls.length <= 5);
  });
});

test('stop: the source takes no new item, items in flight drain, the flow completes', () => {
  const ts = scheduler();
  ts.run(({ flush }) => {
    const credits = new Credits(3);
    const pulls: number[] = [];
    const values: number[] = [];
    let completed = false;
    numbers(credits, 100, 1, pulls, () => ts.now())
      .pipe(
        concatMap((x) => timer(4).pipe(map(() => x))),
        tap(() => credits.release()),
      )
      .subscribe({ next: (v) => values.push(v), complete: () => (completed = true) });
    ts.schedule(() => credits.stop(), 6);
    flush();
    assert.ok(completed);
    assert.deepEqual(
      values,
      Array.from({ length: values.length }, (_, i) => i),
    );
    assert.ok(values.length >= 3 && values.length <= 5, `drained ${values.length}`);
  });
});

test('Credits rejects a bad capacity and an unmatched release', () => {
  assert.throws(() => new Credits(0), /Credits: capacity must be an integer >= 1, got 0/);
  assert.throws(() => new Credits(1).release(), /Credits: release without a matching item in flight/);
});

test('reduceItems: folds a finite stream, releases every item even when one fails, emits once at the end', async () => {
  const { lastValueFrom, from } = await import('rxjs');
  const { reduceItems } = await import('../../src/graph/flow.ts');
  const released: number[] = [];
  let sum = 0;
  assert.equal(
    await lastValueFrom(
      from([1, 2, 3]).pipe(
        reduceItems(
          (x: number) => {
            sum += x;
          },
          async () => sum * 10,
          (x) => released.push(x),
        ),
      ),
    ),
    60,
  );
  assert.deepEqual(released, [1, 2, 3]);
  released.length = 0;
  const seen: number[] = [];
  await assert.rejects(
    lastValueFrom(
      from([1, 2, 3]).pipe(
        reduceItems(
          (x: number) => {
            seen.push(x);
            if (x === 2) throw new Error('bad batch');
          },
          () => 0,
          (x) => released.push(x),
        ),
      ),
    ),
    /bad batch/,
  );
  assert.deepEqual(seen, [1, 2]);
  assert.deepEqual(released, [1, 2, 3]);
});

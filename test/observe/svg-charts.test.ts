import { test } from 'node:test';
import assert from 'node:assert/strict';
import { barChart, decimate, lineChart, logTicks, niceTicks, shortNumber, tickLabels } from '../../src/observe/svg-charts.ts';

test('ticks: round 1-2-5 steps covering the range, log ticks by decade, labels just precise enough to differ', () => {
  assert.deepEqual(niceTicks(0, 1), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.deepEqual(niceTicks(0.00944, 0.01), [0.0096, 0.0098, 0.01]);
  assert.deepEqual(niceTicks(0, 40000, 6), [0, 10000, 20000, 30000, 40000]);
  assert.deepEqual(niceTicks(3, 3), [3]);
  assert.deepEqual(logTicks(0.01, 1), [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1]);
  assert.deepEqual(logTicks(0.0007, 2.8), [0.001, 0.01, 0.1, 1]);
  assert.deepEqual(tickLabels([0.0096, 0.0098, 0.01]), ['0.0096', '0.0098', '0.01']);
  assert.deepEqual(tickLabels([1.0001, 1.0002, 1.0003]), ['1.0001', '1.0002', '1.0003']);
  assert.deepEqual([shortNumber(0.0007), shortNumber(123456), shortNumber(2.5)], ['7e-4', '1.23e5', '2.5']);
  assert.throws(() => niceTicks(0, Number.NaN), /bounds must be finite/);
});

test('decimate: at most max points, in x order, keeping every bucket extreme (a one-step spike survives)', () => {
  const points = Array.from({ length: 10_000 }, (_, i) => [i, Math.sin(i / 100)] as const);
  const spiky = points.map(([x, y]) => [x, x === 1234 ? 50 : x === 8765 ? -50 : y] as const);
  const d = decimate(spiky, 600);
  assert.ok(d.length <= 600, `${d.length} points`);
  assert.ok(
    d.every((p, i) => i === 0 || p[0] > d[i - 1]![0]),
    'x order',
  );
  assert.ok(d.some(([x, y]) => x === 1234 && y === 50));
  assert.ok(d.some(([x, y]) => x === 8765 && y === -50));
  assert.deepEqual(decimate(points.slice(0, 5), 600), points.slice(0, 5));
});

test('lineChart: data mapped onto the plot area exactly; a non-finite value breaks the line; auto log scale for unlike sizes', () => {
  // 640 x 260: plot from x 56 to 628, y 42 (top) to 220 (bottom); y ticks 0..1 span it
  const svg = lineChart({
    title: 'loss',
    xLabel: 'iteration',
    series: [
      {
        name: 'total',
        points: [
          [0, 0],
          [5, 0.5],
          [10, 1],
        ],
      },
    ],
  });
  assert.match(svg, /<polyline [^>]*points="56,220 342,131 628,42"/);
  const broken = lineChart({
    title: 't',
    xLabel: 'x',
    series: [
      {
        name: 's',
        points: [
          [0, 1],
          [1, 2],
          [2, Number.NaN],
          [3, 2],
          [4, 1],
          [5, Number.POSITIVE_INFINITY],
          [6, 3],
        ],
      },
    ],
  });
  assert.equal(broken.match(/<polyline /g)?.length, 2);
  assert.equal(broken.match(/<circle /g)?.length, 1, 'the lone point after the last gap is a dot');
  const log = lineChart({
    title: 't',
    xLabel: 'iteration',
    series: [
      {
        name: 'adv',
        points: [
          [1, 0.001],
          [2, 1],
        ],
      },
    ],
  });
  assert.match(log, /\(y: log scale\)/);
  // log y: 0.001 at the bottom (220), 1 at the top (42)
  assert.match(log, /points="56,220 628,42"/);
  assert.match(lineChart({ title: 't', xLabel: 'x', series: [{ name: 's', points: [[0, Number.NaN]] }] }), /no finite values/);
});

test('barChart: bar heights proportional to the values, null values leave a gap, names escaped, lengths checked', () => {
  // 320 x 244: plot y from 42 to 220 (178 px) for 0..100
  const svg = barChart({
    title: 'IoU',
    categories: ['a', 'b'],
    series: [{ name: 'warmup', values: [50, null] }],
    yMax: 100,
    format: (v) => v.toFixed(2),
  });
  const rects = [...svg.matchAll(/<rect x="[^"]+" y="([^"]+)" width="[^"]+" height="([^"]+)"/g)];
  assert.deepEqual(
    rects.map((m) => [Number(m[1]), Number(m[2])]),
    [[131, 89]],
  );
  assert.match(svg, /<title>a, warmup: 50\.00<\/title>/);
  const evil = barChart({ title: '<t>', categories: ['<b>&"'], series: [{ name: "x'", values: [1] }], format: String });
  assert.ok(!evil.includes('<b>') && !evil.includes('<t>'), evil);
  assert.match(evil, /&#60;b&#62;&#38;&#34;/);
  assert.throws(
    () => barChart({ title: 'IoU', categories: ['a', 'b'], series: [{ name: 'ssl', values: [1] }], format: String }),
    /barChart 'IoU': series 'ssl' has 1 values for 2 categories/,
  );
});

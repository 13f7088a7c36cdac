/**
 * The embedded default benchmark: a deterministic generator of street scenes with the Cityscapes classes
 * in two domains, written in the real datasets' layouts (REFERENCE 6.1) so that the same ingest code reads
 * them, and a first run works offline.
 *
 * - source ("GTA5"): flat game-like rendering; clean saturated per-class colours, mild face shading, sharp
 *   edges, no noise; taller buildings, a higher horizon, fewer cars and persons.
 * - target ("Cityscapes"): the same classes and geometry with a different palette (desaturated, warmer,
 *   per-class hue shifts), overcast lighting with a colour cast, cast shadows, haze, vignetting, per-class
 *   procedural texture, slight blur and sensor noise; a lower horizon, lower buildings, more greenery,
 *   cars and persons, and the ego vehicle's hood at the bottom (label 0, as Cityscapes' ego vehicle).
 *
 * A scene is a small 3-D world (a street with sidewalks, facades, trees, poles, vehicles, people) seen by
 * a pinhole camera. Every object is rasterised into the label map first (painter's order, far to near),
 * together with per-pixel appearance hints (instance, face orientation, detail such as windows or tyres,
 * depth); the image is then shaded from those maps alone with the domain's style, so image and label align
 * exactly. The same (seed, index, domain) always gives the same bytes.
 */
import { mkdir, open, rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import { encodePng } from '../data/png.ts';
import { Rng } from '../data/rng.ts';

/**
 * 'night' is a second target domain the default benchmark never renders (a test fixture for adaptation
 * on another kind of shift): the target's street geometry under street lamps, dark, orange-cast, noisy.
 */
export type SyntheticDomain = 'source' | 'target' | 'night';
export const SYNTHETIC_DOMAINS: readonly SyntheticDomain[] = ['source', 'target', 'night'];

/** Cityscapes label IDs (REFERENCE 6.2) drawn by the generator; 0 is unlabelled (the target's hood). */
export const LABEL_ID = {
  unlabelled: 0,
  road: 7,
  sidewalk: 8,
  building: 11,
  wall: 12,
  fence: 13,
  pole: 17,
  trafficLight: 19,
  trafficSign: 20,
  vegetation: 21,
  terrain: 22,
  sky: 23,
  person: 24,
  rider: 25,
  car: 26,
  truck: 27,
  bus: 28,
  train: 31,
  motorcycle: 32,
  bicycle: 33,
} as const;

/** Every value a generated label map may hold. */
export const SYNTHETIC_LABEL_IDS: readonly number[] = Object.values(LABEL_ID).sort((a, b) => a - b);

export interface SyntheticScene {
  /** RGB, row-major HWC. */
  image: Uint8Array;
  /** Cityscapes label IDs, row-major HW. */
  labelIds: Uint8Array;
  width: number;
  height: number;
}

/** Default sizes [height, width]: GTA5's 16:9 and Cityscapes' 1:2, scaled down. */
export const DEFAULT_SOURCE_SIZE: readonly [number, number] = [144, 256];
export const DEFAULT_TARGET_SIZE: readonly [number, number] = [128, 256];

/** Target val scenes use indices from here on, so they never depend on how many train scenes exist. */
export const VAL_INDEX_OFFSET = 1_000_000;

const MIN_SIDE = 16;
const MAX_SIDE = 4096;

// ---------------------------------------------------------------------------------------------------------
// Rasterisation: label + appearance hints

const L = LABEL_ID;

/** Appearance details: change the colour a pixel is shaded with, never its label. */
const D_NONE = 0;
const D_WINDOW = 1;
const D_MARKING = 2;
const D_TYRE = 3;
const D_GLASS = 4;
const D_SKIN = 5;
const D_LAMP_RED = 6;
const D_LAMP_AMBER = 7;
const D_LAMP_GREEN = 8;
const D_TAIL = 9;
const D_TRUNK = 10;
const D_KERB = 11;
const D_DARK = 12;
const D_FRAME = 13;

/** Face orientations, for directional shading. */
const F_FRONT = 0;
const F_POS_X = 1;
const F_NEG_X = 2;
const F_TOP = 3;

type PixelFn = (x: number, y: number) => number;

interface Paint {
  cls: number;
  inst: number;
  face: number;
  detail: number | PixelFn;
  /** Distance along the view axis (metres), for haze. */
  z: number | PixelFn;
}

class Canvas {
  readonly width: number;
  readonly height: number;
  readonly label: Uint8Array;
  readonly inst: Uint16Array;
  readonly detail: Uint8Array;
  readonly face: Uint8Array;
  readonly depth: Float32Array;
  private readonly xs = new Float64Array(64);

  constructor(width: number, height: number) {
    this.width = width;
    this.height = height;
    const n = width * height;
    this.label = new Uint8Array(n);
    this.inst = new Uint16Array(n);
    this.detail = new Uint8Array(n);
    this.face = new Uint8Array(n);
    this.depth = new Float32Array(n);
  }

  /** Fills the pixels of row y whose centres lie in [xa, xb). */
  span(y: number, xa: number, xb: number, p: Paint): void {
    const x0 = Math.max(0, Math.ceil(xa - 0.5));
    const x1 = Math.min(this.width - 1, Math.ceil(xb - 0.5) - 1);
    if (x1 < x0) return;
    const row = y * this.width;
    const { cls, inst, face, detail, z } = p;
    for (let x = x0; x <= x1; x++) {
      const i = row + x;
      this.label[i] = cls;
      this.inst[i] = inst;
      this.face[i] = face;
      this.detail[i] = typeof detail === 'number' ? detail : detail(x, y);
      this.depth[i] = typeof z === 'number' ? z : z(x, y);
    }
  }

  /** Even-odd scanline fill of a polygon given as flat [x0, y0, x1, y1, ...], sampled at pixel centres. */
  polygon(pts: readonly number[], p: Paint): void {
    const n = pts.length >> 1;
    let ymin = Infinity;
    let ymax = -Infinity;
    for (let i = 0; i < n; i++) {
      const y = pts[2 * i + 1]!;
      if (y < ymin) ymin = y;
      if (y > ymax) ymax = y;
    }
    const y0 = Math.max(0, Math.ceil(ymin - 0.5));
    const y1 = Math.min(this.height - 1, Math.ceil(ymax - 0.5) - 1);
    const xs = this.xs;
    for (let y = y0; y <= y1; y++) {
      const yc = y + 0.5;
      let k = 0;
      for (let i = 0, j = n - 1; i < n; j = i++) {
        const ya = pts[2 * i + 1]!;
        const yb = pts[2 * j + 1]!;
        if (ya <= yc !== yb <= yc) {
          const xa = pts[2 * i]!;
          xs[k++] = xa + ((yc - ya) * (pts[2 * j]! - xa)) / (yb - ya);
        }
      }
      for (let a = 1; a < k; a++) {
        const v = xs[a]!;
        let b = a - 1;
        while (b >= 0 && xs[b]! > v) {
          xs[b + 1] = xs[b]!;
          b--;
        }
        xs[b + 1] = v;
      }
      for (let a = 0; a + 1 < k; a += 2) this.span(y, xs[a]!, xs[a + 1]!, p);
    }
  }

  /** Axis-aligned rectangle at least one pixel wide and tall (thin poles stay visible far away). */
  rect(xa: number, ya: number, xb: number, yb: number, p: Paint): void {
    if (xb - xa < 1) {
      const c = (xa + xb) / 2;
      xa = c - 0.5;
      xb = c + 0.5;
    }
    if (yb - ya < 1) {
      const c = (ya + yb) / 2;
      ya = c - 0.5;
      yb = c + 0.5;
    }
    const y0 = Math.max(0, Math.ceil(ya - 0.5));
    const y1 = Math.min(this.height - 1, Math.ceil(yb - 0.5) - 1);
    for (let y = y0; y <= y1; y++) this.span(y, xa, xb, p);
  }

  ellipse(cx: number, cy: number, rx: number, ry: number, p: Paint): void {
    rx = Math.max(rx, 0.5);
    ry = Math.max(ry, 0.5);
    const y0 = Math.max(0, Math.ceil(cy - ry - 0.5));
    const y1 = Math.min(this.height - 1, Math.ceil(cy + ry - 0.5) - 1);
    for (let y = y0; y <= y1; y++) {
      const d = (y + 0.5 - cy) / ry;
      if (d * d >= 1) continue;
      const half = rx * Math.sqrt(1 - d * d);
      this.span(y, cx - half, cx + half, p);
    }
  }
}

/** Pinhole camera looking along +Z, X to the right, Y up, ground at Y = 0. */
class View {
  readonly f: number;
  readonly vx: number;
  readonly hy: number;
  readonly camH: number;

  constructor(f: number, vx: number, hy: number, camH: number) {
    this.f = f;
    this.vx = vx;
    this.hy = hy;
    this.camH = camH;
  }

  x(X: number, Z: number): number {
    return this.vx + (this.f * X) / Z;
  }
  y(Y: number, Z: number): number {
    return this.hy + (this.f * (this.camH - Y)) / Z;
  }

  /** Depth of the plane X = const seen at pixel column x. */
  zOnSide(X: number, x: number): number {
    const d = x + 0.5 - this.vx;
    return Math.min(1e4, Math.max(0.1, d === 0 ? 1e4 : (this.f * X) / d));
  }
  /** World height seen at pixel row y on a surface at depth Z. */
  yWorld(y: number, Z: number): number {
    return this.camH - ((y + 0.5 - this.hy) * Z) / this.f;
  }
  xWorld(x: number, Z: number): number {
    return ((x + 0.5 - this.vx) * Z) / this.f;
  }

  /** Vertical plane X = const between depths z0..z1 and heights y0..y1. */
  side(X: number, z0: number, z1: number, y0: number, y1: number): number[] {
    return [this.x(X, z0), this.y(y0, z0), this.x(X, z1), this.y(y0, z1), this.x(X, z1), this.y(y1, z1), this.x(X, z0), this.y(y1, z0)];
  }
}

/** World-coordinate detail on a vertical face: (along, Y) in metres from the face's corner. */
type FaceFn = (along: number, Y: number) => number;

interface Box {
  X0: number;
  X1: number;
  Y0: number;
  Y1: number;
  Z0: number;
  Z1: number;
}

interface Instance {
  cls: number;
  variant: number;
  tone: number;
}

/** Ground layout shared by the rasteriser and the target's ground textures and shadows. */
interface Street {
  roadL: number;
  roadR: number;
  walkL: number;
  walkR: number;
  facadeL: number;
  facadeR: number;
  shadowSide: number;
  shadowWidth: number;
  treeShadows: number[];
}

interface Built {
  canvas: Canvas;
  view: View;
  instances: Instance[];
  street: Street;
}

// ---------------------------------------------------------------------------------------------------------
// Layout statistics per domain

type Range = readonly [number, number];

interface Layout {
  horizon: Range;
  focal: Range;
  camH: Range;
  roadHalf: Range;
  sidewalk: Range;
  terrainP: number;
  buildingH: Range;
  gapP: number;
  cars: Range;
  parkedP: number;
  persons: Range;
  groupP: number;
  poles: Range;
  sidewalkTrees: Range;
  riderP: number;
  motoP: number;
  parkedBikeP: number;
  truckP: number;
  busP: number;
  trainP: number;
  crosswalkP: number;
  hood: Range | null;
}

const LAYOUT: Record<'source' | 'target', Layout> = {
  source: {
    horizon: [0.4, 0.5],
    focal: [0.72, 0.86],
    camH: [1.5, 1.9],
    roadHalf: [4, 7.5],
    sidewalk: [2, 4],
    terrainP: 0.35,
    buildingH: [12, 38],
    gapP: 0.22,
    cars: [1, 4],
    parkedP: 0.2,
    persons: [0, 2],
    groupP: 0.1,
    poles: [1, 3],
    sidewalkTrees: [0, 2],
    riderP: 0.3,
    motoP: 0.3,
    parkedBikeP: 0.15,
    truckP: 0.3,
    busP: 0.2,
    trainP: 0.08,
    crosswalkP: 0.2,
    hood: null,
  },
  target: {
    horizon: [0.32, 0.41],
    focal: [0.85, 1.0],
    camH: [1.2, 1.45],
    roadHalf: [3.5, 6],
    sidewalk: [2.5, 4.5],
    terrainP: 0.5,
    buildingH: [7, 20],
    gapP: 0.38,
    cars: [3, 8],
    parkedP: 0.6,
    persons: [2, 6],
    groupP: 0.4,
    poles: [2, 5],
    sidewalkTrees: [1, 4],
    riderP: 0.55,
    motoP: 0.15,
    parkedBikeP: 0.4,
    truckP: 0.15,
    busP: 0.2,
    trainP: 0.1,
    crosswalkP: 0.35,
    hood: [0.06, 0.1],
  },
};

const range = (rng: Rng, r: Range): number => rng.uniform(r[0], r[1]);
const count = (rng: Rng, r: Range): number => rng.int(r[0], r[1]);
const frac = (v: number): number => v - Math.floor(v);

// ---------------------------------------------------------------------------------------------------------
// Scene construction

function buildScene(domain: SyntheticDomain, rng: Rng, h: number, w: number): Built {
  const lay = LAYOUT[domain === 'night' ? 'target' : domain];
  const cv = new Canvas(w, h);
  const view = new View(w * range(rng, lay.focal), w * rng.uniform(0.45, 0.55), h * range(rng, lay.horizon), range(rng, lay.camH));
  const instances: Instance[] = [{ cls: 0, variant: 0, tone: 0 }];
  const newInst = (cls: number): number => {
    instances.push({ cls, variant: rng.next(), tone: rng.uniform(-1, 1) });
    return Math.min(instances.length - 1, 65535);
  };

  // Ground plan (metres): the camera stands on the road.
  const half = range(rng, lay.roadHalf);
  const off = rng.uniform(-0.5, 0.5) * half;
  const roadL = off - half;
  const roadR = off + half;
  const walkL = roadL - range(rng, lay.sidewalk);
  const walkR = roadR + range(rng, lay.sidewalk);
  const facadeL = walkL - (rng.next() < lay.terrainP ? rng.uniform(1, 4) : 0);
  const facadeR = walkR + (rng.next() < lay.terrainP ? rng.uniform(1, 4) : 0);
  const street: Street = {
    roadL,
    roadR,
    walkL,
    walkR,
    facadeL,
    facadeR,
    shadowSide: rng.next() < 0.5 ? -1 : 1,
    shadowWidth: rng.uniform(2, 9),
    treeShadows: [],
  };
  const crosswalk = rng.next() < lay.crosswalkP ? rng.uniform(8, 22) : -1;
  const lanes: number[] = [];
  for (let X = roadL + 1.7; X <= roadR - 1.7; X += 3.3) lanes.push(X);
  if (lanes.length === 0) lanes.push((roadL + roadR) / 2);

  paintGround(cv, view, street, crosswalk, {
    sky: newInst(L.sky),
    road: newInst(L.road),
    walk: newInst(L.sidewalk),
    terrain: newInst(L.terrain),
  });
  paintSkyline(cv, view, rng, newInst);

  // Facades, gaps and what stands in the gaps, far to near (the facade plane hides what is behind it).
  const back: { z: number; draw: () => void }[] = [];
  for (const s of [-1, 1]) {
    const Xf = s < 0 ? facadeL : facadeR;
    let z = rng.uniform(1, 7);
    while (z < 160) {
      const len = rng.uniform(8, 30);
      const z0 = z;
      const z1 = z + len;
      if (rng.next() >= lay.gapP) {
        const H = range(rng, lay.buildingH);
        const inst = newInst(L.building);
        const pitch = rng.uniform(2.4, 3.6);
        const floorH = rng.uniform(2.8, 3.4);
        const shop = rng.next() < 0.5;
        back.push({
          z: z0,
          draw: () =>
            facade(cv, view, Xf, z0, z1, 0, H, L.building, inst, s, (a, Y) => {
              if (Y < 3.2) return shop && frac(a / 6) > 0.2 && Y > 0.4 && Y < 2.6 ? D_WINDOW : D_NONE;
              return frac(a / pitch) > 0.3 && frac(a / pitch) < 0.75 && frac(Y / floorH) > 0.35 && frac(Y / floorH) < 0.8 && Y < H - 0.8
                ? D_WINDOW
                : D_NONE;
            }),
        });
      } else {
        const kind = rng.next();
        if (kind < 0.35) {
          const hw = rng.uniform(1, 2.4);
          const inst = newInst(L.wall);
          back.push({ z: z0, draw: () => facade(cv, view, Xf, z0, z1, 0, hw, L.wall, inst, s, () => D_NONE) });
        } else if (kind < 0.65) {
          const hf = rng.uniform(1.2, 2.2);
          const inst = newInst(L.fence);
          back.push({
            z: z0,
            draw: () =>
              facade(cv, view, Xf, z0, z1, 0, hf, L.fence, inst, s, (a, Y) => (frac(a / 0.25) < 0.3 || Y > hf - 0.12 ? D_FRAME : D_NONE)),
          });
        } else if (kind < 0.8) {
          const hh = rng.uniform(0.8, 1.8);
          const inst = newInst(L.vegetation);
          back.push({ z: z0, draw: () => facade(cv, view, Xf, z0, z1, 0, hh, L.vegetation, inst, s, () => D_NONE) });
        }
        for (let t = z0 + rng.uniform(0, 4); t < z1; t += rng.uniform(4, 9)) {
          const X = Xf + s * rng.uniform(1, 6);
          const tz = t;
          const tree = makeTree(rng, newInst(L.vegetation));
          back.push({ z: tz + 0.01, draw: () => tree(cv, view, X, tz) });
        }
      }
      z = z1;
    }
  }
  back.sort((a, b) => b.z - a.z);
  for (const b of back) b.draw();

  // Street furniture, vehicles and people, far to near.
  const front: { z: number; draw: () => void }[] = [];
  const side = (): number => (rng.next() < 0.5 ? -1 : 1);
  const onWalk = (s: number, from: number, to: number): number =>
    s < 0 ? roadL - rng.uniform(from, to) * (roadL - walkL) : roadR + rng.uniform(from, to) * (walkR - roadR);

  const nTrees = count(rng, lay.sidewalkTrees);
  for (let i = 0; i < nTrees; i++) {
    const X = onWalk(side(), 0.7, 0.9);
    const Z = rng.uniform(7, 60);
    street.treeShadows.push(X, Z);
    const tree = makeTree(rng, newInst(L.vegetation));
    front.push({ z: Z, draw: () => tree(cv, view, X, Z) });
  }

  const nPoles = count(rng, lay.poles);
  for (let i = 0; i < nPoles; i++) {
    const s = side();
    const X = onWalk(s, 0.15, 0.4);
    const Z = i === 0 && crosswalk > 0 ? crosswalk - 1 : rng.uniform(6, 45);
    const H = rng.uniform(3.5, 6.5);
    const r = rng.next();
    const light = r < 0.45 || (i === 0 && crosswalk > 0);
    const sign = r >= 0.35;
    const pole = newInst(L.pole);
    const lightInst = newInst(L.trafficLight);
    const signInst = newInst(L.trafficSign);
    const signY = light ? rng.uniform(2.2, H - 1.5) : H - rng.uniform(0.4, 0.7);
    const signR = rng.uniform(0.3, 0.45);
    const signShape = rng.int(0, 2);
    front.push({
      z: Z,
      draw: () => {
        const hw = 0.09;
        cv.rect(view.x(X - hw, Z), view.y(H, Z), view.x(X + hw, Z), view.y(0, Z), paint(L.pole, pole, F_FRONT, D_NONE, Z));
        if (light) {
          const lx = X - s * 0.2;
          const p = paint(L.trafficLight, lightInst, F_FRONT, D_NONE, Z);
          const xa = view.x(lx - 0.18, Z);
          const xb = view.x(lx + 0.18, Z);
          const ya = view.y(H, Z);
          const yb = view.y(H - 0.95, Z);
          const lit = instances[lightInst]!.variant;
          p.detail = (x, y) => {
            const u = (x + 0.5 - xa) / (xb - xa);
            const v = (y + 0.5 - ya) / (yb - ya);
            const row = Math.min(2, Math.floor(v * 3));
            const dv = v * 3 - row - 0.5;
            if ((u - 0.5) ** 2 * 1.0 + dv * dv * 0.11 > 0.06) return D_NONE;
            const code = row === 0 ? D_LAMP_RED : row === 1 ? D_LAMP_AMBER : D_LAMP_GREEN;
            return Math.floor(lit * 3) === row ? code : D_DARK;
          };
          cv.rect(xa, ya, xb, yb, p);
        }
        if (sign) {
          const sx = view.x(X, Z);
          const sy = view.y(signY, Z);
          const rr = (view.f * signR) / Z;
          const p = paint(L.trafficSign, signInst, F_FRONT, D_NONE, Z);
          if (signShape === 0) cv.ellipse(sx, sy, rr, rr, p);
          else if (signShape === 1) cv.rect(sx - rr, sy - rr * 0.8, sx + rr, sy + rr * 0.8, p);
          else cv.polygon([sx, sy - rr * 1.1, sx + rr * 1.1, sy, sx, sy + rr * 1.1, sx - rr * 1.1, sy], p);
        }
      },
    });
  }

  // Vehicles in lanes (or parked at the kerb), without overlapping each other.
  const taken: { X: number; z0: number; z1: number }[] = [];
  const place = (length: number, lanesOnly: boolean, parkedP: number): { X: number; Z: number } | null => {
    for (let tries = 0; tries < 12; tries++) {
      const parked = !lanesOnly && rng.next() < parkedP;
      const X = parked ? (rng.next() < 0.5 ? roadL + 1.15 : roadR - 1.15) : lanes[rng.int(0, lanes.length - 1)]! + rng.uniform(-0.3, 0.3);
      const u = rng.next();
      const Z = 6.5 + 55 * u * u;
      if (Math.abs(X) < 1.5 && Z < 9) continue;
      if (taken.some((t) => Math.abs(t.X - X) < 2.4 && Z < t.z1 + 1.5 && Z + length > t.z0 - 1.5)) continue;
      taken.push({ X, z0: Z, z1: Z + length });
      return { X, Z };
    }
    return null;
  };
  const nCars = count(rng, lay.cars);
  for (let i = 0; i < nCars; i++) {
    const len = rng.uniform(3.9, 4.8);
    const at = place(len, false, lay.parkedP);
    if (!at) continue;
    const car = makeCar(rng, newInst(L.car), len);
    front.push({ z: at.Z, draw: () => car(cv, view, at.X, at.Z) });
  }
  if (rng.next() < lay.truckP) {
    const at = place(8, true, 0);
    if (at) {
      const v = makeTruck(rng, newInst(L.truck));
      front.push({ z: at.Z, draw: () => v(cv, view, at.X, at.Z) });
    }
  }
  if (rng.next() < lay.busP) {
    const at = place(12, true, 0);
    if (at) {
      const v = makeBus(newInst(L.bus));
      front.push({ z: at.Z, draw: () => v(cv, view, at.X, at.Z) });
    }
  }
  if (rng.next() < lay.trainP) {
    const at = place(26, true, 0);
    if (at) {
      const v = makeTrain(newInst(L.train));
      front.push({ z: at.Z, draw: () => v(cv, view, at.X, at.Z) });
    }
  }

  // Two-wheelers: ridden on the road near the kerb, or parked on the sidewalk.
  const twoWheeler = (moto: boolean, ridden: boolean): void => {
    const s = side();
    const X = ridden ? (s < 0 ? roadL + rng.uniform(0.6, 1.4) : roadR - rng.uniform(0.6, 1.4)) : onWalk(s, 0.6, 0.85);
    const Z = rng.uniform(6, 32);
    const bike = makeTwoWheeler(rng, moto, newInst(moto ? L.motorcycle : L.bicycle), ridden ? newInst(L.rider) : 0);
    front.push({ z: Z, draw: () => bike(cv, view, X, Z) });
  };
  if (rng.next() < lay.riderP) twoWheeler(false, true);
  if (rng.next() < lay.motoP) twoWheeler(true, rng.next() < 0.7);
  if (rng.next() < lay.parkedBikeP) twoWheeler(false, false);

  // People on the sidewalks (sometimes in groups), or on the crosswalk.
  const nPersons = count(rng, lay.persons);
  for (let i = 0; i < nPersons; i++) {
    let X: number;
    let Z: number;
    if (crosswalk > 0 && rng.next() < 0.3) {
      X = rng.uniform(roadL + 0.5, roadR - 0.5);
      Z = crosswalk + rng.uniform(0.5, 2.5);
    } else {
      X = onWalk(side(), 0.2, 0.85);
      Z = rng.uniform(5, 40);
    }
    const group = rng.next() < lay.groupP ? rng.int(2, 3) : 1;
    for (let g = 0; g < group; g++) {
      const px = X + g * rng.uniform(0.5, 0.8) * (X < 0 ? 1 : -1);
      const pz = Z + rng.uniform(-0.8, 0.8);
      const person = makePerson(rng, newInst(L.person));
      front.push({ z: pz, draw: () => person(cv, view, px, pz) });
    }
  }

  front.sort((a, b) => b.z - a.z);
  for (const f of front) f.draw();

  // The ego vehicle's hood, as in Cityscapes (label 0 = unlabelled, ignored by training and evaluation).
  if (lay.hood) {
    const hoodH = h * range(rng, lay.hood);
    const inst = newInst(L.unlabelled);
    const p = paint(L.unlabelled, inst, F_TOP, D_NONE, 1);
    for (let y = 0; y < h; y++) {
      const dy = h - (y + 0.5);
      if (dy > hoodH) continue;
      // Rounded outline: |x - centre| <= half-width growing toward the bottom edge.
      const half = (w / 2) * Math.min(1.2, 0.75 + 1.2 * (1 - dy / hoodH));
      cv.span(y, w / 2 - half, w / 2 + half, p);
    }
  }

  return { canvas: cv, view, instances, street };
}

function paint(cls: number, inst: number, face: number, detail: number | PixelFn, z: number | PixelFn): Paint {
  return { cls, inst, face, detail, z };
}

/** Sky above the horizon; road, sidewalks and terrain below it, with markings and kerbs as details. */
function paintGround(
  cv: Canvas,
  view: View,
  st: Street,
  crosswalk: number,
  inst: { sky: number; road: number; walk: number; terrain: number },
): void {
  const { width: w, height: h, label, detail, depth } = cv;
  const centre = (st.roadL + st.roadR) / 2;
  const twoWay = st.roadR - st.roadL > 7;
  for (let y = 0; y < h; y++) {
    const dy = y + 0.5 - view.hy;
    const row = y * w;
    if (dy <= 0) {
      label.fill(L.sky, row, row + w);
      cv.inst.fill(inst.sky, row, row + w);
      depth.fill(1e4, row, row + w);
      continue;
    }
    const Z = (view.f * view.camH) / dy;
    for (let x = 0; x < w; x++) {
      const i = row + x;
      const X = view.xWorld(x, Z);
      depth[i] = Z;
      let cls: number;
      let d = D_NONE;
      let id: number;
      if (X >= st.roadL && X <= st.roadR) {
        cls = L.road;
        id = inst.road;
        const fromL = X - st.roadL;
        const fromR = st.roadR - X;
        if (twoWay && Math.abs(X - centre) < 0.08 && frac(Z / 9) < 0.45) d = D_MARKING;
        else if ((fromL > 0.25 && fromL < 0.38) || (fromR > 0.25 && fromR < 0.38)) d = D_MARKING;
        else if (crosswalk > 0 && Z > crosswalk && Z < crosswalk + 3.2 && frac(fromL / 1.1) < 0.5) d = D_MARKING;
      } else if (X >= st.walkL && X <= st.walkR) {
        cls = L.sidewalk;
        id = inst.walk;
        if (X > st.roadR ? X - st.roadR < 0.22 : st.roadL - X < 0.22) d = D_KERB;
      } else {
        cls = L.terrain;
        id = inst.terrain;
      }
      label[i] = cls;
      cv.inst[i] = id;
      detail[i] = d;
      cv.face[i] = F_TOP;
    }
  }
}

/** Distant buildings and trees along the horizon, behind everything else. */
function paintSkyline(cv: Canvas, view: View, rng: Rng, newInst: (cls: number) => number): void {
  const Z = 220;
  let x = -2;
  while (x < cv.width) {
    const wpx = rng.uniform(4, 22);
    const green = rng.next() < 0.3;
    const H = green ? rng.uniform(6, 14) : rng.uniform(8, 45);
    const cls = green ? L.vegetation : L.building;
    const p = paint(cls, newInst(cls), F_FRONT, D_NONE, Z);
    if (green) cv.ellipse(x + wpx / 2, view.y(H * 0.6, Z), wpx / 2 + 1, (view.f * H * 0.45) / Z, p);
    else cv.rect(x, view.y(H, Z), x + wpx, view.y(0, Z) + 1, p);
    x += wpx * rng.uniform(0.6, 1.1);
  }
}

/** A vertical plane along the street (X = const), with a detail pattern in facade coordinates. */
function facade(
  cv: Canvas,
  view: View,
  X: number,
  z0: number,
  z1: number,
  y0: number,
  y1: number,
  cls: number,
  inst: number,
  s: number,
  fn: FaceFn,
): void {
  const zAt = (x: number): number => view.zOnSide(X, x);
  cv.polygon(
    view.side(X, z0, z1, y0, y1),
    paint(
      cls,
      inst,
      s < 0 ? F_POS_X : F_NEG_X,
      (x, y) => {
        const Z = zAt(x);
        return fn(Z - z0, view.yWorld(y, Z) - y0);
      },
      zAt,
    ),
  );
}

/** The faces of a box the camera sees (front, one side, top), each with its own detail pattern. */
function drawBox(cv: Canvas, view: View, b: Box, cls: number, inst: number, front: FaceFn, sideFn: FaceFn): void {
  const { X0, X1, Y0, Y1, Z0, Z1 } = b;
  if (X0 > 0)
    cv.polygon(
      view.side(X0, Z0, Z1, Y0, Y1),
      paint(
        cls,
        inst,
        F_NEG_X,
        (x, y) => {
          const Z = view.zOnSide(X0, x);
          return sideFn(Z - Z0, view.yWorld(y, Z) - Y0);
        },
        (x) => view.zOnSide(X0, x),
      ),
    );
  if (X1 < 0)
    cv.polygon(
      view.side(X1, Z0, Z1, Y0, Y1),
      paint(
        cls,
        inst,
        F_POS_X,
        (x, y) => {
          const Z = view.zOnSide(X1, x);
          return sideFn(Z - Z0, view.yWorld(y, Z) - Y0);
        },
        (x) => view.zOnSide(X1, x),
      ),
    );
  if (Y1 < view.camH) {
    cv.polygon(
      [view.x(X0, Z0), view.y(Y1, Z0), view.x(X1, Z0), view.y(Y1, Z0), view.x(X1, Z1), view.y(Y1, Z1), view.x(X0, Z1), view.y(Y1, Z1)],
      paint(cls, inst, F_TOP, D_NONE, Z0),
    );
  }
  const xa = view.x(X0, Z0);
  const xb = view.x(X1, Z0);
  const ya = view.y(Y1, Z0);
  const yb = view.y(Y0, Z0);
  cv.rect(
    xa,
    ya,
    xb,
    yb,
    paint(cls, inst, F_FRONT, (x, y) => front(((x + 0.5 - xa) / (xb - xa)) * (X1 - X0), ((yb - y - 0.5) / (yb - ya)) * (Y1 - Y0)), Z0),
  );
}

type Drawer = (cv: Canvas, view: View, X: number, Z: number) => void;

function makeTree(rng: Rng, inst: number): Drawer {
  const trunkH = rng.uniform(1.8, 3.2);
  const R = rng.uniform(1.4, 3);
  const blobs: number[] = [];
  const n = rng.int(2, 4);
  for (let i = 0; i < n; i++) blobs.push(rng.uniform(-0.6, 0.6) * R, trunkH + R * rng.uniform(0.6, 1.3), R * rng.uniform(0.6, 0.9));
  return (cv, view, X, Z) => {
    cv.rect(
      view.x(X - 0.15, Z),
      view.y(trunkH + R * 0.5, Z),
      view.x(X + 0.15, Z),
      view.y(0, Z),
      paint(L.vegetation, inst, F_FRONT, D_TRUNK, Z),
    );
    for (let i = 0; i < blobs.length; i += 3) {
      const r = (view.f * blobs[i + 2]!) / Z;
      cv.ellipse(view.x(X + blobs[i]!, Z), view.y(blobs[i + 1]!, Z), r, r * 0.9, paint(L.vegetation, inst, F_FRONT, D_NONE, Z));
    }
  };
}

function makeCar(rng: Rng, inst: number, len: number): Drawer {
  const wid = rng.uniform(1.7, 1.95);
  const body = rng.uniform(0.8, 0.95);
  const top = rng.uniform(1.38, 1.75);
  return (cv, view, X, Z) => {
    const b: Box = { X0: X - wid / 2, X1: X + wid / 2, Y0: 0, Y1: body, Z0: Z, Z1: Z + len };
    drawBox(
      cv,
      view,
      b,
      L.car,
      inst,
      (u, Y) => {
        if (Y < 0.28 && (u < 0.45 || u > wid - 0.45) && u > 0.12 && u < wid - 0.12) return D_TYRE;
        if (Y > body - 0.32 && Y < body - 0.12 && (u < 0.35 || u > wid - 0.35)) return D_TAIL;
        return D_NONE;
      },
      (a, Y) => ((a - 0.8) ** 2 + (Y - 0.33) ** 2 < 0.1 || (a - (len - 0.8)) ** 2 + (Y - 0.33) ** 2 < 0.1 ? D_TYRE : D_NONE),
    );
    const cab: Box = { X0: b.X0 + 0.1, X1: b.X1 - 0.1, Y0: body, Y1: top, Z0: Z + 0.9, Z1: Z + len - 1.1 };
    const cw = cab.X1 - cab.X0;
    const ch = top - body;
    drawBox(
      cv,
      view,
      cab,
      L.car,
      inst,
      (u, Y) => (u > 0.12 && u < cw - 0.12 && Y > 0.06 && Y < ch - 0.1 ? D_GLASS : D_NONE),
      (a, Y) =>
        Y > 0.08 && Y < ch - 0.08 && a > 0.25 && a < cab.Z1 - cab.Z0 - 0.2 && frac(a / ((cab.Z1 - cab.Z0) / 2)) > 0.06 ? D_GLASS : D_NONE,
    );
  };
}

function makeTruck(rng: Rng, inst: number): Drawer {
  const H = rng.uniform(3.2, 3.9);
  return (cv, view, X, Z) => {
    drawBox(
      cv,
      view,
      { X0: X - 1.25, X1: X + 1.25, Y0: 0.5, Y1: H, Z0: Z, Z1: Z + 6 },
      L.truck,
      inst,
      (u, Y) => (frac(u / 1.25) < 0.04 || Y < 0.15 ? D_FRAME : D_NONE),
      (a, Y) => (Y < 0.12 || frac(a / 1.5) < 0.04 ? D_FRAME : D_NONE),
    );
    drawBox(
      cv,
      view,
      { X0: X - 1.2, X1: X + 1.2, Y0: 0, Y1: 0.5, Z0: Z + 0.3, Z1: Z + 6 },
      L.truck,
      inst,
      (u) => (u < 0.5 || u > 1.9 ? D_TYRE : D_FRAME),
      (a, Y) => ((a - 1) ** 2 + (Y - 0.5) ** 2 < 0.22 || (a - 5) ** 2 + (Y - 0.5) ** 2 < 0.22 ? D_TYRE : D_FRAME),
    );
    drawBox(
      cv,
      view,
      { X0: X - 1.2, X1: X + 1.2, Y0: 0, Y1: 2.9, Z0: Z + 6, Z1: Z + 8 },
      L.truck,
      inst,
      () => D_NONE,
      (a, Y) => (Y > 1.7 && Y < 2.6 && a > 0.8 && a < 1.8 ? D_GLASS : (a - 1) ** 2 + (Y - 0.5) ** 2 < 0.22 ? D_TYRE : D_NONE),
    );
  };
}

function makeBus(inst: number): Drawer {
  return (cv, view, X, Z) => {
    drawBox(
      cv,
      view,
      { X0: X - 1.27, X1: X + 1.27, Y0: 0, Y1: 3.1, Z0: Z, Z1: Z + 12 },
      L.bus,
      inst,
      (u, Y) =>
        Y > 1.5 && Y < 2.8 && u > 0.15 && u < 2.39
          ? D_GLASS
          : Y < 0.3 && (u < 0.5 || u > 2.04)
            ? D_TYRE
            : Y > 0.7 && Y < 0.95 && (u < 0.3 || u > 2.24)
              ? D_TAIL
              : D_NONE,
      (a, Y) =>
        Y > 1.3 && Y < 2.65 && frac(a / 1.6) > 0.12
          ? D_GLASS
          : (a - 2.2) ** 2 + (Y - 0.5) ** 2 < 0.2 || (a - 9.5) ** 2 + (Y - 0.5) ** 2 < 0.2
            ? D_TYRE
            : D_NONE,
    );
  };
}

function makeTrain(inst: number): Drawer {
  return (cv, view, X, Z) => {
    drawBox(
      cv,
      view,
      { X0: X - 1.3, X1: X + 1.3, Y0: 0.2, Y1: 3.5, Z0: Z, Z1: Z + 26 },
      L.train,
      inst,
      (u, Y) => (Y > 1.7 && Y < 3.0 && u > 0.2 && u < 2.4 ? D_GLASS : Y < 0.5 ? D_FRAME : D_NONE),
      (a, Y) => (Y > 1.5 && Y < 2.8 && frac(a / 2.2) > 0.15 ? D_GLASS : Y < 0.4 || frac(a / 8.6) < 0.02 ? D_FRAME : D_NONE),
    );
  };
}

/** A bicycle or motorcycle seen from the side, with a rider when `rider` is an instance. */
function makeTwoWheeler(rng: Rng, moto: boolean, inst: number, rider: number): Drawer {
  const dir = rng.next() < 0.5 ? -1 : 1;
  const r = moto ? 0.32 : 0.34;
  const base = moto ? 1.4 : 1.05;
  const cls = moto ? L.motorcycle : L.bicycle;
  const person = rider ? makePerson(rng, rider, true) : null;
  return (cv, view, X, Z) => {
    const s = (v: number): number => (view.f * v) / Z;
    const xb = view.x(X - (dir * base) / 2, Z);
    const xf = view.x(X + (dir * base) / 2, Z);
    const yw = view.y(r, Z);
    const p = paint(cls, inst, F_FRONT, D_NONE, Z);
    const tyre = paint(
      cls,
      inst,
      F_FRONT,
      (x, y) => {
        const dxb = (x + 0.5 - xb) ** 2;
        const dxf = (x + 0.5 - xf) ** 2;
        const dy = (y + 0.5 - yw) ** 2;
        const inner = (s(r) * (moto ? 0.55 : 0.8)) ** 2;
        return Math.min(dxb, dxf) + dy > inner ? D_TYRE : moto ? D_FRAME : D_NONE;
      },
      Z,
    );
    cv.ellipse(xb, yw, s(r), s(r), tyre);
    cv.ellipse(xf, yw, s(r), s(r), tyre);
    const seat = view.y(moto ? 0.8 : 0.9, Z);
    const bar = view.y(moto ? 1.0 : 1.05, Z);
    const xs = view.x(X - dir * 0.2, Z);
    const xh = view.x(X + dir * (base / 2 - 0.1), Z);
    const t = Math.max(1, s(moto ? 0.25 : 0.06));
    cv.polygon([xb, yw, xs, seat, xs + t, seat, xh, bar, xh + t, bar, xf + t, yw, xf, yw], p);
    if (moto)
      cv.polygon(
        [xs - s(0.3) * dir, view.y(0.75, Z), xh, view.y(0.95, Z), xh, view.y(0.45, Z), xs, view.y(0.3, Z)],
        paint(cls, inst, F_FRONT, D_FRAME, Z),
      );
    person?.(cv, view, X - dir * 0.2, Z - 0.05);
  };
}

/** A standing (or, as a rider, seated) person: legs, torso, arms, head. */
function makePerson(rng: Rng, inst: number, seated = false): Drawer {
  const H = rng.uniform(1.55, 1.95);
  const wd = rng.uniform(0.42, 0.56);
  const stride = rng.uniform(0, 0.18);
  const cls = seated ? L.rider : L.person;
  return (cv, view, X, Z) => {
    const s = (v: number): number => (view.f * v) / Z;
    const cx = view.x(X, Z);
    const y0 = view.y(seated ? 0.85 : 0, Z);
    const hip = view.y(seated ? 0.95 : H * 0.48, Z);
    const sh = view.y(seated ? 0.95 + H * 0.33 : H * 0.82, Z);
    const p = (d: number): Paint => paint(cls, inst, F_FRONT, d, Z);
    if (seated) {
      cv.polygon([cx - s(0.1), hip, cx + s(0.12), hip, cx + s(0.2), view.y(0.35, Z), cx + s(0.08), view.y(0.35, Z)], p(D_DARK));
    } else {
      cv.polygon([cx - s(wd * 0.35 + stride), y0, cx - s(wd * 0.05), y0, cx, hip, cx - s(wd * 0.4), hip], p(D_DARK));
      cv.polygon([cx + s(wd * 0.05), y0, cx + s(wd * 0.35 + stride), y0, cx + s(wd * 0.4), hip, cx, hip], p(D_DARK));
    }
    cv.polygon([cx - s(wd * 0.45), hip + s(0.02), cx + s(wd * 0.45), hip + s(0.02), cx + s(wd * 0.5), sh, cx - s(wd * 0.5), sh], p(D_NONE));
    cv.rect(cx - s(wd * 0.62), sh, cx - s(wd * 0.48), sh + s(H * 0.3), p(D_NONE));
    cv.rect(cx + s(wd * 0.48), sh, cx + s(wd * 0.62), sh + s(H * 0.3), p(D_NONE));
    const head = s(H * 0.065);
    const hy = sh - head * 1.15;
    cv.ellipse(cx, hy, head * 0.85, head, p(D_SKIN));
    cv.ellipse(cx, hy - head * 0.45, head * 0.85, head * 0.6, p(D_DARK));
  };
}

// ---------------------------------------------------------------------------------------------------------
// Shading: label + hints -> RGB, per domain

type Rgb = readonly [number, number, number];

interface Style {
  /** Colour variants per label ID; an instance picks one by its variant draw. */
  palette: Readonly<Record<number, readonly Rgb[]>>;
  /** Colours of the details, indexed by detail code (D_NONE unused). */
  details: readonly Rgb[];
  /** Sky colour at the top of the image and at the horizon. */
  skyTop: Rgb;
  skyHorizon: Rgb;
  /** Brightness of [front, sunlit side, shaded side, top] faces. */
  faces: readonly [number, number, number, number];
  /** Per-instance brightness spread (a fraction). */
  toneAmp: number;
}

// Source: saturated, clean "game" colours.
const SOURCE_STYLE: Style = {
  palette: {
    [L.unlabelled]: [[0, 0, 0]],
    [L.road]: [[92, 92, 100]],
    [L.sidewalk]: [[182, 170, 152]],
    [L.building]: [
      [176, 118, 86],
      [214, 190, 140],
      [140, 144, 160],
      [122, 86, 76],
      [222, 210, 186],
    ],
    [L.wall]: [
      [206, 194, 160],
      [168, 156, 142],
    ],
    [L.fence]: [
      [140, 104, 58],
      [96, 98, 112],
    ],
    [L.pole]: [[112, 112, 124]],
    [L.trafficLight]: [[48, 48, 40]],
    [L.trafficSign]: [
      [30, 92, 210],
      [225, 38, 30],
      [245, 205, 20],
      [245, 245, 245],
    ],
    [L.vegetation]: [
      [52, 152, 40],
      [72, 166, 58],
      [40, 126, 36],
    ],
    [L.terrain]: [
      [152, 186, 68],
      [168, 146, 92],
    ],
    [L.sky]: [[80, 150, 240]],
    [L.person]: [
      [205, 58, 48],
      [48, 70, 178],
      [236, 204, 58],
      [56, 146, 70],
      [222, 110, 190],
    ],
    [L.rider]: [
      [240, 122, 28],
      [36, 166, 210],
    ],
    [L.car]: [
      [208, 28, 28],
      [28, 62, 196],
      [244, 244, 244],
      [36, 36, 42],
      [186, 186, 196],
      [236, 184, 18],
    ],
    [L.truck]: [
      [226, 226, 214],
      [208, 92, 26],
    ],
    [L.bus]: [
      [246, 192, 18],
      [36, 112, 208],
    ],
    [L.train]: [
      [196, 196, 208],
      [178, 28, 40],
    ],
    [L.motorcycle]: [
      [188, 18, 28],
      [28, 28, 34],
    ],
    [L.bicycle]: [
      [18, 122, 230],
      [210, 28, 122],
    ],
  },
  details: [
    [0, 0, 0],
    [64, 112, 170],
    [244, 244, 244],
    [24, 24, 24],
    [56, 80, 118],
    [232, 180, 138],
    [255, 32, 32],
    [255, 200, 0],
    [32, 232, 64],
    [226, 18, 18],
    [112, 72, 38],
    [206, 200, 190],
    [40, 40, 52],
    [64, 64, 66],
  ],
  skyTop: [64, 134, 236],
  skyHorizon: [170, 208, 252],
  faces: [0.96, 1.12, 0.78, 1.12],
  toneAmp: 0.06,
};

// Target: desaturated, warmer, per-class hue shifts (olive vegetation, pale overcast sky, dull cars).
const TARGET_STYLE: Style = {
  palette: {
    [L.unlabelled]: [[36, 36, 40]],
    [L.road]: [[88, 85, 84]],
    [L.sidewalk]: [
      [164, 148, 136],
      [146, 140, 134],
    ],
    [L.building]: [
      [152, 142, 128],
      [118, 114, 110],
      [172, 156, 134],
      [112, 96, 86],
      [160, 160, 156],
    ],
    [L.wall]: [
      [168, 160, 146],
      [132, 126, 118],
    ],
    [L.fence]: [
      [106, 100, 88],
      [80, 82, 84],
    ],
    [L.pole]: [[86, 86, 82]],
    [L.trafficLight]: [[40, 40, 38]],
    [L.trafficSign]: [
      [68, 98, 150],
      [170, 70, 60],
      [198, 178, 82],
      [208, 208, 202],
    ],
    [L.vegetation]: [
      [74, 114, 52],
      [62, 98, 46],
      [94, 122, 58],
    ],
    [L.terrain]: [
      [134, 146, 82],
      [150, 134, 98],
    ],
    [L.sky]: [[150, 176, 212]],
    [L.person]: [
      [70, 64, 70],
      [110, 90, 80],
      [58, 68, 94],
      [142, 132, 120],
      [36, 36, 40],
    ],
    [L.rider]: [
      [92, 80, 70],
      [60, 80, 102],
    ],
    [L.car]: [
      [62, 62, 66],
      [166, 166, 170],
      [214, 214, 208],
      [34, 38, 42],
      [70, 80, 110],
      [122, 42, 40],
    ],
    [L.truck]: [
      [192, 188, 178],
      [150, 82, 52],
    ],
    [L.bus]: [
      [200, 180, 82],
      [90, 120, 150],
    ],
    [L.train]: [
      [172, 170, 160],
      [150, 62, 56],
    ],
    [L.motorcycle]: [
      [42, 42, 44],
      [120, 42, 40],
    ],
    [L.bicycle]: [
      [52, 60, 80],
      [92, 40, 60],
    ],
  },
  details: [
    [0, 0, 0],
    [56, 64, 74],
    [204, 200, 190],
    [30, 30, 30],
    [46, 50, 58],
    [192, 150, 126],
    [222, 62, 50],
    [222, 170, 62],
    [82, 200, 122],
    [150, 40, 36],
    [82, 66, 50],
    [168, 162, 152],
    [44, 44, 50],
    [50, 50, 52],
  ],
  skyTop: [138, 166, 208],
  skyHorizon: [206, 210, 212],
  faces: [0.98, 1.05, 0.9, 1.04],
  toneAmp: 0.14,
};

/** Target texture amplitudes per label ID: [coarse blotches, fine grain, per-pixel]. */
const TEXTURE: Readonly<Record<number, readonly [number, number, number]>> = {
  [L.road]: [0.06, 0.04, 0.04],
  [L.sidewalk]: [0.05, 0.03, 0.04],
  [L.building]: [0.07, 0.03, 0.03],
  [L.wall]: [0.05, 0.04, 0.04],
  [L.fence]: [0.03, 0.04, 0.04],
  [L.vegetation]: [0.1, 0.16, 0.12],
  [L.terrain]: [0.08, 0.1, 0.08],
  [L.sky]: [0.05, 0, 0],
};
const DEFAULT_TEXTURE: readonly [number, number, number] = [0.02, 0.03, 0.03];

/** Smooth value noise in [-1, 1] on a lattice of `cell` pixels. */
function valueNoise(w: number, h: number, cell: number, rng: Rng): Float32Array {
  const gw = Math.ceil(w / cell) + 2;
  const gh = Math.ceil(h / cell) + 2;
  const grid = new Float32Array(gw * gh);
  for (let i = 0; i < grid.length; i++) grid[i] = rng.next() * 2 - 1;
  const out = new Float32Array(w * h);
  for (let y = 0; y < h; y++) {
    const gy = y / cell;
    const iy = Math.floor(gy);
    let ty = gy - iy;
    ty = ty * ty * (3 - 2 * ty);
    for (let x = 0; x < w; x++) {
      const gx = x / cell;
      const ix = Math.floor(gx);
      let tx = gx - ix;
      tx = tx * tx * (3 - 2 * tx);
      const a = grid[iy * gw + ix]!;
      const b = grid[iy * gw + ix + 1]!;
      const c = grid[(iy + 1) * gw + ix]!;
      const d = grid[(iy + 1) * gw + ix + 1]!;
      out[y * w + x] = (a + (b - a) * tx) * (1 - ty) + (c + (d - c) * tx) * ty;
    }
  }
  return out;
}

/** Per-instance colours in linear [0, 255] floats. */
function instanceColours(instances: readonly Instance[], style: Style): Float32Array {
  const out = new Float32Array(instances.length * 3);
  instances.forEach((it, k) => {
    const variants = style.palette[it.cls] ?? [[128, 128, 128]];
    const c = variants[Math.floor(it.variant * variants.length)]!;
    const t = 1 + style.toneAmp * it.tone;
    for (let j = 0; j < 3; j++) out[k * 3 + j] = c[j]! * t;
  });
  return out;
}

function toBytes(rgb: Float32Array): Uint8Array {
  const out = new Uint8Array(rgb.length);
  for (let i = 0; i < rgb.length; i++) {
    const v = rgb[i]!;
    out[i] = v <= 0 ? 0 : v >= 255 ? 255 : Math.round(v);
  }
  return out;
}

/** Base colour of each pixel (instance or detail colour, face shading); sky as a vertical gradient. */
function baseColours(b: Built, style: Style, sunPosX: boolean): Float32Array {
  const { canvas: cv, view } = b;
  const { width: w, height: h } = cv;
  const inst = instanceColours(b.instances, style);
  const faces = sunPosX ? style.faces : ([style.faces[0], style.faces[2], style.faces[1], style.faces[3]] as const);
  const rgb = new Float32Array(w * h * 3);
  const skyDen = Math.max(1, view.hy);
  for (let y = 0; y < h; y++) {
    const t = Math.min(1, Math.max(0, y / skyDen));
    const sky0 = style.skyTop[0] + (style.skyHorizon[0] - style.skyTop[0]) * t * t;
    const sky1 = style.skyTop[1] + (style.skyHorizon[1] - style.skyTop[1]) * t * t;
    const sky2 = style.skyTop[2] + (style.skyHorizon[2] - style.skyTop[2]) * t * t;
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      const o = i * 3;
      const cls = cv.label[i]!;
      const d = cv.detail[i]!;
      if (cls === L.sky) {
        rgb[o] = sky0;
        rgb[o + 1] = sky1;
        rgb[o + 2] = sky2;
        continue;
      }
      const f = faces[cv.face[i]!]!;
      if (d !== D_NONE) {
        const c = style.details[d]!;
        // Glass and windows reflect a little of the instance's own tone.
        const k = d === D_WINDOW || d === D_GLASS ? f * (0.85 + 0.3 * b.instances[cv.inst[i]!]!.variant) : f;
        rgb[o] = c[0] * k;
        rgb[o + 1] = c[1] * k;
        rgb[o + 2] = c[2] * k;
      } else {
        const s = cv.inst[i]! * 3;
        rgb[o] = inst[s]! * f;
        rgb[o + 1] = inst[s + 1]! * f;
        rgb[o + 2] = inst[s + 2]! * f;
      }
    }
  }
  return rgb;
}

/** Source look: base colours with mild shading only (ground slightly lighter near the camera). */
function shadeSource(b: Built, rng: Rng): Uint8Array {
  const { canvas: cv, view } = b;
  const rgb = baseColours(b, SOURCE_STYLE, rng.next() < 0.5);
  const gain = rng.uniform(0.96, 1.04);
  const { width: w, height: h } = cv;
  for (let y = 0; y < h; y++) {
    const g = gain * (y > view.hy ? 0.94 + 0.1 * ((y - view.hy) / (h - view.hy)) : 1);
    for (let o = y * w * 3; o < (y + 1) * w * 3; o++) rgb[o] = rgb[o]! * g;
  }
  return toBytes(rgb);
}

/** Target look: textures, cast shadows, haze, colour cast, vignetting, blur and sensor noise. */
function shadeTarget(b: Built, rng: Rng): Uint8Array {
  const { canvas: cv, view, street: st } = b;
  const { width: w, height: h } = cv;
  const n = w * h;
  const rgb = baseColours(b, TARGET_STYLE, rng.next() < 0.5);
  const coarse = valueNoise(w, h, Math.max(6, w / 14), rng);
  const fine = valueNoise(w, h, 2.5, rng);
  const shadowK = rng.uniform(0.6, 0.78);
  const visibility = rng.uniform(200, 500);
  const haze = [rng.uniform(180, 205), rng.uniform(182, 205), rng.uniform(185, 210)];
  const bright = rng.uniform(0.9, 1.15);
  const cast = [rng.uniform(1.0, 1.08), rng.uniform(0.98, 1.02), rng.uniform(0.86, 0.96)];
  const vignette = rng.uniform(0.15, 0.32);
  const tiles = rng.uniform(0.45, 0.7);
  const shadowEdge = st.shadowSide < 0 ? st.facadeL + st.shadowWidth : st.facadeR - st.shadowWidth;
  const treeR = 2.2;
  for (let y = 0; y < h; y++) {
    const dy = y + 0.5 - view.hy;
    const Zg = dy > 0 ? (view.f * view.camH) / dy : 0;
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      const o = i * 3;
      const cls = cv.label[i]!;
      const amp = TEXTURE[cls] ?? DEFAULT_TEXTURE;
      let k = 1 + amp[0] * coarse[i]! + amp[1] * fine[i]! + amp[2] * ((rng.nextU32() & 0xffff) / 32768 - 1);
      if (cls === L.sky) k = 1 + 0.08 * Math.max(0, coarse[i]!) * 2; // brighter cloud patches
      if (dy > 0 && (cls === L.road || cls === L.sidewalk || cls === L.terrain)) {
        const X = view.xWorld(x, Zg);
        // Cast shadow of one row of facades across the ground, and round tree shadows.
        if (st.shadowSide < 0 ? X < shadowEdge : X > shadowEdge) k *= shadowK;
        else {
          for (let t = 0; t < st.treeShadows.length; t += 2) {
            const ex = X - st.treeShadows[t]!;
            const ez = (Zg - st.treeShadows[t + 1]!) * 0.7;
            if (ex * ex + ez * ez < treeR * treeR * (1 + 0.3 * fine[i]!)) {
              k *= shadowK + 0.1;
              break;
            }
          }
        }
        if (cls === L.sidewalk && (frac(X / tiles) < 0.07 || frac(Zg / tiles) < 0.07)) k *= 0.86;
      }
      const z = cv.depth[i]!;
      const a = cls === L.sky ? 0 : 1 - Math.exp(-z / visibility);
      for (let c = 0; c < 3; c++) rgb[o + c] = rgb[o + c]! * k * (1 - a) + haze[c]! * a;
    }
  }
  // Camera: exposure, white balance, vignetting.
  const cx = w / 2;
  const cy = h / 2;
  const r2 = cx * cx + cy * cy;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const v = bright * (1 - (vignette * ((x + 0.5 - cx) ** 2 + (y + 0.5 - cy) ** 2)) / r2);
      const o = (y * w + x) * 3;
      for (let c = 0; c < 3; c++) rgb[o + c] = rgb[o + c]! * v * cast[c]!;
    }
  }
  // Lens: separable [1 2 1]/4 blur.
  const tmp = new Float32Array(rgb.length);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const l = Math.max(0, x - 1);
      const r = Math.min(w - 1, x + 1);
      for (let c = 0; c < 3; c++)
        tmp[(y * w + x) * 3 + c] = 0.25 * rgb[(y * w + l) * 3 + c]! + 0.5 * rgb[(y * w + x) * 3 + c]! + 0.25 * rgb[(y * w + r) * 3 + c]!;
    }
  }
  for (let y = 0; y < h; y++) {
    const u = Math.max(0, y - 1);
    const d = Math.min(h - 1, y + 1);
    for (let x = 0; x < w; x++) {
      for (let c = 0; c < 3; c++)
        rgb[(y * w + x) * 3 + c] = 0.25 * tmp[(u * w + x) * 3 + c]! + 0.5 * tmp[(y * w + x) * 3 + c]! + 0.25 * tmp[(d * w + x) * 3 + c]!;
    }
  }
  // Sensor: luminance noise plus weaker chroma noise (approximately Gaussian: sums of four bytes).
  const sigma = rng.uniform(2, 4.5);
  const unit = sigma / 147.8;
  for (let i = 0; i < n; i++) {
    const u = rng.nextU32();
    const lum = ((u & 255) + ((u >>> 8) & 255) + ((u >>> 16) & 255) + (u >>> 24) - 510) * unit;
    const v = rng.nextU32();
    const o = i * 3;
    rgb[o] = rgb[o]! + lum + ((v & 255) - 127.5) * unit * 0.35;
    rgb[o + 1] = rgb[o + 1]! + lum + (((v >>> 8) & 255) - 127.5) * unit * 0.35;
    rgb[o + 2] = rgb[o + 2]! + lum + (((v >>> 16) & 255) - 127.5) * unit * 0.35;
  }
  return toBytes(rgb);
}

/**
 * Night look (the second target domain): the target palette under a dark exposure, pools of orange
 * street-lamp light on the ground and facades, a near-black sky, lit windows, a strong sensor gain
 * (heavy noise) and a cool camera response. No haze: the shift is in brightness, colour and noise.
 */
function shadeNight(b: Built, rng: Rng): Uint8Array {
  const { canvas: cv, view } = b;
  const { width: w, height: h } = cv;
  const n = w * h;
  const rgb = baseColours(b, TARGET_STYLE, rng.next() < 0.5);
  const exposure = rng.uniform(0.22, 0.34);
  const lamps: number[] = [];
  const lampCount = 2 + Math.floor(rng.next() * 3);
  for (let i = 0; i < lampCount; i++) lamps.push(rng.uniform(0, w), rng.uniform(view.hy, h), rng.uniform(0.18, 0.35) * w);
  const lamp = [1.0, 0.62, 0.28];
  const fine = valueNoise(w, h, 2.5, rng);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      const o = i * 3;
      const cls = cv.label[i]!;
      if (cls === L.sky) {
        const t = Math.min(1, y / Math.max(1, view.hy));
        rgb[o] = 8 + 10 * t;
        rgb[o + 1] = 10 + 12 * t;
        rgb[o + 2] = 22 + 16 * t;
        continue;
      }
      let glow = 0;
      for (let l = 0; l < lamps.length; l += 3) {
        const dx = x + 0.5 - lamps[l]!;
        const dy = (y + 0.5 - lamps[l + 1]!) * 1.8;
        glow += Math.exp(-(dx * dx + dy * dy) / (2 * lamps[l + 2]! ** 2));
      }
      const k = exposure * (1 + 0.12 * fine[i]!);
      const window = cv.detail[i] === D_WINDOW && rng.next() < 0.5 ? 2.2 : 1;
      for (let c = 0; c < 3; c++) rgb[o + c] = rgb[o + c]! * (k * window + 1.6 * glow * lamp[c]! * exposure);
    }
  }
  // Camera: cool response, then a strong gain's noise (approximately Gaussian: sums of four bytes).
  const response = [rng.uniform(0.85, 0.95), rng.uniform(0.95, 1.05), rng.uniform(1.1, 1.25)];
  const sigma = rng.uniform(6, 9);
  const unit = sigma / 147.8;
  for (let i = 0; i < n; i++) {
    const u = rng.nextU32();
    const lum = ((u & 255) + ((u >>> 8) & 255) + ((u >>> 16) & 255) + (u >>> 24) - 510) * unit;
    const o = i * 3;
    for (let c = 0; c < 3; c++) rgb[o + c] = rgb[o + c]! * response[c]! * 1.15 + lum;
  }
  return toBytes(rgb);
}

// ---------------------------------------------------------------------------------------------------------
// Public API

function checkSize(size: readonly [number, number], what: string): void {
  const [h, w] = size;
  for (const v of [h, w]) {
    if (!Number.isInteger(v) || v < MIN_SIDE || v > MAX_SIDE) {
      throw new Error(`${what}: size must be [height, width] integers in ${MIN_SIDE}..${MAX_SIDE}, got [${h}, ${w}]`);
    }
  }
}

/**
 * Renders scene `index` of a domain: pure (no I/O), deterministic in (domain, index, seed, size). The label
 * map holds Cityscapes label IDs (`SYNTHETIC_LABEL_IDS`); the image is RGB HWC.
 */
export function renderScene(domain: SyntheticDomain, index: number, seed: number, size: readonly [number, number]): SyntheticScene {
  if (!SYNTHETIC_DOMAINS.includes(domain))
    throw new Error(`renderScene: domain must be one of ${SYNTHETIC_DOMAINS.join(', ')}, got '${String(domain)}'`);
  if (!Number.isInteger(index) || index < 0) throw new Error(`renderScene: index must be a non-negative integer, got ${index}`);
  if (!Number.isInteger(seed)) throw new Error(`renderScene: seed must be an integer, got ${seed}`);
  checkSize(size, 'renderScene');
  const [height, width] = size;
  const rng = Rng.derive(seed, domain === 'source' ? 0x5eed : domain === 'target' ? 0x7a76 : 0x4e17, index);
  const built = buildScene(domain, rng, height, width);
  const image = domain === 'source' ? shadeSource(built, rng) : domain === 'target' ? shadeTarget(built, rng) : shadeNight(built, rng);
  return { image, labelIds: built.canvas.label, width, height };
}

/** Fake city names (Cityscapes' train and val cities are disjoint). */
export const SYNTHETIC_TRAIN_CITIES: readonly string[] = ['aldermoor', 'brackenfeld', 'corvenhal', 'dunmarsch'];
export const SYNTHETIC_VAL_CITIES: readonly string[] = ['elbenau', 'fennwick'];

/**
 * The Cityscapes-style name `<city>/<city>_<seq:06>_<frame:06>` of target scene i of a split: scenes are
 * spread over the split's cities in contiguous blocks, numbered from 0 within a city; frame 19 as in
 * Cityscapes' annotated frames.
 */
export function syntheticCityscapesName(split: 'train' | 'val', i: number, total: number): string {
  const cities = split === 'train' ? SYNTHETIC_TRAIN_CITIES : SYNTHETIC_VAL_CITIES;
  const per = Math.ceil(total / cities.length);
  const city = cities[Math.floor(i / per)]!;
  const seq = String(i % per).padStart(6, '0');
  return `${city}/${city}_${seq}_000019`;
}

export interface SyntheticProgress {
  /** 'gta5', 'cityscapes/train' or 'cityscapes/val'. */
  part: string;
  done: number;
  total: number;
  written: number;
  skipped: number;
}

export interface SyntheticBenchmarkOptions {
  seed?: number;
  sourceCount?: number;
  targetTrainCount?: number;
  targetValCount?: number;
  /** [height, width]; default 144x256. */
  sourceSize?: readonly [number, number];
  /** [height, width]; default 128x256. */
  targetSize?: readonly [number, number];
  /** Look of the Cityscapes-layout scenes: 'target' (default, the benchmark) or 'night' (a second target domain). */
  targetDomain?: 'target' | 'night';
  onProgress?: (p: SyntheticProgress) => void;
}

export interface SyntheticBenchmark {
  /** The GTA5-layout root (`<out>/gta5`). */
  source: string;
  /** The Cityscapes-layout root (`<out>/cityscapes`). */
  target: string;
  counts: { source: number; targetTrain: number; targetVal: number };
  /** Scenes rendered and written by this call, and scenes whose files already existed. */
  written: number;
  skipped: number;
}

/** True when `path` is a PNG of the given size and colour type (2 RGB, 0 grey) — written atomically, so complete. */
async function pngMatches(path: string, width: number, height: number, colourType: number): Promise<boolean> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch {
    return false;
  }
  try {
    const head = Buffer.alloc(26);
    const { bytesRead } = await fh.read(head, 0, 26, 0);
    return (
      bytesRead === 26 &&
      head.readUInt32BE(0) === 0x89504e47 &&
      head.toString('latin1', 12, 16) === 'IHDR' &&
      head.readUInt32BE(16) === width &&
      head.readUInt32BE(20) === height &&
      head[24] === 8 &&
      head[25] === colourType
    );
  } finally {
    await fh.close();
  }
}

let tmpCounter = 0;

async function writeAtomic(path: string, bytes: Uint8Array): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${tmpCounter++}`;
  try {
    await writeFile(tmp, bytes);
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
}

function checkCount(v: number, what: string): number {
  if (!Number.isInteger(v) || v < 0) throw new Error(`writeSyntheticBenchmark: ${what} must be a non-negative integer, got ${v}`);
  return v;
}

/**
 * Writes the source tree (`<out>/gta5/{images,labels}/NNNNN.png`, from 00001) and the target tree
 * (`<out>/cityscapes/{leftImg8bit,gtFine}/{train,val}/<city>/...`), REFERENCE 6.1. Label maps are 8-bit
 * grey PNGs of Cityscapes label IDs (also for target train; the pipeline only uses those for oracle
 * evaluation). Resumable: a scene whose image and label already exist with the right size is skipped;
 * every file is written to a temporary name and renamed into place.
 */
export async function writeSyntheticBenchmark(outDir: string, opts: SyntheticBenchmarkOptions = {}): Promise<SyntheticBenchmark> {
  const seed = opts.seed ?? 0;
  if (!Number.isInteger(seed)) throw new Error(`writeSyntheticBenchmark: seed must be an integer, got ${seed}`);
  const counts = {
    source: checkCount(opts.sourceCount ?? 300, 'sourceCount'),
    targetTrain: checkCount(opts.targetTrainCount ?? 300, 'targetTrainCount'),
    targetVal: checkCount(opts.targetValCount ?? 100, 'targetValCount'),
  };
  if (counts.source > 99999)
    throw new Error(`writeSyntheticBenchmark: sourceCount must be at most 99999 (5-digit GTA5 names), got ${counts.source}`);
  const sourceSize = opts.sourceSize ?? DEFAULT_SOURCE_SIZE;
  const targetSize = opts.targetSize ?? DEFAULT_TARGET_SIZE;
  checkSize(sourceSize, 'writeSyntheticBenchmark: sourceSize');
  checkSize(targetSize, 'writeSyntheticBenchmark: targetSize');
  const source = join(outDir, 'gta5');
  const target = join(outDir, 'cityscapes');

  interface Job {
    domain: SyntheticDomain;
    index: number;
    image: string;
    label: string;
  }
  const parts: { part: string; size: readonly [number, number]; jobs: Job[] }[] = [];
  const gta: Job[] = [];
  for (let i = 0; i < counts.source; i++) {
    const name = `${String(i + 1).padStart(5, '0')}.png`;
    gta.push({ domain: 'source', index: i, image: join(source, 'images', name), label: join(source, 'labels', name) });
  }
  parts.push({ part: 'gta5', size: sourceSize, jobs: gta });
  for (const [split, total, offset] of [
    ['train', counts.targetTrain, 0],
    ['val', counts.targetVal, VAL_INDEX_OFFSET],
  ] as const) {
    const jobs: Job[] = [];
    for (let i = 0; i < total; i++) {
      const stem = syntheticCityscapesName(split, i, total);
      jobs.push({
        domain: opts.targetDomain ?? 'target',
        index: offset + i,
        image: join(target, 'leftImg8bit', split, `${stem}_leftImg8bit.png`),
        label: join(target, 'gtFine', split, `${stem}_gtFine_labelIds.png`),
      });
    }
    parts.push({ part: `cityscapes/${split}`, size: targetSize, jobs });
  }

  let written = 0;
  let skipped = 0;
  const made = new Set<string>();
  const ensureDir = async (path: string): Promise<void> => {
    const dir = path.slice(0, path.lastIndexOf('/'));
    if (made.has(dir)) return;
    await mkdir(dir, { recursive: true });
    made.add(dir);
  };
  for (const { part, size, jobs } of parts) {
    const [h, w] = size;
    let done = 0;
    let partWritten = 0;
    let partSkipped = 0;
    const report = (): void => opts.onProgress?.({ part, done, total: jobs.length, written: partWritten, skipped: partSkipped });
    const one = async (job: Job): Promise<void> => {
      if ((await pngMatches(job.image, w, h, 2)) && (await pngMatches(job.label, w, h, 0))) {
        partSkipped++;
      } else {
        const scene = renderScene(job.domain, job.index, seed, size);
        const labelPng = encodePng({ width: w, height: h, channels: 1, bitDepth: 8, data: scene.labelIds });
        const imagePng = await sharp(scene.image, { raw: { width: w, height: h, channels: 3 } })
          .png()
          .toBuffer();
        await ensureDir(job.image);
        await ensureDir(job.label);
        await writeAtomic(job.image, imagePng);
        await writeAtomic(job.label, labelPng);
        partWritten++;
      }
      done++;
      report();
    };
    // A few scenes in flight: rendering (this thread) overlaps PNG encoding and writes (the thread pool).
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < jobs.length) await one(jobs[next++]!);
    };
    await Promise.all(Array.from({ length: Math.min(4, jobs.length) }, worker));
    if (jobs.length === 0) report();
    written += partWritten;
    skipped += partSkipped;
  }
  return { source, target, counts, written, skipped };
}

/** Scene indices of arrivals start here, far from the train (0..) and val (VAL_INDEX_OFFSET..) scenes. */
export const ARRIVAL_INDEX_OFFSET = 2_000_000;

export interface SyntheticArrivalsOptions {
  /** First arrival number (0-based); scene index = ARRIVAL_INDEX_OFFSET + number. */
  from: number;
  count: number;
  seed?: number;
  /** [height, width]; default 128x256 (the target's). */
  size?: readonly [number, number];
  /** City folder name (default `arrivals`). */
  city?: string;
}

/**
 * New target-domain images, as a camera fleet would deliver them: PNGs in the Cityscapes layout
 * (`<root>/leftImg8bit/train/<city>/<city>_NNNNNN_000019_leftImg8bit.png`), each written to a temporary
 * name and renamed into place, without labels. Scenes are new (indices no train or val scene uses), and
 * deterministic for (number, seed). Returns the paths written. Used to feed a watched folder (soak test).
 */
export async function writeSyntheticArrivals(root: string, opts: SyntheticArrivalsOptions): Promise<string[]> {
  const size = opts.size ?? DEFAULT_TARGET_SIZE;
  checkSize(size, 'writeSyntheticArrivals: size');
  checkCount(opts.from, 'from');
  checkCount(opts.count, 'count');
  const city = opts.city ?? 'arrivals';
  const dir = join(root, 'leftImg8bit', 'train', city);
  await mkdir(dir, { recursive: true });
  const [h, w] = size;
  const paths: string[] = [];
  for (let i = opts.from; i < opts.from + opts.count; i++) {
    const scene = renderScene('target', ARRIVAL_INDEX_OFFSET + i, opts.seed ?? 0, size);
    const png = await sharp(scene.image, { raw: { width: w, height: h, channels: 3 } })
      .png()
      .toBuffer();
    const path = join(dir, `${city}_${String(i).padStart(6, '0')}_000019_leftImg8bit.png`);
    await writeAtomic(path, png);
    paths.push(path);
  }
  return paths;
}

/**
 * Label spaces (REFERENCE 6.2): dataset label IDs -> train IDs, as 65536-entry lookup tables (SYNTHIA's
 * labels are 16-bit), unknown IDs -> 255.
 */
import { CITYSCAPES_CLASSES, SYNTHIA_CLASSES } from '../ops/classes.ts';

export const IGNORE = 255;

/** Cityscapes / GTA5 / Synscapes label ID -> 19-class train ID. */
export const CITYSCAPES_TO_TRAIN19: Readonly<Record<number, number>> = {
  7: 0,
  8: 1,
  11: 2,
  12: 3,
  13: 4,
  17: 5,
  19: 6,
  20: 7,
  21: 8,
  22: 9,
  23: 10,
  24: 11,
  25: 12,
  26: 13,
  27: 14,
  28: 15,
  31: 16,
  32: 17,
  33: 18,
};

/** Cityscapes label ID -> 16-class (SYNTHIA protocol) train ID; terrain, truck, train -> 255. */
export const CITYSCAPES_TO_TRAIN16: Readonly<Record<number, number>> = {
  7: 0,
  8: 1,
  11: 2,
  12: 3,
  13: 4,
  17: 5,
  19: 6,
  20: 7,
  21: 8,
  23: 9,
  24: 10,
  25: 11,
  26: 12,
  28: 13,
  32: 14,
  33: 15,
};

/** SYNTHIA (RAND_CITYSCAPES, channel 0 of the 16-bit label PNG) ID -> 16-class train ID. */
export const SYNTHIA_TO_TRAIN16: Readonly<Record<number, number>> = {
  3: 0,
  4: 1,
  2: 2,
  21: 3,
  5: 4,
  7: 5,
  15: 6,
  9: 7,
  6: 8,
  1: 9,
  10: 10,
  17: 11,
  8: 12,
  19: 13,
  12: 14,
  11: 15,
};

export type NumClasses = 19 | 16;

export function classNames(numClasses: NumClasses): readonly string[] {
  return numClasses === 19 ? CITYSCAPES_CLASSES : SYNTHIA_CLASSES;
}

/** Cityscapes' labels.py defines IDs 0..33 (the licence plate, -1, is never drawn); GTA5 and Synscapes use them. */
export const CITYSCAPES_LABEL_IDS = 34;
/** SYNTHIA RAND_CITYSCAPES defines class IDs 0..22 (void, sky, building, ..., lanemarking). */
export const SYNTHIA_LABEL_IDS = 23;

/**
 * A 65536-entry table, 1 for the IDs a label space defines (mapped to a train ID or ignored on purpose,
 * like Cityscapes' void classes). A stored ID outside it means a wrong dataset or label map, or a
 * corrupt file: ingest counts and names those (they still become 255).
 */
export function knownIdTable(ids: Iterable<number>): Uint8Array {
  const known = new Uint8Array(65536);
  for (const id of ids) known[id] = 1;
  return known;
}

/** A 65536-entry table: lut[id] = train ID, 255 for IDs the map does not name. */
export function labelLut(map: Readonly<Record<number, number>>): Uint8Array {
  const lut = new Uint8Array(65536).fill(IGNORE);
  for (const [id, train] of Object.entries(map)) lut[Number(id)] = train;
  return lut;
}

/** Validates and converts a user's JSON label map ({"7": 0, ...}) for the `folder` adapter. */
export function parseLabelMap(json: unknown, source: string, numClasses: number): Record<number, number> {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new Error(`${source}: expected an object mapping label IDs to train IDs, e.g. {"7": 0, "8": 1}`);
  }
  const out: Record<number, number> = {};
  for (const [k, v] of Object.entries(json)) {
    const id = Number(k);
    if (!Number.isInteger(id) || id < 0 || id > 65535) throw new Error(`${source}: key '${k}' is not a label ID in 0..65535`);
    if (typeof v !== 'number' || !Number.isInteger(v) || !((v >= 0 && v < numClasses) || v === IGNORE)) {
      throw new Error(`${source}: label ID ${k} maps to ${JSON.stringify(v)}, expected a train ID in 0..${numClasses - 1} or 255`);
    }
    out[id] = v;
  }
  return out;
}

/**
 * A 256-entry table: train ID -> Cityscapes label ID (the inverse of CITYSCAPES_TO_TRAIN19/16), for
 * predictions written in the IDs Cityscapes' own tools read; 255 and unused entries -> 0 (unlabeled).
 */
export function trainToCityscapesIds(numClasses: NumClasses): Uint8Array {
  const lut = new Uint8Array(256);
  for (const [id, train] of Object.entries(numClasses === 19 ? CITYSCAPES_TO_TRAIN19 : CITYSCAPES_TO_TRAIN16)) lut[train] = Number(id);
  return lut;
}

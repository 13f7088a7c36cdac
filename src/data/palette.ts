import { CITYSCAPES_TO_TRAIN19, trainToCityscapesIds, type NumClasses } from './labels.ts';

/** Cityscapes colours of the 19 train IDs (REFERENCE 6.2 order), for prediction PNGs; 255 is black. */
export const CITYSCAPES_PALETTE: readonly (readonly [number, number, number])[] = [
  [128, 64, 128],
  [244, 35, 232],
  [70, 70, 70],
  [102, 102, 156],
  [190, 153, 153],
  [153, 153, 153],
  [250, 170, 30],
  [220, 220, 0],
  [107, 142, 35],
  [152, 251, 152],
  [70, 130, 180],
  [220, 20, 60],
  [255, 0, 0],
  [0, 0, 142],
  [0, 0, 70],
  [0, 60, 100],
  [0, 80, 100],
  [0, 0, 230],
  [119, 11, 32],
];

/** RGB bytes of a train-ID map (0..18 coloured, anything else black). */
export function colourise(ids: ArrayLike<number>): Uint8Array {
  const out = new Uint8Array(ids.length * 3);
  for (let i = 0; i < ids.length; i++) {
    const c = CITYSCAPES_PALETTE[ids[i]!];
    if (c) out.set(c, 3 * i);
  }
  return out;
}

/**
 * Colours of the train IDs of a label space, 256 x RGB: the 16-class (SYNTHIA) IDs get their Cityscapes
 * class's colour (16-class ID 9 is sky, not terrain), IDs without a class (255) black.
 */
export function paletteOf(numClasses: NumClasses): Uint8Array {
  const out = new Uint8Array(256 * 3);
  const toLabelId = trainToCityscapesIds(numClasses);
  for (let k = 0; k < numClasses; k++) out.set(CITYSCAPES_PALETTE[CITYSCAPES_TO_TRAIN19[toLabelId[k]!]!]!, 3 * k);
  return out;
}

/**
 * The colour of each pixel's train ID blended over an RGB image: round((1 - alpha) x image + alpha x
 * colour); pixels whose ID has no class (255) keep the image. `palette` as `paletteOf` makes it.
 */
export function overlayColours(
  rgb: Uint8Array,
  ids: ArrayLike<number>,
  palette: Uint8Array,
  numClasses: number,
  alpha: number,
): Uint8Array {
  const out = new Uint8Array(rgb.length);
  for (let i = 0, p = 0; i < ids.length; i++, p += 3) {
    const k = ids[i]!;
    for (let c = 0; c < 3; c++)
      out[p + c] = k < numClasses ? Math.round((1 - alpha) * rgb[p + c]! + alpha * palette[3 * k + c]!) : rgb[p + c]!;
  }
  return out;
}

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

/**
 * Class names and class subsets of the label spaces (REFERENCE 6.2, 7). Plain constants with no imports:
 * the decode workers need the names too, and must not load tfjs for them (it would double each worker's
 * heap, and every major GC marks the whole heap).
 */

/** Cityscapes 19 train-ID class names, in order (REFERENCE 6.2). */
export const CITYSCAPES_CLASSES: readonly string[] = [
  'road',
  'sidewalk',
  'building',
  'wall',
  'fence',
  'pole',
  'traffic light',
  'traffic sign',
  'vegetation',
  'terrain',
  'sky',
  'person',
  'rider',
  'car',
  'truck',
  'bus',
  'train',
  'motorcycle',
  'bicycle',
];

/** SYNTHIA 16-class protocol names, in order (REFERENCE 6.2). */
export const SYNTHIA_CLASSES: readonly string[] = [
  'road',
  'sidewalk',
  'building',
  'wall',
  'fence',
  'pole',
  'light',
  'sign',
  'vegetation',
  'sky',
  'person',
  'rider',
  'car',
  'bus',
  'motorcycle',
  'bicycle',
];

/**
 * The 11 tail classes of paper App. B (REFERENCE 7) as 19-class train IDs: wall, fence, traffic light,
 * traffic sign, terrain, rider, truck, bus, train, motorcycle, bicycle.
 */
export const TAIL_CLASSES_19: readonly number[] = [3, 4, 6, 7, 9, 12, 14, 15, 16, 17, 18];

/** The 13-class SYNTHIA subset (REFERENCE 7): the 16 classes minus wall (3), fence (4), pole (5). */
export const SYNTHIA_13_OF_16: readonly number[] = [0, 1, 2, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

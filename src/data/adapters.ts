/**
 * Dataset adapters: find image/label pairs of each dataset layout on disk (REFERENCE 6.1) with
 * fast-glob, and say how labels map to train IDs (REFERENCE 6.2). Listing never throws on a bad
 * sample: a missing label is a `problem`, counted and named, and the good samples go on.
 */
import { readFile, stat } from 'node:fs/promises';
import { exists } from '../io/exists.ts';
import { basename, join, relative } from 'node:path';
import fg from 'fast-glob';
import {
  CITYSCAPES_LABEL_IDS,
  CITYSCAPES_TO_TRAIN16,
  CITYSCAPES_TO_TRAIN19,
  SYNTHIA_LABEL_IDS,
  SYNTHIA_TO_TRAIN16,
  knownIdTable,
  labelLut,
  parseLabelMap,
  type NumClasses,
} from './labels.ts';

export type DatasetName = 'gta5' | 'cityscapes' | 'synthia' | 'synscapes' | 'folder';
export const DATASETS: readonly DatasetName[] = ['gta5', 'cityscapes', 'synthia', 'synscapes', 'folder'];

export type LabelPolicy = 'required' | 'optional' | 'none';

export interface SampleFiles {
  /** Record key: the sample's path relative to the image folder, without extension. */
  key: string;
  image: string;
  label: string | null;
}

export interface ListProblem {
  kind: 'label-missing';
  key: string;
  path: string;
  message: string;
}

export interface DatasetListing {
  dataset: DatasetName;
  split: string;
  numClasses: NumClasses;
  samples: SampleFiles[];
  problems: ListProblem[];
  /** 65536-entry label ID -> train ID table. */
  lut: Uint8Array;
  /** 65536-entry table, 1 for the label IDs the dataset defines (others are counted and named at ingest). */
  known: Uint8Array;
  /** What `known` is, for messages ("Cityscapes label IDs 0..33"). */
  labelSpace: string;
  /** Label maps may be at another resolution than the images (Synscapes), same aspect ratio. */
  labelMayBeScaled: boolean;
}

export interface ListOptions {
  split?: string;
  numClasses?: NumClasses;
  labels?: LabelPolicy;
}

interface Layout {
  /** Glob of images, relative to the root (may use {split}). */
  images: string;
  /** Folder that keys are relative to. */
  imageBase: string;
  /** Removed from the end of keys (Cityscapes' `_leftImg8bit`). */
  keySuffix?: string;
  /** Label path of an image, or null if this layout has none. */
  label: (root: string, split: string, key: string, image: string) => string;
  lut: (numClasses: NumClasses) => Readonly<Record<number, number>>;
  /** The label IDs the dataset defines: 0..labelIds-1, or the map's own keys when absent (folder). */
  labelIds?: number;
  labelSpace: string;
  defaultClasses: NumClasses;
  labelMayBeScaled?: boolean;
}

const cityscapesLike = (k: NumClasses) => (k === 19 ? CITYSCAPES_TO_TRAIN19 : CITYSCAPES_TO_TRAIN16);
const CITYSCAPES_SPACE = `Cityscapes label IDs 0..${CITYSCAPES_LABEL_IDS - 1}`;

const LAYOUTS: Record<Exclude<DatasetName, 'folder'>, Layout> = {
  gta5: {
    images: 'images/*.png',
    imageBase: 'images',
    label: (root, _s, key) => join(root, 'labels', `${key}.png`),
    lut: cityscapesLike,
    labelIds: CITYSCAPES_LABEL_IDS,
    labelSpace: CITYSCAPES_SPACE,
    defaultClasses: 19,
  },
  cityscapes: {
    images: 'leftImg8bit/{split}/*/*_leftImg8bit.png',
    imageBase: 'leftImg8bit/{split}',
    keySuffix: '_leftImg8bit',
    label: (root, split, key) => join(root, 'gtFine', split, `${key}_gtFine_labelIds.png`),
    lut: cityscapesLike,
    labelIds: CITYSCAPES_LABEL_IDS,
    labelSpace: CITYSCAPES_SPACE,
    defaultClasses: 19,
  },
  synthia: {
    images: 'RGB/*.png',
    imageBase: 'RGB',
    label: (root, _s, key) => join(root, 'GT', 'LABELS', `${key}.png`),
    lut: (k) => {
      if (k !== 16) throw new Error('synthia: the SYNTHIA protocol has 16 classes (--classes 16)');
      return SYNTHIA_TO_TRAIN16;
    },
    labelIds: SYNTHIA_LABEL_IDS,
    labelSpace: `SYNTHIA class IDs 0..${SYNTHIA_LABEL_IDS - 1}`,
    defaultClasses: 16,
  },
  synscapes: {
    images: 'img/rgb-2k/*.png',
    imageBase: 'img/rgb-2k',
    label: (root, _s, key) => join(root, 'img', 'class', `${key}.png`),
    lut: cityscapesLike,
    labelIds: CITYSCAPES_LABEL_IDS,
    labelSpace: CITYSCAPES_SPACE,
    defaultClasses: 19,
    labelMayBeScaled: true,
  },
};

const byKey = (a: SampleFiles, b: SampleFiles) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);

/**
 * Lists a dataset's samples, sorted by key (so shard assignment is stable). For `folder`, the root holds
 * `images/` (png/jpg), `labels/` (png, same relative name) and `labelmap.json` ({"<id>": trainId}).
 */
export async function listDataset(dataset: DatasetName, root: string, opts: ListOptions = {}): Promise<DatasetListing> {
  if (!DATASETS.includes(dataset)) throw new Error(`unknown dataset '${dataset}', expected one of ${DATASETS.join(', ')}`);
  const split = opts.split ?? 'train';
  const policy = opts.labels ?? 'required';
  const root$ = await stat(root).catch(() => null);
  if (!root$) throw new Error(`${root}: the dataset root does not exist`);
  if (!root$.isDirectory()) throw new Error(`${root}: the dataset root is not a folder`);
  let layout: Layout;
  if (dataset === 'folder') {
    const mapPath = join(root, 'labelmap.json');
    const numClasses = opts.numClasses ?? 19;
    let map: Record<number, number> = {};
    if (policy !== 'none') {
      let text: string;
      try {
        text = await readFile(mapPath, 'utf8');
      } catch {
        throw new Error(`${mapPath}: missing; the folder dataset needs a JSON label map {"<label id>": <train id>, ...}`);
      }
      let json: unknown;
      try {
        json = JSON.parse(text);
      } catch (err) {
        throw new Error(`${mapPath}: invalid JSON (${(err as Error).message})`);
      }
      map = parseLabelMap(json, mapPath, numClasses);
    }
    layout = {
      images: 'images/**/*.{png,jpg,jpeg}',
      imageBase: 'images',
      label: (r, _s, key) => join(r, 'labels', `${key}.png`),
      lut: () => map,
      labelSpace: `label IDs of ${mapPath}`,
      defaultClasses: numClasses === 16 ? 16 : 19,
    };
  } else {
    layout = LAYOUTS[dataset];
  }
  const numClasses = opts.numClasses ?? layout.defaultClasses;
  const idMap = layout.lut(numClasses);
  const lut = labelLut(idMap);
  const known = knownIdTable(
    layout.labelIds === undefined ? Object.keys(idMap).map(Number) : Array.from({ length: layout.labelIds }, (_, i) => i),
  );
  const pattern = layout.images.replace('{split}', split);
  const base = join(root, layout.imageBase.replace('{split}', split));
  const files = await fg(pattern, { cwd: root, absolute: true, onlyFiles: true, caseSensitiveMatch: false });
  const samples: SampleFiles[] = [];
  const problems: ListProblem[] = [];
  for (const image of files) {
    const rel = relative(base, image);
    let key = rel.slice(0, rel.length - basename(rel).length) + basename(rel).replace(/\.(png|jpe?g)$/i, '');
    if (layout.keySuffix && key.endsWith(layout.keySuffix)) key = key.slice(0, -layout.keySuffix.length);
    if (policy === 'none') {
      samples.push({ key, image, label: null });
      continue;
    }
    const label = layout.label(root, split, key, image);
    if (await exists(label)) {
      samples.push({ key, image, label });
    } else if (policy === 'optional') {
      samples.push({ key, image, label: null });
    } else {
      problems.push({ kind: 'label-missing', key, path: label, message: `${image}: label missing (expected ${label})` });
    }
  }
  samples.sort(byKey);
  return {
    dataset,
    split,
    numClasses,
    samples,
    problems,
    lut,
    known,
    labelSpace: layout.labelSpace,
    labelMayBeScaled: layout.labelMayBeScaled ?? false,
  };
}

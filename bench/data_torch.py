"""PyTorch peer of bench/data.ts: the SSL-target train transform of REFERENCE 6.3 (ColorJitter 0.5/0.5/0.5/0.2
in random order -> RandomScale 0.5-1.5 -> RandomCrop 512x1024 with padding -> HorizontalFlip 0.5 -> ToTensor
+ Normalize) as a torch.utils.data.Dataset in plain PIL + numpy (Debian has no python3-torchvision; the ops
are the ones torchvision calls on a PIL image), read through a DataLoader with persistent workers.

Input: a folder of `<key>.image` (the PNG/JPEG bytes) and `<key>.label.png` (8-bit train-ID PNG), exported
by bench/data.ts from our LMDB shards, so both sides decode exactly the same bytes. Files are read per
sample (from the page cache after the first pass). The label is kept as an 8-bit "L" image: PIL NEAREST
gives the same pixels as on the reference's float "F" image, only faster.

Prints one JSON line: images/s after warm-up, CPU seconds of the whole process tree (main + workers) in
the timed window, and mean per-stage times measured inside the workers. Used only as a benchmark peer.
"""
import argparse
import io
import json
import os
import random
import sys
import time

import numpy as np
import PIL
import torch
from PIL import Image, ImageEnhance, ImageOps
from torch.utils.data import DataLoader, Dataset

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
STAGES = ["read", "decode_image", "decode_label", "jitter", "scale_crop", "flip", "normalize"]


def adjust_hue(img, hue):
    """torchvision.transforms.functional_pil.adjust_hue: PIL 8-bit HSV, H += int8(hue * 255) wrapping."""
    h, s, v = img.convert("HSV").split()
    np_h = np.array(h, dtype=np.uint8)
    with np.errstate(over="ignore"):
        np_h += np.int8(hue * 255).astype(np.uint8)
    return Image.merge("HSV", (Image.fromarray(np_h, "L"), s, v)).convert("RGB")


def color_jitter(img, rng):
    """torchvision ColorJitter(0.5, 0.5, 0.5, 0.2) on a PIL image: order = randperm(4), then the factors."""
    order = [0, 1, 2, 3]
    rng.shuffle(order)
    b, c, s = rng.uniform(0.5, 1.5), rng.uniform(0.5, 1.5), rng.uniform(0.5, 1.5)
    hue = rng.uniform(-0.2, 0.2)
    for op in order:
        if op == 0:
            img = ImageEnhance.Brightness(img).enhance(b)
        elif op == 1:
            img = ImageEnhance.Contrast(img).enhance(c)
        elif op == 2:
            img = ImageEnhance.Color(img).enhance(s)
        else:
            img = adjust_hue(img, hue)
    return img


def scale_crop(img, label, rng, crop_h=512, crop_w=1024, lo=0.5, hi=1.5):
    """SPCL transform.py RandomScale (floor(h*s) x floor(w*s), bicubic / nearest) + torchvision RandomCrop
    (pad_if_needed: pad (crop - side) on both sides, image 0 / label 255; offsets i then j)."""
    w, h = img.size
    s = rng.uniform(lo, hi)
    sw, sh = int(w * s), int(h * s)
    img = img.resize((sw, sh), Image.BICUBIC)
    label = label.resize((sw, sh), Image.NEAREST)
    if sw < crop_w:
        d = crop_w - sw
        img, label = ImageOps.expand(img, (d, 0, d, 0), 0), ImageOps.expand(label, (d, 0, d, 0), 255)
    if sh < crop_h:
        d = crop_h - sh
        img, label = ImageOps.expand(img, (0, d, 0, d), 0), ImageOps.expand(label, (0, d, 0, d), 255)
    w, h = img.size
    i = j = 0
    if (w, h) != (crop_w, crop_h):
        i, j = rng.randint(0, h - crop_h), rng.randint(0, w - crop_w)
    box = (j, i, j + crop_w, i + crop_h)
    return img.crop(box), label.crop(box)


class PeerDataset(Dataset):
    """Sample i = file keys[i % len(keys)] with augmentation seed i."""

    def __init__(self, root, keys, length):
        self.root, self.keys, self.length = root, keys, length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        key = self.keys[i % len(self.keys)]
        rng = random.Random(i)
        t = [time.perf_counter()]
        with open(os.path.join(self.root, key + ".image"), "rb") as f:
            image_bytes = f.read()
        with open(os.path.join(self.root, key + ".label.png"), "rb") as f:
            label_bytes = f.read()
        t.append(time.perf_counter())
        img = Image.open(io.BytesIO(image_bytes))
        img.load()
        if img.mode != "RGB":
            img = img.convert("RGB")
        t.append(time.perf_counter())
        label = Image.open(io.BytesIO(label_bytes))
        label.load()
        t.append(time.perf_counter())
        img = color_jitter(img, rng)
        t.append(time.perf_counter())
        img, label = scale_crop(img, label, rng)
        t.append(time.perf_counter())
        if rng.random() < 0.5:
            img, label = img.transpose(Image.FLIP_LEFT_RIGHT), label.transpose(Image.FLIP_LEFT_RIGHT)
        t.append(time.perf_counter())
        # ToTensor (HWC uint8 -> contiguous CHW float / 255) + Normalize
        x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous().float().div_(255)
        x.sub_(MEAN).div_(STD)
        y = torch.from_numpy(np.array(label, dtype=np.uint8))
        t.append(time.perf_counter())
        return x, y, torch.tensor([b - a for a, b in zip(t, t[1:])], dtype=torch.float64)


def tree_cpu_seconds():
    """user + system CPU seconds of this process and its live children (the DataLoader workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    me = os.getpid()

    def stat(pid):
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[1]), (int(rest[11]) + int(rest[12])) / tick  # ppid, utime + stime

    total = stat(me)[1]
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me:
            try:
                ppid, cpu = stat(name)
            except (OSError, IndexError, ValueError):
                continue
            if ppid == me:
                total += cpu
    return total


def run(root, keys, workers, samples, warmup, batch):
    ds = PeerDataset(root, keys, warmup + samples)
    loader = DataLoader(ds, batch_size=batch, shuffle=False, num_workers=workers, persistent_workers=True,
                        prefetch_factor=2, pin_memory=False)
    received, n0, t0, cpu0 = 0, 0, None, 0.0
    stage = torch.zeros(len(STAGES), dtype=torch.float64)
    for x, _y, st in loader:
        received += x.shape[0]
        if t0 is None:
            if received >= warmup:
                t0, cpu0, n0 = time.perf_counter(), tree_cpu_seconds(), received
        else:
            stage += st.sum(0)
    wall = time.perf_counter() - t0
    cpu = tree_cpu_seconds() - cpu0
    del loader
    n = received - n0
    return {"workers": workers, "images": n, "wall_s": wall, "cpu_s": cpu, "images_per_s": n / wall,
            "stage_ms": {k: 1000 * v / n for k, v in zip(STAGES, stage.tolist())}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True, help="folder of <key>.image + <key>.label.png")
    ap.add_argument("--images", type=int, required=True, help="use the first N keys (sorted)")
    ap.add_argument("--samples", type=int, default=64, help="timed samples per worker count")
    ap.add_argument("--workers", default="1,2", help="comma-separated DataLoader num_workers values")
    ap.add_argument("--warmup", type=int, default=0, help="samples before timing starts (default 2 x workers x batch)")
    ap.add_argument("--batch", type=int, default=1)
    a = ap.parse_args()
    keys = sorted(f[: -len(".image")] for f in os.listdir(a.root) if f.endswith(".image"))[: a.images]
    if len(keys) < a.images:
        sys.exit(f"{a.root}: {len(keys)} samples, --images asks for {a.images}")
    results = []
    for w in (int(v) for v in a.workers.split(",")):
        warmup = a.warmup or 2 * w * a.batch
        results.append(run(a.root, keys, w, a.samples, warmup, a.batch))
    print(json.dumps({"peer": f"pytorch {torch.__version__} DataLoader, Pillow {PIL.__version__}, batch {a.batch}",
                      "results": results}))


if __name__ == "__main__":
    main()

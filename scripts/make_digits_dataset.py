#!/usr/bin/env python3
"""Writes scikit-learn's bundled `digits` data set as an image folder.

    python3 scripts/make_digits_dataset.py OUTDIR [--per-class N] [--size 32] [--force]

Result: OUTDIR/train/<digit>/<index>.png and OUTDIR/val/<digit>/<index>.png, 8-bit
grayscale PNGs upscaled bilinearly from 8x8, where <index> is the image's index in
`sklearn.datasets.load_digits()`. Each class is shuffled with a fixed seed and split
80/20; `--per-class N` keeps only the first N images of each class (before the split), for
a copy small enough to commit. The output is byte-identical from run to run: the shuffle
is our own SplitMix64 (the same generator as src/rng.rs) and the PNG writer is ours, so
neither a NumPy nor a Pillow version can change it.

The data ships inside the scikit-learn package (no network): `pip install scikit-learn`.
It is the UCI "Optical Recognition of Handwritten Digits" test set (1797 images, 10
classes), licensed CC BY 4.0.
"""

import argparse
import os
import shutil
import struct
import sys
import zlib

SEED = 20240607
VAL_FRACTION = 0.2
MASK = (1 << 64) - 1


class SplitMix64:
    """The generator of src/rng.rs, so the split is stable and documented."""

    def __init__(self, seed):
        self.state = (seed ^ 0x9E3779B97F4A7C15) & MASK

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, n):
        # Same as Rng::below: a 53-bit uniform scaled to [0, n).
        u = (self.next_u64() >> 11) / float(1 << 53)
        return int(u * n) % max(n, 1)

    def shuffle(self, items):
        for i in range(len(items) - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]


def upscale(pixels, size):
    """Bilinear resize of a square grid of floats (0..16) to size x size bytes.

    Pixel centres are aligned the usual way (half-pixel offsets, edges clamped), and the
    arithmetic is plain Python floats so the result does not depend on a library."""
    n = len(pixels)
    out = bytearray()
    scale = n / size

    def taps(i):
        src = (i + 0.5) * scale - 0.5
        src = min(max(src, 0.0), n - 1.0)
        lo = int(src)
        hi = min(lo + 1, n - 1)
        return lo, hi, src - lo

    cols = [taps(x) for x in range(size)]
    for y in range(size):
        y0, y1, fy = taps(y)
        for x0, x1, fx in cols:
            top = pixels[y0][x0] * (1 - fx) + pixels[y0][x1] * fx
            bottom = pixels[y1][x0] * (1 - fx) + pixels[y1][x1] * fx
            v = top * (1 - fy) + bottom * fy
            out.append(min(255, max(0, int(v * 255.0 / 16.0 + 0.5))))
    return bytes(out)


def png_gray(width, height, data):
    """An 8-bit grayscale PNG: signature, IHDR, one IDAT, IEND."""

    def chunk(kind, body):
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    rows = b"".join(
        b"\x00" + data[y * width : (y + 1) * width] for y in range(height)
    )
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


README = """\
scikit-learn `digits` (UCI Optical Recognition of Handwritten Digits, CC BY 4.0),
written by scripts/make_digits_dataset.py: {size}x{size} grayscale PNGs upscaled
bilinearly from 8x8, split 80/20 per class with seed {seed}{limit}.
train: {train} images, val: {val} images, 10 classes.
File names are indices into sklearn.datasets.load_digits().
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--per-class", type=int, default=None, metavar="N",
                    help="keep only N images of each class (before the 80/20 split)")
    ap.add_argument("--size", type=int, default=32, help="output side in pixels")
    ap.add_argument("--force", action="store_true",
                    help="replace OUTDIR/train and OUTDIR/val if they exist")
    args = ap.parse_args()
    if args.per_class is not None and args.per_class < 2:
        ap.error("--per-class must be at least 2 (one train and one val image)")
    if args.size < 1:
        ap.error("--size must be positive")

    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("scikit-learn is needed: pip install scikit-learn")

    for split in ("train", "val"):
        path = os.path.join(args.outdir, split)
        if os.path.exists(path):
            if not args.force:
                sys.exit(f"{path} exists; pass --force to replace it")
            shutil.rmtree(path)

    digits = load_digits()
    by_class = {}
    for index, label in enumerate(digits.target.tolist()):
        by_class.setdefault(int(label), []).append(index)

    rng = SplitMix64(SEED)
    counts = {"train": 0, "val": 0}
    for label in sorted(by_class):
        indices = by_class[label]
        rng.shuffle(indices)
        if args.per_class is not None:
            indices = indices[: args.per_class]
        n_val = max(1, round(len(indices) * VAL_FRACTION))
        for split, chosen in (("val", indices[:n_val]), ("train", indices[n_val:])):
            folder = os.path.join(args.outdir, split, str(label))
            os.makedirs(folder, exist_ok=True)
            for index in sorted(chosen):
                grid = digits.images[index].tolist()
                data = upscale(grid, args.size)
                with open(os.path.join(folder, f"{index:04d}.png"), "wb") as f:
                    f.write(png_gray(args.size, args.size, data))
                counts[split] += 1

    limit = f", {args.per_class} per class" if args.per_class is not None else ""
    with open(os.path.join(args.outdir, "README.txt"), "w") as f:
        f.write(README.format(size=args.size, seed=SEED, limit=limit, **counts))
    print(f"{args.outdir}: {counts['train']} train, {counts['val']} val images")


if __name__ == "__main__":
    main()

"""Generated image folders for the tests (and scripts/folder_walkthrough.sh): each class a
coloured shape at a random place and size on a noisy background, so a small network learns
them in an epoch or two.

    python3 tests/imagefolders.py DIR --classes 10 --per-class 200 --size 32
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SHAPES = ("disc", "square", "bar", "cross", "ring")


def image(cls: int, size: int, rng: np.random.Generator, gray: bool = False) -> np.ndarray:
    """uint8 [size, size, 3] (or [size, size] when gray) of class `cls`."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    cy, cx = rng.uniform(0.3, 0.7, 2)
    r = rng.uniform(0.15, 0.3)
    shape = SHAPES[cls % len(SHAPES)]
    d = np.maximum(abs(yy - cy), abs(xx - cx)) if shape == "square" else np.hypot(yy - cy, xx - cx)
    mask = {"disc": d < r, "square": d < r, "bar": abs(xx - cx) < r / 3,
            "cross": (abs(xx - cx) < r / 4) | (abs(yy - cy) < r / 4),
            "ring": (d < r) & (d > r / 2)}[shape]
    hue = (cls // len(SHAPES)) / max(1, 2)  # classes 5-9 repeat the shapes in another colour
    colour = np.array([1.0 - hue, 0.3 + 0.4 * hue, hue]) * 255
    img = rng.normal(90, 25, (size, size, 3))
    img[mask] = colour + rng.normal(0, 15, 3)
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img.mean(2).astype(np.uint8) if gray else img


def make_folder(root, classes: int = 3, per_class=6, size=32, fmt: str = "png", gray: bool = False,
                seed: int = 0, layout: str = "flat", test_per_class: int = 0) -> Path:
    """Write a folder of class sub-folders; `per_class` may be a list (uneven classes) and
    `size` a list of sizes to cycle through (mixed sizes). Returns `root`."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    counts = per_class if isinstance(per_class, (list, tuple)) else [per_class] * classes
    sizes = size if isinstance(size, (list, tuple)) else [size]
    parts = [("", counts)] if layout == "flat" else [("train", counts)]
    if test_per_class:
        parts.append(("test", [test_per_class] * classes))
    for part, ns in parts:
        for c, n in enumerate(ns):
            folder = root / part / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                s = sizes[i % len(sizes)]
                Image.fromarray(image(c, s, rng, gray)).save(folder / f"{i:04d}.{fmt}")
    return root


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--format", default="png")
    a = ap.parse_args()
    make_folder(a.root, a.classes, a.per_class, a.size, a.format)
    print(f"{a.classes * a.per_class} images in {a.root}")

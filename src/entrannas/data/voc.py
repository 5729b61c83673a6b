"""Pascal VOC 2012 segmentation: ``JPEGImages/``, ``SegmentationClass/`` palette PNGs and the
lists in ``ImageSets/Segmentation/{train,val}.txt``. Label 255 marks the object boundaries
and is ignored, as is everything the augmentation pads.

Too big for memory as one tensor (images differ in size), so like ImageNet it is a
``torch.utils.data.Dataset`` decoded with Pillow in DataLoader workers; items are uint8 image
``[3, h, w]`` and uint8 label ``[h, w]`` tensors, padded to one batch by :func:`pad_collate`
and augmented on the device (segloader.py).

The SBD augmented training set (10,582 images) goes through the same reader: put its
labels in ``SegmentationClassAug/`` (grey-level PNGs, as commonly distributed) and its list
in ``ImageSets/Segmentation/train_aug.txt``, then set ``data.train_split: train_aug``. An id
takes its label from ``SegmentationClass/`` if that holds it, else ``SegmentationClassAug/``.
A list line may also be DeepLab's ``/JPEGImages/x.jpg /SegmentationClassAug/x.png`` pair.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import DataError, DatasetInfo
from .imagenet import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["VOC_CLASSES", "IGNORE", "voc_colormap", "decode_label", "VOCSegmentation", "find_voc_root",
           "pad_collate"]

IGNORE = 255
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
LABEL_DIRS = ("SegmentationClass", "SegmentationClassAug")


def voc_colormap() -> np.ndarray:
    """The VOC palette: [256, 3] uint8; the bits of index i spread over r, g, b from the top
    bit down (class 1 is (128, 0, 0), 255 is (224, 224, 192))."""
    cmap = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, rgb = i, [0, 0, 0]
        for j in range(8):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << (7 - j)
            c >>= 3
        cmap[i] = rgb
    return cmap


def decode_label(img, path, num_classes: int = len(VOC_CLASSES)) -> np.ndarray:
    """Class indices [h, w] uint8 of a label image: a palette PNG's indices as they are (VOC),
    a grey-level PNG's values (SBD), or RGB colours mapped back through the VOC palette."""
    if img.mode in ("P", "L"):
        y = np.array(img, dtype=np.uint8)
    elif img.mode in ("RGB", "RGBA"):
        rgb = np.array(img.convert("RGB"), dtype=np.uint32)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        cmap = voc_colormap().astype(np.uint32)
        keys = (cmap[:, 0] << 16) | (cmap[:, 1] << 8) | cmap[:, 2]
        wanted = np.r_[np.arange(num_classes), IGNORE]
        lut_keys, lut_vals = keys[wanted], wanted.astype(np.uint8)
        order = np.argsort(lut_keys)
        pos = np.searchsorted(lut_keys[order], code).clip(0, len(wanted) - 1)
        hit = lut_keys[order][pos] == code
        if not hit.all():
            r, g, b = rgb[~hit][0]
            raise DataError(f"label {path}: colour ({r}, {g}, {b}) is not a VOC class colour")
        y = lut_vals[order][pos].astype(np.uint8)
    else:
        raise DataError(f"label {path}: mode {img.mode} is neither a palette, grey-level nor RGB PNG")
    bad = (y >= num_classes) & (y != IGNORE)
    if bad.any():
        raise DataError(f"label {path}: value {int(y[bad][0])} is no class (0..{num_classes - 1}) "
                        f"and not {IGNORE} (ignore)")
    return y


def find_voc_root(data_dir) -> Path:
    """The folder holding JPEGImages/ and ImageSets/Segmentation/: data_dir itself, or its
    VOC2012/ or VOCdevkit/VOC2012/."""
    hint = ("pass --set data.data_dir=DIR holding JPEGImages/, SegmentationClass/ and "
            "ImageSets/Segmentation/{train,val}.txt (VOCdevkit/VOC2012 of the VOC 2012 archive)")
    if data_dir is None:
        raise DataError(f"Pascal VOC 2012 needs a folder: {hint}")
    base = Path(data_dir).expanduser()
    for c in (base, base / "VOC2012", base / "VOCdevkit" / "VOC2012"):
        if (c / "JPEGImages").is_dir() and (c / "ImageSets" / "Segmentation").is_dir():
            return c
    raise DataError(f"Pascal VOC 2012 not found in {base}: {hint}")


class VOCSegmentation(torch.utils.data.Dataset):
    """One list of a VOC-format tree; every listed image and label is checked to exist when it
    is built (a stat per file), so missing data stops a run before it starts."""

    def __init__(self, root, split: str = "train", num_classes: int = len(VOC_CLASSES),
                 classes=VOC_CLASSES):
        self.root = find_voc_root(root)
        self.split, self.num_classes = split, int(num_classes)
        lst = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not lst.is_file():
            raise DataError(f"{lst} not found: the VOC list of split {split!r} (data.train_split / "
                            f"data.val_split name a file in {lst.parent})")
        self.samples: list[tuple[Path, Path]] = []
        for n, line in enumerate(lst.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) == 2:  # DeepLab's "image label" pairs, relative to the root
                img, lab = (self.root / p.lstrip("/") for p in parts)
            elif len(parts) == 1:
                img = self.root / "JPEGImages" / f"{parts[0]}.jpg"
                lab = next((self.root / d / f"{parts[0]}.png" for d in LABEL_DIRS
                            if (self.root / d / f"{parts[0]}.png").is_file()), None)
                if lab is None:
                    raise DataError(f"{lst} line {n}: no label {parts[0]}.png in "
                                    f"{' or '.join(str(self.root / d) for d in LABEL_DIRS)}")
            else:
                raise DataError(f"{lst} line {n}: expected an image id or an 'image label' pair, got {line!r}")
            for p in (img, lab):
                if not p.is_file():
                    raise DataError(f"{lst} line {n}: {p} does not exist")
            self.samples.append((img, lab))
        if not self.samples:
            raise DataError(f"{lst} lists no images")
        self.info = DatasetInfo("voc", self.num_classes, 3, (0, 0), IMAGENET_MEAN, IMAGENET_STD,
                                tuple(classes))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from PIL import Image
        img_path, lab_path = self.samples[index]
        try:
            with Image.open(img_path) as im:
                x = np.array(im.convert("RGB"), dtype=np.uint8)
            with Image.open(lab_path) as lab:
                y = decode_label(lab, lab_path, self.num_classes)
        except OSError as e:
            raise DataError(f"cannot decode {img_path} or {lab_path}: {e}") from None
        if x.shape[:2] != y.shape:
            raise DataError(f"{lab_path} is {y.shape[1]}x{y.shape[0]} but its image {x.shape[1]}x{x.shape[0]}")
        return torch.from_numpy(x).permute(2, 0, 1).contiguous(), torch.from_numpy(y)


def pad_collate(items, size: tuple[int, int] | None = None):
    """Stack (image, label) pairs of different sizes: images padded with 0, labels with 255
    (ignored) at the bottom and right, to ``size`` or the largest in the batch. Returns
    uint8 images [n, 3, H, W], uint8 labels [n, H, W] and the true sizes [n, 2]."""
    sizes = torch.tensor([tuple(y.shape) for _, y in items], dtype=torch.long)
    H, W = (int(sizes[:, 0].max()), int(sizes[:, 1].max())) if size is None else size
    if int(sizes[:, 0].max()) > H or int(sizes[:, 1].max()) > W:
        raise DataError(f"an image of {int(sizes[:, 1].max())}x{int(sizes[:, 0].max())} does not fit "
                        f"the evaluation size {W}x{H}: raise data.crop_size")
    x = torch.zeros((len(items), items[0][0].shape[0], H, W), dtype=torch.uint8)
    y = torch.full((len(items), H, W), IGNORE, dtype=torch.uint8)
    for i, (xi, yi) in enumerate(items):  # a copy per image: decoding costs far more
        x[i, :, : xi.shape[1], : xi.shape[2]] = xi
        y[i, : yi.shape[0], : yi.shape[1]] = yi
    return x, y, sizes

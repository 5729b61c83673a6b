"""ImageNet as class folders (``root/train/<wnid>/*.JPEG``, ``root/val/<wnid>/*``).

Too big for memory, so unlike the other datasets it is a ``torch.utils.data.Dataset``
decoded with Pillow in ``DataLoader`` workers. Items are uint8 ``[3, size, size]`` tensors:
collating and moving uint8 is 4x cheaper than float, and normalisation then runs on the
device in batches (:func:`entrannas.data.normalize`).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .base import DataError, DatasetInfo
from .loader import derive_seed

__all__ = ["ImageFolderDataset", "imagenet_search_subset", "imagenet_loader", "load_imagenet",
           "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_EXTENSIONS = {".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}


def _uniform(a: float, b: float) -> float:
    # torch's global RNG: DataLoader seeds it per worker from its generator, so a seeded
    # loader gives reproducible crops.
    return float(torch.empty(()).uniform_(a, b))


def _randint(low: int, high: int) -> int:
    """Uniform integer in [low, high]."""
    return int(torch.randint(low, high + 1, ()))


class ImageFolderDataset(torch.utils.data.Dataset):
    """One split of a class-folder image set. ``train`` (default: ``split == 'train'``)
    selects random-resized-crop ``size`` + random flip; otherwise resize the short side to
    ``resize`` (default ``size * 256/224``) and centre-crop ``size``.
    ``classes`` fixes the label order (the val split uses the train split's classes)."""

    def __init__(self, root, split: str = "train", train: bool | None = None, size: int = 224,
                 resize: int | None = None, classes: Sequence[str] | None = None,
                 scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        self.root = Path(root) / split
        if not self.root.is_dir():
            raise DataError(f"ImageNet split folder {self.root} not found: pass --data-dir DIR holding "
                            f"train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (one folder per class)")
        self.train = (split == "train") if train is None else bool(train)
        self.size = int(size)
        self.resize = int(resize) if resize is not None else int(round(size * 256 / 224))
        self.scale, self.ratio = scale, ratio
        if classes is None:
            classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
        self.classes = list(classes)
        self.samples: list[tuple[str, int]] = []
        for label, wnid in enumerate(self.classes):
            folder = self.root / wnid
            if not folder.is_dir():
                continue  # a val split may lack a class; labels still follow `classes`
            names = sorted(e.name for e in os.scandir(folder)
                           if e.is_file() and os.path.splitext(e.name)[1].lower() in _EXTENSIONS)
            self.samples.extend((str(folder / n), label) for n in names)
        if not self.samples:
            raise DataError(f"no images in {self.root}: expected {self.root}/<wnid>/*.JPEG class folders")
        self.targets = [label for _, label in self.samples]
        self.info = DatasetInfo("imagenet", len(self.classes), 3, (self.size, self.size),
                                IMAGENET_MEAN, IMAGENET_STD, tuple(self.classes))

    def __len__(self) -> int:
        return len(self.samples)

    def _crop_box(self, w: int, h: int) -> tuple[float, float, float, float]:
        if not self.train:
            # Centre crop of `size` after scaling the short side to `resize`, expressed in
            # source pixels so decode+resize+crop is one Pillow resize call.
            side = min(w, h) * self.size / self.resize
            left, top = (w - side) / 2, (h - side) / 2
            return left, top, left + side, top + side
        area = w * h
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):  # random area share and aspect ratio, as in Inception training
            target = area * _uniform(*self.scale)
            aspect = math.exp(_uniform(log_lo, log_hi))
            cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                left, top = _randint(0, w - cw), _randint(0, h - ch)
                return left, top, left + cw, top + ch
        # Fallback: the largest centred crop with an aspect ratio inside `ratio`.
        aspect = w / h
        if aspect < self.ratio[0]:
            cw, ch = w, round(w / self.ratio[0])
        elif aspect > self.ratio[1]:
            cw, ch = round(h * self.ratio[1]), h
        else:
            cw, ch = w, h
        left, top = (w - cw) // 2, (h - ch) // 2
        return left, top, left + cw, top + ch

    def __getitem__(self, index: int):
        from PIL import Image  # imported here so the module loads without Pillow

        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                if not self.train:
                    # JPEG draft mode decodes at a reduced DCT scale that still covers the
                    # target size: much faster for large photos, same output quality.
                    s = self.resize / min(img.size)
                    if s < 1:
                        img.draft("RGB", (math.ceil(img.size[0] * s), math.ceil(img.size[1] * s)))
                img = img.convert("RGB")
                box = self._crop_box(*img.size)
                img = img.resize((self.size, self.size), Image.BILINEAR, box=box)
        except OSError as e:
            raise DataError(f"cannot decode image {path}: {e}") from e
        x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
        if self.train and _uniform(0.0, 1.0) < 0.5:
            x = x.flip(2)
        return x.contiguous(), label


def imagenet_search_subset(dataset, fraction: float = 0.1, seed: int = 0):
    """Two disjoint index lists ``(weight_idx, arch_idx)``, each holding ``fraction`` of every
    class (at least one image where the class has two or more), drawn per class at random
    (paper appendix A.1: 10% / 10% of the ImageNet train set). Sorted, so reading is sequential."""
    if not 0.0 < fraction <= 0.5:
        raise ValueError(f"fraction must be in (0, 0.5], got {fraction}")
    targets = torch.as_tensor(dataset.targets, dtype=torch.long)
    g = torch.Generator().manual_seed(int(seed))
    weight, arch = [], []
    for c in torch.unique(targets).tolist():  # sorted class order: deterministic draws
        members = torch.nonzero(targets == c).flatten()
        members = members[torch.randperm(members.numel(), generator=g)]
        k = min(max(1, round(members.numel() * fraction)), members.numel() // 2)
        weight.append(members[:k])
        arch.append(members[k:2 * k])
    return sorted(torch.cat(weight).tolist()), sorted(torch.cat(arch).tolist())


def imagenet_loader(dataset, indices: Sequence[int] | None = None, batch_size: int = 256,
                    shuffle: bool = True, num_workers: int = 8, seed: int = 0, epoch: int = 0,
                    drop_last: bool = False, pin_memory: bool | None = None):
    """A ``DataLoader`` of uint8 batches over ``indices`` (default all) whose order and
    worker RNG (hence crops/flips) depend only on ``(seed, epoch)``: build one per epoch."""
    g = torch.Generator().manual_seed(derive_seed(seed, epoch))
    indices = list(range(len(dataset))) if indices is None else list(indices)
    sampler = torch.utils.data.SubsetRandomSampler(indices, generator=g) if shuffle else indices
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        drop_last=drop_last, pin_memory=pin_memory, generator=g,
        persistent_workers=False)


def load_imagenet(data_dir, size: int = 224, resize: int | None = None):
    """``(train, val)`` :class:`ImageFolderDataset` from ``data_dir/{train,val}``."""
    if data_dir is None or not (Path(data_dir) / "train").is_dir():
        where = data_dir if data_dir is not None else "(no --data-dir given)"
        raise DataError(f"ImageNet not found in {where}: pass --data-dir DIR holding train/<wnid>/*.JPEG "
                        f"and val/<wnid>/*.JPEG (one folder per class; sort the flat val images into class folders)")
    train = ImageFolderDataset(data_dir, "train", size=size, resize=resize)
    val = ImageFolderDataset(data_dir, "val", size=size, resize=resize, classes=train.classes)
    return train, val

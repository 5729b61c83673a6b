"""Segmentation batches: batched scale / crop / flip on the device, and the loaders.

DeepLab's training augmentation, per image: resize by a random factor in [0.5, 2.0], take a
random ``crop`` x ``crop`` window (padding with ignored pixels where the scaled image is
smaller), mirror at random. Here all three are ONE ``grid_sample`` per batch: output pixel
(i, j) of image n reads source point ((i + top_n + 1/2) / s_n - 1/2, ...), bilinear for the
image and nearest for the label, so a batch of images of different sizes (VOC, padded by
pad_collate) is augmented without a per-image loop. Every random number comes from a CPU
generator seeded by (seed, epoch, batch), so a resumed run draws the same crops.

    loader = SegLoader(train_set, batch_size=16, shuffle=True, augment=SegAugment(513), ...)
    for x, y in loader: ...      # float [n, C, crop, crop] normalised, long [n, crop, crop]
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .augment import normalize
from .loader import derive_seed
from .voc import IGNORE, pad_collate

__all__ = ["SegAugment", "prepare", "SegLoader"]


def _valid_mask(sizes: torch.Tensor, H: int, W: int, device) -> torch.Tensor:
    """[n, 1, H, W] True inside each image's own (h, w) of a padded batch."""
    sizes = sizes.to(device)
    rows = torch.arange(H, device=device)[None, :, None] < sizes[:, 0, None, None]
    cols = torch.arange(W, device=device)[None, None, :] < sizes[:, 1, None, None]
    return (rows & cols).unsqueeze(1)


def prepare(x: torch.Tensor, y: torch.Tensor, sizes: torch.Tensor | None, mean, std):
    """uint8 batch -> normalised float images (0, the mean colour, outside each image's own
    size) and long labels (255 there)."""
    x = normalize(x, mean, std)
    if sizes is not None:
        x = x.mul_(_valid_mask(sizes, *x.shape[-2:], x.device))
    return x, y.long()


class SegAugment:
    """Random scale in ``scale``, ``crop`` x ``crop`` window, horizontal flip, normalisation."""

    def __init__(self, crop: int, scale: Sequence[float] = (0.5, 2.0), flip: bool = True,
                 mean=None, std=None):
        self.crop, self.scale, self.flip = int(crop), (float(scale[0]), float(scale[1])), bool(flip)
        self.mean, self.std = mean, std

    def draw(self, sizes: torch.Tensor, generator: torch.Generator | None):
        """Per image: scale factor, window corner (top, left) in the scaled image, flip."""
        n = sizes.shape[0]
        u = torch.rand((n, 4), generator=generator, dtype=torch.float64)
        lo, hi = self.scale
        s = lo + (hi - lo) * u[:, 0]
        scaled = (sizes.double() * s[:, None]).round().long()  # [n, 2] size after scaling
        # windows inside the scaled image; for a smaller image, the image somewhere in the window
        first = torch.minimum(scaled - self.crop, torch.zeros_like(scaled))
        span = (scaled - self.crop).abs() + 1
        corner = first + (u[:, 1:3] * span).long().clamp_(max=span - 1)
        flip = (u[:, 3] < 0.5) if self.flip else torch.zeros(n, dtype=torch.bool)
        return s, corner, flip

    def __call__(self, x: torch.Tensor, y: torch.Tensor, sizes: torch.Tensor,
                 generator: torch.Generator | None = None):
        s, corner, flip = self.draw(sizes, generator)
        x, y = prepare(x, y, sizes, self.mean, self.std)
        n, _, H, W = x.shape
        dev, k = x.device, self.crop
        idx = torch.arange(k, dtype=torch.float64)
        j = torch.where(flip[:, None], (k - 1 - idx)[None, :], idx[None, :])  # [n, k]
        # source coordinates (pixel centres at integers) of output rows and columns
        src_y = (idx[None, :] + corner[:, :1] + 0.5) / s[:, None] - 0.5
        src_x = (j + corner[:, 1:] + 0.5) / s[:, None] - 0.5
        # grid_sample's align_corners=False: -1 and 1 are the outer edges of the border pixels
        gy = ((2 * src_y + 1) / H - 1).float().to(dev)
        gx = ((2 * src_x + 1) / W - 1).float().to(dev)
        grid = torch.stack([gx[:, None, :].expand(n, k, k), gy[:, :, None].expand(n, k, k)], dim=-1)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # labels shifted by one so that the zeros outside the batch come back as ignore
        y1 = F.grid_sample((y + 1).unsqueeze(1).float(), grid, mode="nearest", padding_mode="zeros",
                           align_corners=False).squeeze(1).long() - 1
        return x, torch.where(y1 < 0, torch.full_like(y1, IGNORE), y1)

    def __repr__(self) -> str:
        return f"SegAugment(crop={self.crop}, scale={self.scale}, flip={self.flip})"


class SegLoader:
    """``(images, labels)`` batches of a segmentation set on ``device``.

    ``dataset`` is in memory (``SegTensors``: moved to the device once, a batch is one index)
    or decoded per item (``VOCSegmentation``: DataLoader workers, padded by pad_collate).
    Order depends only on (seed, epoch), augmentation on (seed, epoch, batch), as BatchLoader.
    Without ``augment``, batches are normalised as they are; ``eval_size`` pads decoded images
    to one size (single-scale inference on whole images, padding ignored).
    """

    def __init__(self, dataset, indices=None, batch_size: int = 16, shuffle: bool = False,
                 augment: SegAugment | None = None, device=None, seed: int = 0, drop_last: bool = False,
                 workers: int = 0, eval_size: int | None = None):
        self.dataset, self.info = dataset, dataset.info
        self.in_memory = hasattr(dataset, "images")
        self.device = torch.device(device or "cpu")
        if self.in_memory:
            self.images, self.labels = dataset.images.to(self.device), dataset.labels.to(self.device)
        n = len(dataset)
        self.indices = torch.arange(n) if indices is None else torch.as_tensor(indices, dtype=torch.long)
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), bool(shuffle), bool(drop_last)
        self.augment, self.seed, self.workers = augment, int(seed), int(workers)
        self.eval_size = eval_size
        self.epoch = self.batch = 0

    def __len__(self) -> int:
        n = self.indices.numel()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int, batch: int = 0) -> None:
        self.epoch, self.batch = int(epoch), int(batch)

    def _order(self) -> torch.Tensor:
        idx = self.indices
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
            idx = idx[torch.randperm(idx.numel(), generator=g)]
        return idx[: len(self) * self.batch_size] if self.drop_last else idx

    def _batches(self, order: torch.Tensor):
        bs = self.batch_size
        chunks = [order[b * bs:(b + 1) * bs] for b in range(self.batch, len(self))]
        if self.in_memory:
            for sel in chunks:
                sel = sel.to(self.device)
                yield self.images[sel], self.labels[sel], None
            return
        size = (self.eval_size, self.eval_size) if self.eval_size else None
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=[c.tolist() for c in chunks], num_workers=self.workers,
            collate_fn=functools.partial(pad_collate, size=size), pin_memory=self.device.type == "cuda")
        for x, y, sizes in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), sizes

    def __iter__(self):
        epoch = self.epoch
        for x, y, sizes in self._batches(self._order()):
            b = self.batch
            if self.augment is not None:
                if sizes is None:
                    sizes = torch.tensor(x.shape[-2:]).expand(x.shape[0], 2)
                g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, b))
                x, y = self.augment(x, y, sizes, g)
            else:
                x, y = prepare(x, y, sizes, self.info.mean, self.info.std)
            self.batch = b + 1  # handed out: a checkpoint taken now resumes after it
            yield x, y
        self.epoch, self.batch = epoch + 1, 0

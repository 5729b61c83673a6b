"""Segmentation scenes from real Fashion-MNIST items: the CPU-scale stand-in for Pascal VOC.

How a scene is built (everything drawn from one ``torch.Generator`` seeded by ``seed``):
1. the number of items k, uniform in ``items_min..items_max`` (2 to 4);
2. for each of the k slots, one item drawn uniformly from the source split (training
   scenes from the Fashion-MNIST training set, validation scenes from its test set, so no
   item is in both) and a top-left corner uniform over the positions where the whole 28x28
   item lies on the ``canvas`` x ``canvas`` (64x64) black canvas;
3. the items are pasted in slot order: where an item's ink is above ``threshold`` (a
   fraction of full ink, 0.2 = 51/255) it covers what is below, in the image and in the
   label, and the label becomes its class + 1; where its ink is fainter the image keeps the
   brighter pixel and the label what was there. Label 0 is background.

So the scenes depend only on the seed and the (fixed) Fashion-MNIST files, and scene i is the
same whatever the number of scenes (each scene has its own row of draws). Every step is a
batched tensor op over all scenes; one loop runs over the (at most 4) slots.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import DatasetInfo
from .loader import derive_seed

__all__ = ["SegTensors", "make_scenes", "load_fmnist_scenes", "SCENE_CLASSES"]

SCENE_CLASSES = ("background", "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                 "Shirt", "Sneaker", "Bag", "Ankle boot")


@dataclass
class SegTensors:
    """An in-memory segmentation set: uint8 images [N, C, H, W], uint8 labels [N, H, W]
    (255 = ignore) and what the model needs to know about it."""
    images: torch.Tensor
    labels: torch.Tensor
    info: DatasetInfo

    def __len__(self) -> int:
        return self.images.shape[0]


def make_scenes(items: torch.Tensor, classes: torch.Tensor, n: int, seed: int, canvas: int = 64,
                items_min: int = 2, items_max: int = 4, threshold: float = 0.2):
    """``n`` scenes from uint8 ``items`` [M, 1, h, w] with labels ``classes`` [M]: uint8 images
    [n, 1, canvas, canvas] and uint8 labels [n, canvas, canvas] (see the module docstring)."""
    h, w = items.shape[-2:]
    if canvas < max(h, w):
        raise ValueError(f"a {canvas}x{canvas} canvas cannot hold {h}x{w} items")
    if not 1 <= items_min <= items_max:
        raise ValueError(f"need 1 <= items_min <= items_max, got {items_min}, {items_max}")
    # One row of uniform draws per scene, so scene i is the same whatever n is.
    u = torch.rand((n, 1 + 3 * items_max), generator=torch.Generator().manual_seed(int(seed)),
                   dtype=torch.float64)
    draw = lambda v, count: (v * count).long().clamp_(max=count - 1)  # uniform in 0..count-1
    k = items_min + draw(u[:, 0], items_max - items_min + 1)
    pick = draw(u[:, 1:1 + items_max], items.shape[0])
    top = draw(u[:, 1 + items_max:1 + 2 * items_max], canvas - h + 1)
    left = draw(u[:, 1 + 2 * items_max:], canvas - w + 1)
    image = torch.zeros((n, canvas, canvas), dtype=torch.uint8)
    label = torch.zeros((n, canvas, canvas), dtype=torch.uint8)
    cut = round(threshold * 255)
    rows = torch.arange(h)
    cols = torch.arange(w)
    scene = torch.arange(n)[:, None, None]
    for s in range(items_max):
        live = k > s  # scenes with an item in this slot
        ink = items[pick[:, s], 0]  # [n, h, w]
        r = (top[:, s, None] + rows)[:, :, None]  # [n, h, 1] canvas rows of the item
        c = (left[:, s, None] + cols)[:, None, :]  # [n, 1, w]
        under_img, under_lab = image[scene, r, c], label[scene, r, c]
        solid = (ink > cut) & live[:, None, None]
        faint = live[:, None, None] & ~solid
        image[scene, r, c] = torch.where(solid, ink, torch.where(faint, torch.maximum(ink, under_img), under_img))
        item_label = (classes[pick[:, s]] + 1).to(torch.uint8)[:, None, None]
        label[scene, r, c] = torch.where(solid, item_label, under_lab)
    return image.unsqueeze(1), label


def load_fmnist_scenes(data_dir=None, download: bool = True, train_size: int = 10000,
                       val_size: int = 2000, seed: int = 0, canvas: int = 64, items_min: int = 2,
                       items_max: int = 4, threshold: float = 0.2) -> tuple[SegTensors, SegTensors]:
    """Training scenes from the Fashion-MNIST training items, validation scenes from its test
    items; normalised with the training scenes' own mean and standard deviation."""
    from .readers import load_fashion_mnist
    train, test = load_fashion_mnist(data_dir, download=download)
    opts = dict(canvas=canvas, items_min=items_min, items_max=items_max, threshold=threshold)
    x_tr, y_tr = make_scenes(train.images, train.labels, train_size, derive_seed(seed, 0), **opts)
    x_va, y_va = make_scenes(test.images, test.labels, val_size, derive_seed(seed, 1), **opts)
    # mean and std from the histogram of the 256 grey levels: exact, and no float copy
    counts = torch.bincount(x_tr.flatten(), minlength=256).double()
    level = torch.arange(256, dtype=torch.float64) / 255
    mean = float((counts * level).sum() / counts.sum())
    std = float(((counts * (level - mean) ** 2).sum() / (counts.sum() - 1)).sqrt())
    info = DatasetInfo("fmnist-scenes", len(SCENE_CLASSES), 1, (canvas, canvas), (mean,), (std,),
                       SCENE_CLASSES)
    return SegTensors(x_tr, y_tr, info), SegTensors(x_va, y_va, info)

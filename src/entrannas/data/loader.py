"""Seeded weight/architecture split and the in-memory batch loader.

Reproducibility contract: the permutation of epoch ``e`` depends only on ``(seed, e)`` and
the augmentation of batch ``b`` only on ``(seed, e, b, rank)``. A resumed run (from an
epoch-boundary checkpoint, or even mid-epoch via ``state_dict``) therefore reproduces the
exact batches of an uninterrupted run, without pickling generator states.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .augment import normalize

__all__ = ["split_indices", "derive_seed", "BatchLoader"]

_M64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    # The splitmix64 finaliser: nearby inputs (seed 0/1, epoch 0/1) give unrelated outputs,
    # and unlike Python's hash() it is stable across processes.
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that is a deterministic mix of integer ``parts`` (seed, epoch, ...)."""
    h = 0
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _M64))
    return h & ((1 << 63) - 1)


def split_indices(n: int, fraction: float = 0.5, seed: int = 0, limit: int | None = None):
    """Split ``range(n)`` at random into ``(weight_idx, arch_idx)`` int64 tensors: a
    ``fraction`` share for the weights, the rest for the architecture (paper appendix A.1:
    50/50 on CIFAR). ``limit`` keeps at most that many of each (a random subset, for quick
    CPU runs). Both are returned sorted, for memory locality; the loader shuffles."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g)
    k = int(round(n * fraction))
    weight, arch = perm[:k], perm[k:]
    if limit is not None:
        weight, arch = weight[:limit], arch[:limit]
    return weight.sort().values, arch.sort().values


class BatchLoader:
    """Iterates ``(images, labels)`` batches of an in-memory uint8 dataset on ``device``.

    The whole dataset is moved to ``device`` once; each batch is one index of the stored
    tensor followed by ``augment(batch, generator)`` (e.g. :class:`Augment`), all on the
    device. Batches come out as float32, normalised with ``mean``/``std``: when ``normalize``
    is None (auto) the loader normalises a batch that is still uint8 after ``augment`` (or
    that had no ``augment``), and leaves float output of ``augment`` as it is.

    One full pass advances the epoch by itself; ``set_epoch(e)`` jumps to epoch ``e``.
    With ``world_size > 1`` every rank sees the same permutation and takes every
    ``world_size``-th sample from ``rank`` on (truncated so all ranks get equal counts).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 indices: Sequence[int] | torch.Tensor | None = None, batch_size: int = 64,
                 shuffle: bool = True, augment: Callable | None = None, device=None,
                 drop_last: bool = False, seed: int = 0, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, normalize: bool | None = None,
                 rank: int = 0, world_size: int = 1,
                 memory_format: torch.memory_format = torch.contiguous_format):
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device)
        self.labels = labels.to(self.device).long()
        n = images.shape[0]
        idx = torch.arange(n) if indices is None else torch.as_tensor(indices, dtype=torch.long).cpu()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise IndexError(f"indices must lie in 0..{n - 1}")
        self.indices = idx.flatten()
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), bool(shuffle), bool(drop_last)
        self.augment, self.seed = augment, int(seed)
        self.mean, self.std, self.normalize = mean, std, normalize
        self.rank, self.world_size = int(rank), int(world_size)
        self.memory_format = memory_format  # channels_last on a GPU (accel.py)
        self.epoch = 0
        self.batch = 0  # batches of the current epoch already handed out

    @classmethod
    def from_dataset(cls, dataset, indices=None, **kwargs) -> "BatchLoader":
        """Loader over a :class:`TensorImageDataset`, normalised with its ``info`` stats."""
        kwargs.setdefault("mean", dataset.info.mean)
        kwargs.setdefault("std", dataset.info.std)
        return cls(dataset.images, dataset.labels, indices, **kwargs)

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (before ``drop_last``)."""
        n = self.indices.numel()
        return n // self.world_size if self.world_size > 1 else n

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch_indices(self, epoch: int | None = None) -> torch.Tensor:
        """The dataset indices this rank visits in ``epoch`` (default: current), in order."""
        epoch = self.epoch if epoch is None else epoch
        idx = self.indices
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            idx = idx[torch.randperm(idx.numel(), generator=g)]
        if self.world_size > 1:
            idx = idx[self.rank::self.world_size][: self.num_samples]
        return idx

    def set_epoch(self, epoch: int, batch: int = 0) -> None:
        self.epoch, self.batch = int(epoch), int(batch)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state.get("seed", self.seed))
        self.set_epoch(state["epoch"], state.get("batch", 0))

    def __iter__(self):
        epoch, nb, bs = self.epoch, len(self), self.batch_size
        idx = self.epoch_indices(epoch).to(self.device)
        for b in range(self.batch, nb):
            sel = idx[b * bs:(b + 1) * bs]
            x, y = self.images[sel], self.labels[sel]
            if self.augment is not None:
                # A CPU generator per batch: same draws on CPU and GPU, and batch b is
                # reproducible without replaying batches 0..b-1.
                g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, b, self.rank))
                x_aug = self.augment(x, g)
            else:
                x_aug = x
            auto = x_aug.dtype == torch.uint8 or self.augment is None
            if self.normalize or (self.normalize is None and auto):
                x_aug = normalize(x_aug, self.mean, self.std)
            if self.memory_format != torch.contiguous_format:
                x_aug = x_aug.contiguous(memory_format=self.memory_format)
            self.batch = b + 1  # handed out: a checkpoint taken now resumes after it
            yield x_aug, y
        self.epoch, self.batch = epoch + 1, 0

    def __repr__(self) -> str:
        return (f"BatchLoader(n={self.num_samples}, batch_size={self.batch_size}, "
                f"batches={len(self)}, shuffle={self.shuffle}, epoch={self.epoch}, "
                f"device={self.device}, augment={self.augment!r})")

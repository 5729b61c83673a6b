"""Shared pieces of the data layer: the error type, dataset metadata, the in-memory
dataset container and the (optional) downloader.

Small datasets live in memory as ONE uint8 tensor ``[N, C, H, W]`` plus an int64 label
tensor, so batches are a single indexing operation (on the GPU when the data is there)
instead of per-image Python.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = [
    "DataError",
    "DatasetInfo",
    "TensorImageDataset",
    "default_data_dir",
    "download_file",
    "md5_bytes",
]


class DataError(RuntimeError):
    """Data missing or malformed. The message is one line that says how to fix it."""


@dataclass(frozen=True)
class DatasetInfo:
    """What the model and loaders need to know about a dataset.

    ``mean``/``std`` are per-channel statistics in [0, 1] pixel units, computed on the
    training split; they are fixed constants for the canonical datasets so that a subset
    (or a fake test file) normalises exactly like the full set.
    """

    name: str
    num_classes: int
    channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] | None = field(default=None, compare=False)


class TensorImageDataset(torch.utils.data.Dataset):
    """uint8 images ``[N, C, H, W]`` and int64 labels ``[N]`` with their :class:`DatasetInfo`.

    Behaves like ``torch.utils.data.TensorDataset`` (``len``, indexing, ``.tensors``) so it
    also works with a plain ``DataLoader``; the fast path is :class:`BatchLoader`.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, info: DatasetInfo):
        if images.dim() != 4:
            raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels shape {tuple(labels.shape)} does not match {images.shape[0]} images"
            )
        self.images = images
        self.labels = labels.long()
        self.info = info

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images, self.labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    def to(self, device) -> "TensorImageDataset":
        """The same dataset with both tensors on ``device`` (no copy if already there)."""
        return TensorImageDataset(self.images.to(device), self.labels.to(device), self.info)

    def resized(self, size: int, chunk: int = 8192) -> "TensorImageDataset":
        """The images resized once to ``size`` x ``size`` (area averages when smaller, as a
        2x2 block mean halves a side; bilinear when larger), still uint8."""
        if tuple(self.images.shape[2:]) == (size, size):
            return self
        mode = "area" if size < min(self.images.shape[2:]) else "bilinear"
        extra = {} if mode == "area" else {"align_corners": False}
        out = torch.empty(self.images.shape[0], self.images.shape[1], size, size, dtype=torch.uint8,
                          device=self.images.device)
        for i in range(0, self.images.shape[0], chunk):  # float copies of a chunk, not the set
            x = self.images[i:i + chunk].float()
            out[i:i + chunk] = F.interpolate(x, size=(size, size), mode=mode, **extra).round_().clamp_(0, 255)
        return TensorImageDataset(out, self.labels, dataclasses.replace(self.info, image_size=(size, size)))

    def __repr__(self) -> str:
        return (
            f"TensorImageDataset({self.info.name}, n={len(self)}, "
            f"shape={tuple(self.images.shape[1:])}, classes={self.info.num_classes}, "
            f"device={self.images.device})"
        )


def default_data_dir() -> Path:
    """Where downloads go when no ``data_dir`` is given: ``$ENTRANNAS_DATA`` or
    ``~/.cache/entrannas/data`` (a user-writable place, unlike the Debian package dirs)."""
    env = os.environ.get("ENTRANNAS_DATA")
    return Path(env) if env else Path.home() / ".cache" / "entrannas" / "data"


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def download_file(url: str, dest: Path, timeout: float = 30.0) -> None:
    """Download ``url`` to ``dest`` atomically (``.part`` then rename), so an interrupted
    download never leaves a truncated file that later looks like valid data.

    Raises ``OSError`` on any network failure; callers turn that into a :class:`DataError`
    with their own fix hint.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
            shutil.copyfileobj(resp, out, length=1 << 20)
        os.replace(part, dest)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise OSError(f"download of {url} failed: {e}") from e
    finally:
        # Also on Ctrl-C: never leave a partial file behind.
        part.unlink(missing_ok=True)

"""The decoded-image cache of an image folder (data/folder.py): Pillow decoding in DataLoader
workers, the content key (paths, sizes, mtimes) and the atomic cache file; see docs/design.md,
"Your own data".
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..fsutil import WriteError, atomic_path
from .base import DataError

__all__ = ["decode_image", "default_cache_dir", "CACHE_FORMAT"]

CACHE_FORMAT = "entrannas-folder-cache/1"
_GRAY = {"1", "L", "LA", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"}


def default_cache_dir() -> Path:
    """``$ENTRANNAS_CACHE``, else ``$XDG_CACHE_HOME/entrannas/folders`` (``~/.cache/...``)."""
    if os.environ.get("ENTRANNAS_CACHE"):
        return Path(os.environ["ENTRANNAS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "entrannas" / "folders"


def decode_image(path, size: int, channels: int) -> np.ndarray:
    """uint8 ``[channels, size, size]``: the image upright (EXIF orientation), its largest
    centred square resized (antialiased bilinear). Raises whatever Pillow raises for a file it
    cannot read."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        w, h = img.size
        if min(w, h) > size:  # JPEG draft decodes at a reduced scale that still covers `size`
            s = size / min(w, h)
            img.draft("L" if channels == 1 else "RGB", (math.ceil(w * s), math.ceil(h * s)))
        # Photos from cameras and phones store their orientation in EXIF: show them upright.
        img = ImageOps.exif_transpose(img).convert("L" if channels == 1 else "RGB")
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))
        arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _content_key(scan: dict, image_size, channels) -> str:
    h = hashlib.sha256(json.dumps([CACHE_FORMAT, str(scan["root"].resolve()), image_size, channels,
                                   scan["classes"]]).encode())
    for f, t, (size, mtime) in zip(scan["files"], scan["in_test"], scan["stamps"]):
        h.update(f"{f}\0{int(t)}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


def _cache_path(root: Path, image_size, channels, cache_dir) -> Path:
    # One file per (folder, size, channels): a changed folder replaces its cache, not adds one.
    where = hashlib.sha256(json.dumps([str(root.resolve()), image_size, channels]).encode()).hexdigest()[:16]
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in root.resolve().name)[:40] or "root"
    return Path(cache_dir).expanduser() / f"{name}-{where}.pt" if cache_dir else default_cache_dir() / f"{name}-{where}.pt"


class _Probe(torch.utils.data.Dataset):
    """Header of every file (mode and size, or why Pillow refuses it) in DataLoader workers."""

    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image
        try:
            with Image.open(self.paths[i]) as img:
                return img.mode, img.size[0], img.size[1], ""
        except Exception as e:  # Pillow's plugins raise many types for files they cannot read
            return "", 0, 0, f"{type(e).__name__}: {e}"[:200]


class _Decode(torch.utils.data.Dataset):
    def __init__(self, paths, size: int, channels: int):
        self.paths, self.size, self.channels = paths, size, channels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return torch.from_numpy(decode_image(self.paths[i], self.size, self.channels).copy()), ""
        except Exception as e:  # a truncated file passes the header probe and fails here
            return torch.zeros(self.channels, self.size, self.size, dtype=torch.uint8), f"{type(e).__name__}: {e}"[:200]


def _collate(batch):
    if isinstance(batch[0][0], torch.Tensor):  # decoded images and their errors
        return torch.stack([x for x, _ in batch]), [e for _, e in batch]
    return batch  # probed headers, as they are


def _map(dataset, workers: int, batch_size: int = 256):
    # Worker processes only pay off beyond a few hundred files, and not beyond one per core.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = min(workers, cores) if len(dataset) > 4 * batch_size else 0
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=n, collate_fn=_collate)


def _probe(root: Path, files: list[str], workers: int):
    """Per file: (mode, width, height, why unreadable)."""
    out = []
    for batch in _map(_Probe([str(root / f) for f in files]), workers):
        out.extend(batch)
    return out


def _index(scan: dict, image_size, channels, workers: int) -> dict:
    """Which files are images, the size and channels they get, and what was skipped."""
    root, files = scan["root"], scan["files"]
    probed = _probe(root, files, workers)
    good = [i for i, p in enumerate(probed) if not p[3]]
    if not good:
        raise DataError(f"no file under {root} is an image Pillow can read")
    sides = Counter(min(probed[i][1], probed[i][2]) for i in good)
    # Default size: the most common short side (the larger on a tie: less is thrown away).
    size = int(image_size) if image_size else max(sides, key=lambda s: (sides[s], s))
    if channels is None:
        channels = 1 if all(probed[i][0] in _GRAY for i in good) else 3
    sizes = Counter(f"{probed[i][1]}x{probed[i][2]}" for i in good)
    return dict(format=CACHE_FORMAT, classes=scan["classes"], test_classes=scan["test_classes"],
                layout=scan["layout"], files=[files[i] for i in good], labels=torch.tensor([scan["labels"][i] for i in good], dtype=torch.long),
                in_test=torch.tensor([scan["in_test"][i] for i in good], dtype=torch.bool),
                skipped=[[files[i], probed[i][3]] for i in range(len(files)) if probed[i][3]],
                size=size, channels=int(channels), sizes=dict(sizes.most_common(5)),
                distinct_sizes=len(sizes), images=None)


def _decode_all(root: Path, index: dict, workers: int) -> dict:
    """The index with every image decoded; files that fail here (truncated) join the skipped."""
    size, ch = index["size"], index["channels"]
    batches, errors = [], []
    for x, errs in _map(_Decode([str(root / f) for f in index["files"]], size, ch), workers):
        batches.append(x)
        errors.extend(errs)
    keep = torch.tensor([k for k, e in enumerate(errors) if not e], dtype=torch.long)
    out = dict(index, images=torch.cat(batches)[keep] if batches else torch.empty(0, ch, size, size, dtype=torch.uint8))
    if len(keep) < len(errors):
        out.update(files=[index["files"][k] for k in keep.tolist()], labels=index["labels"][keep],
                   in_test=index["in_test"][keep],
                   skipped=sorted(index["skipped"] + [[index["files"][k], e] for k, e in enumerate(errors) if e]))
    return out


def _read_cache(path: Path, key: str, decode: bool):
    if not path.is_file():
        return None
    try:
        c = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # damaged or foreign: rebuilt, never trusted
        return None
    if not isinstance(c, dict) or c.get("format") != CACHE_FORMAT or c.get("key") != key:
        return None
    if decode and not isinstance(c.get("images"), torch.Tensor):
        return None
    return c


def _write_cache(path: Path, content: dict, notes: list[str]) -> None:
    try:
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save(content, tmp)
    except WriteError as e:  # a cache is an optimisation: never fail a run over it
        notes.append(f"data: {e}; the folder will be decoded again next time (set data.cache_dir)")


def _fits(nbytes: int, device) -> bool:
    """Half of the available memory (and of the free GPU memory when the data goes there)."""
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(l.split()[1]) * 1024 for l in f if l.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if device is not None and torch.device(device).type == "cuda":
        avail = min(avail, torch.cuda.mem_get_info(torch.device(device))[0])
    return nbytes <= avail // 2

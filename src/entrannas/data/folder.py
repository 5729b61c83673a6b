"""Your own images: a folder of class sub-folders (``data.dataset=folder``).

    DIR/train/<class>/*  [DIR/test/<class>/*]     or     DIR/<class>/*

Every file Pillow reads is an image (PNG, JPEG, BMP, WebP, ...). Each is centre-cropped to a
square and resized to ``image_size``, in RGB or grayscale, and the whole set is decoded ONCE
into a uint8 tensor cache keyed by the files' paths, sizes and mtimes (see docs/design.md,
"Your own data"): a second run loads one file instead of decoding thousands. From there it
is an in-memory :class:`TensorImageDataset` like CIFAR, augmented in batches on the device.
A folder whose decoded images would not fit in memory is streamed instead: decoded every
epoch in worker processes, as ImageNet is (:class:`FolderImageSet`).

Without a ``test/`` folder, a stratified share of every class is held out as the test set.
The split depends only on each class's sorted file names (never on ``run.seed``), so the
search, the training and ``entrannas eval`` hold out the same images.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from .base import DataError, DatasetInfo, TensorImageDataset
from .folder_cache import (_Decode, _cache_path, _content_key, _decode_all, _fits, _index, _map,
                           _read_cache, _write_cache, decode_image, default_cache_dir)
from .loader import derive_seed

__all__ = ["load_folder", "load_folder_eval", "FolderDataset", "FolderImageSet", "default_cache_dir",
           "decode_image"]

_SPLIT_SEED = 0x7E57  # fixed: the held-out images must not change with run.seed


# ----------------------------------------------------------------------------- the folder

def _visible(name: str) -> bool:
    return not name.startswith(".")  # .DS_Store, .ipynb_checkpoints, our own temporary files


def _class_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and _visible(e.name))


def _files_of(folder: Path) -> list[Path]:
    out = []
    for parent, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if _visible(d))
        out.extend(Path(parent) / f for f in sorted(files) if _visible(f))
    return out


def _scan(root, min_classes: int = 2) -> dict:
    """The folder's layout, classes and files (path, label, split, size, mtime); one line for
    every way it cannot be a data set."""
    if root is None:
        raise DataError("data.dataset=folder needs data.data_dir=DIR: a folder with one sub-folder "
                        "of images per class (DIR/<class>/*.png, or DIR/train/<class>/ and DIR/test/<class>/)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder: pass data.data_dir=DIR "
                        f"holding one sub-folder of images per class")
    split = (root / "train").is_dir()
    if not split and (root / "test").is_dir():
        raise DataError(f"{root} has a test/ folder but no train/: put the training images in "
                        f"{root / 'train'}/<class>/")
    base = root / "train" if split else root
    classes = _class_dirs(base)
    if not classes:
        raise DataError(f"{base} holds no class folders: put each class's images in a sub-folder "
                        f"of its own, {base}/<class>/*.png")
    if len(classes) < min_classes:
        raise DataError(f"{base} has only one class folder ({classes[0]}): a classifier needs at "
                        f"least two classes")
    parts = [(base, False)]
    if split and (root / "test").is_dir():
        extra = sorted(set(_class_dirs(root / "test")) - set(classes))
        if extra:
            raise DataError(f"{root / 'test' / extra[0]} is a class the training folder {base} "
                            f"does not have: give it training images or remove it")
        parts.append((root / "test", True))
    files, labels, in_test, stamps = [], [], [], []
    for folder, test in parts:
        for label, name in enumerate(classes):
            cdir = folder / name
            if not cdir.is_dir():
                continue  # a test folder may lack a class
            found = _files_of(cdir)
            if not found:
                raise DataError(f"class folder {cdir} holds no images: add some or remove the folder")
            for p in found:
                st = p.stat()
                files.append(p.relative_to(root).as_posix())
                labels.append(label)
                in_test.append(test)
                stamps.append((st.st_size, st.st_mtime_ns))
    has_test = len(parts) == 2
    test_classes = [n for n in classes if has_test and (root / "test" / n).is_dir()]
    return dict(root=root, layout="train/test" if has_test else ("train" if split else "flat"),
                classes=classes, test_classes=test_classes, files=files, labels=labels,
                in_test=in_test, stamps=stamps)


def _check(root: Path, c: dict, strict: bool) -> None:
    """What the decoded set must satisfy; checked before the cache is written."""
    if c["skipped"] and strict:
        first, why = c["skipped"][0]
        raise DataError(f"{root / first} is not an image Pillow can read ({why}): remove it, or set "
                        f"data.strict=false to skip such files")
    base = root / "train" if c["layout"] != "flat" else root
    for test, folder, names in ((False, base, c["classes"]), (True, root / "test", c["test_classes"])):
        readable = set(c["labels"][c["in_test"] == test].tolist())
        for name in names:
            if c["classes"].index(name) not in readable:
                raise DataError(f"class folder {folder / name} holds no readable images: add some or "
                                f"remove the folder")


def _load_index(data_dir, image_size, channels, strict, in_memory, cache_dir, workers, device,
                min_classes: int = 2):
    """The cached decoded set (or, streaming, its index), whether it is in memory, the log lines
    about it and the cache's path."""
    t0 = time.perf_counter()
    scan = _scan(data_dir, min_classes)
    root, notes = scan["root"], []
    key = _content_key(scan, image_size, channels)
    path = _cache_path(root, image_size, channels, cache_dir)
    c = _read_cache(path, key, decode=in_memory is True)
    if c is not None:
        mem = isinstance(c.get("images"), torch.Tensor) if in_memory == "auto" else bool(in_memory)
        _check(root, c, strict)
        notes.append(f"data: {len(c['files'])} images of {root} from the cache {path} "
                     f"({time.perf_counter() - t0:.2f} s)")
    else:
        c = _index(scan, image_size, channels, workers)
        mem = in_memory
        if in_memory == "auto":
            nbytes = len(c["files"]) * c["channels"] * c["size"] ** 2
            mem = _fits(nbytes, device)
            if not mem:
                notes.append(f"data: {len(c['files'])} images of {c['channels']}x{c['size']}x{c['size']} "
                             f"({nbytes / 2**30:.1f} GiB) do not fit in memory: streaming them from "
                             f"{root} with {workers} decoding workers")
        if mem:
            c = _decode_all(root, c, workers)
        _check(root, c, strict)
        c["key"] = key
        _write_cache(path, c, notes)
        notes.append(f"data: decoded {len(c['files'])} images of {root} into the cache {path} "
                     f"({time.perf_counter() - t0:.1f} s)")
    if c["skipped"]:
        notes.append(f"data: skipped {len(c['skipped'])} file(s) that are not readable images "
                     f"(first: {root / c['skipped'][0][0]}); data.strict=true refuses them instead")
    if c["distinct_sizes"] > 1 or next(iter(c["sizes"])) != f"{c['size']}x{c['size']}":
        notes.append(f"data: {c['distinct_sizes']} image size(s) (most common: "
                     f"{', '.join(f'{k} ({v})' for k, v in c['sizes'].items())}); each image is "
                     f"centre-cropped to a square and resized to {c['size']}x{c['size']}")
    return root, c, bool(mem), notes, path


def _test_mask(cached: dict, test_fraction: float) -> torch.Tensor:
    """The folder's own test/ images, or a stratified share of every class: per class, a
    permutation seeded by the class index alone over its sorted files, so adding images to one
    class leaves the split of the others as it was."""
    if cached["layout"] == "train/test":
        return cached["in_test"].clone()
    labels, mask = cached["labels"], torch.zeros(len(cached["labels"]), dtype=torch.bool)
    for c in range(len(cached["classes"])):
        members = torch.nonzero(labels == c).flatten()
        n = members.numel()
        k = min(max(1, round(n * test_fraction)), n - 1) if n >= 2 else 0
        g = torch.Generator().manual_seed(derive_seed(_SPLIT_SEED, c))
        mask[members[torch.randperm(n, generator=g)[:k]]] = True
    return mask


def _stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units, in chunks (no float copy of the whole set)."""
    c = images.shape[1]
    s, s2, n = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0
    for chunk in images.split(4096):
        x = chunk.to(torch.float64).transpose(0, 1).reshape(c, -1) / 255.0
        s += x.sum(1)
        s2 += (x * x).sum(1)
        n += x.shape[1]
    mean = s / max(n, 1)
    std = (s2 / max(n, 1) - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(round(float(v), 6) for v in mean), tuple(max(round(float(v), 6), 1e-3) for v in std)


class FolderDataset(TensorImageDataset):
    """An in-memory split of an image folder, with the log lines (``notes``) and the record for
    the run folder (``meta``, written as dataset.json)."""

    def __init__(self, images, labels, info, notes=(), meta=None):
        super().__init__(images, labels, info)
        self.notes, self.meta = list(notes), meta


class FolderImageSet(torch.utils.data.Dataset):
    """A split of an image folder too large for memory: decoded per item (DataLoader workers),
    uint8 ``[C, S, S]`` like the cache. Augmentation then runs on the device in batches."""

    def __init__(self, root: Path, files, labels, info, notes=(), meta=None):
        self.root, self.info = Path(root), info
        self.samples = [(str(self.root / f), int(y)) for f, y in zip(files, labels)]
        self.targets = [y for _, y in self.samples]
        self.notes, self.meta = list(notes), meta

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        try:
            x = decode_image(path, self.info.image_size[0], self.info.channels)
        except Exception as e:  # Pillow raises many types; one line naming the file
            raise DataError(f"cannot decode image {path} ({type(e).__name__}: {e})") from None
        return torch.from_numpy(x.copy()), label


def load_folder(data_dir, image_size: int | None = None, channels: int | None = None, strict: bool = False,
                test_fraction: float = 0.2, in_memory: bool | str = "auto", cache_dir=None, workers: int = 4,
                device=None):
    """``(train, test)`` of an image folder: :class:`FolderDataset` pairs in memory, or
    :class:`FolderImageSet` pairs when streaming. ``train.notes`` holds what to log;
    ``train.meta`` the record of the split and classes. ``image_size=None``: the most common
    short side; ``channels=None``: 1 if every image is grayscale, else 3. The held-out split does not
    depend on any seed (see the module docstring)."""
    root, c, mem, notes, path = _load_index(data_dir, image_size, channels, strict, in_memory,
                                            cache_dir, workers, device)
    test = _test_mask(c, test_fraction)
    labels, classes, files = c["labels"], tuple(c["classes"]), c["files"]
    tr_idx, te_idx = torch.nonzero(~test).flatten(), torch.nonzero(test).flatten()
    if mem:
        mean, std = _stats(c["images"][tr_idx])
    else:  # a seeded sample of the training images: a full pass would decode them all
        g = torch.Generator().manual_seed(derive_seed(_SPLIT_SEED, 1))
        pick = tr_idx[torch.randperm(tr_idx.numel(), generator=g)[:1000]].sort().values
        sample, _ = next(iter(_map(_Decode([str(root / files[i]) for i in pick.tolist()],
                                           c["size"], c["channels"]), workers, batch_size=len(pick))))
        mean, std = _stats(sample)
    info = DatasetInfo("folder", len(classes), c["channels"], (c["size"], c["size"]), mean, std, classes)
    per_class = {name: [int((labels[tr_idx] == k).sum()), int((labels[te_idx] == k).sum())]
                 for k, name in enumerate(classes)}
    meta = {"root": str(root), "layout": c["layout"], "classes": list(classes), "image_size": c["size"],
            "channels": c["channels"], "mean": list(mean), "std": list(std), "in_memory": mem,
            "cache": str(path), "images": {"train": len(tr_idx), "test": len(te_idx)},
            "per_class_train_test": per_class,
            "test_split": ("the folder's test/" if c["layout"] == "train/test" else
                           {"fraction": test_fraction, "seed": _SPLIT_SEED, "stratified": True}),
            "test_files": [files[i] for i in te_idx.tolist()],
            "skipped": [f for f, _ in c["skipped"]]}
    if not len(te_idx):
        raise DataError(f"{root} leaves no image for the test set: add images, or a test/ folder")
    if mem:
        return (FolderDataset(c["images"][tr_idx], labels[tr_idx], info, notes, meta),
                FolderDataset(c["images"][te_idx], labels[te_idx], info))
    return (FolderImageSet(root, [files[i] for i in tr_idx], labels[tr_idx].tolist(), info, notes, meta),
            FolderImageSet(root, [files[i] for i in te_idx], labels[te_idx].tolist(), info))


def load_folder_eval(data_dir, classes, image_size: int, channels: int, strict: bool = False,
                     cache_dir=None, workers: int = 4):
    """Every image of another folder (its test/ when it has one), labelled by the trained
    ``classes`` (it may hold fewer; a class the model does not know is refused), for
    ``entrannas eval --data DIR``: ``(images uint8, labels, notes)``."""
    root = Path(data_dir).expanduser()
    if (root / "test").is_dir():
        root = root / "test"
    _, c, _, notes, _ = _load_index(root, image_size, channels, strict, True, cache_dir, workers, None,
                                    min_classes=1)
    unknown = [n for n in c["classes"] if n not in classes]
    if unknown:
        raise DataError(f"{root / unknown[0]} is a class the model was not trained on (it knows "
                        f"{', '.join(classes[:8])}{', ...' if len(classes) > 8 else ''})")
    remap = torch.tensor([list(classes).index(n) for n in c["classes"]], dtype=torch.long)
    return c["images"], remap[c["labels"]], notes

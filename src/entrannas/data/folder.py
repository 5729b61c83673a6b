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

import hashlib
import json
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..fsutil import WriteError, atomic_path
from .base import DataError, DatasetInfo, TensorImageDataset
from .loader import derive_seed

__all__ = ["load_folder", "load_folder_eval", "FolderDataset", "FolderImageSet", "default_cache_dir",
           "decode_image"]

CACHE_FORMAT = "entrannas-folder-cache/1"
_GRAY = {"1", "L", "LA", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"}
_SPLIT_SEED = 0x7E57  # fixed: the held-out images must not change with run.seed


def default_cache_dir() -> Path:
    """``$ENTRANNAS_CACHE``, else ``$XDG_CACHE_HOME/entrannas/folders`` (``~/.cache/...``)."""
    if os.environ.get("ENTRANNAS_CACHE"):
        return Path(os.environ["ENTRANNAS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "entrannas" / "folders"


def decode_image(path, size: int, channels: int) -> np.ndarray:
    """uint8 ``[channels, size, size]``: the largest centred square, resized (antialiased
    bilinear). Raises whatever Pillow raises for a file it cannot read."""
    from PIL import Image

    with Image.open(path) as img:
        w, h = img.size
        if min(w, h) > size:  # JPEG draft decodes at a reduced scale that still covers `size`
            s = size / min(w, h)
            img.draft("L" if channels == 1 else "RGB", (math.ceil(w * s), math.ceil(h * s)))
        img = img.convert("L" if channels == 1 else "RGB")
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))
        arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


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


# ----------------------------------------------------------------------------- decoding

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
    # Worker processes only pay off beyond a few hundred files.
    n = workers if len(dataset) > 4 * batch_size else 0
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
    scan = _scan(data_dir, min_classes)
    root, notes = scan["root"], []
    key = _content_key(scan, image_size, channels)
    path = _cache_path(root, image_size, channels, cache_dir)
    c = _read_cache(path, key, decode=in_memory is True)
    if c is not None:
        mem = isinstance(c.get("images"), torch.Tensor) if in_memory == "auto" else bool(in_memory)
        _check(root, c, strict)
        notes.append(f"data: {len(c['files'])} images of {root} from the cache {path}")
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
        notes.append(f"data: decoded {len(c['files'])} images of {root} into the cache {path}")
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
                device=None, seed: int = 0):
    """``(train, test)`` of an image folder: :class:`FolderDataset` pairs in memory, or
    :class:`FolderImageSet` pairs when streaming. ``train.notes`` holds what to log;
    ``train.meta`` the record of the split and classes. ``image_size=None``: the most common
    short side; ``channels=None``: 1 if every image is grayscale, else 3. ``seed`` is unused
    (the held-out split is fixed per folder) and kept for the registry's uniform call."""
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

"""Readers for the in-memory datasets: Fashion-MNIST (IDX), CIFAR-10/100 (python pickle
batches) and seeded synthetic data. Each returns ``(train, test)`` :class:`TensorImageDataset`
pairs of uint8 ``[N, C, H, W]`` images and int64 labels.
"""
from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
import warnings
from pathlib import Path

import numpy as np
import torch

from .base import DataError, DatasetInfo, TensorImageDataset, default_data_dir, download_file, md5_bytes

__all__ = ["load_fashion_mnist", "load_cifar", "load_synthetic", "safe_unpickle", "FASHION_MNIST_SYSTEM_DIR"]

# ----------------------------------------------------------------------------- Fashion-MNIST

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian dataset-fashion-mnist
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_FMNIST_ALL = [f for pair in _FMNIST_FILES.values() for f in pair]
_FMNIST_INFO = DatasetInfo(
    "fashion-mnist", 10, 1, (28, 28), (0.2860,), (0.3530,),
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
)
_IDX_IMAGES, _IDX_LABELS = 0x00000803, 0x00000801  # IDX magic: ubyte data, 3 resp. 1 dims


def _find_idx(folder: Path, name: str) -> Path | None:
    # Accept the files gzipped (as distributed) or already gunzipped by the user.
    for candidate in (folder / name, folder / name[: -len(".gz")]):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e} (re-download or re-install the file)") from e
    header = 4 + 4 * ndim
    if len(raw) < header or struct.unpack(">I", raw[:4])[0] != magic:
        raise DataError(f"{path} is not an IDX file of the expected kind (bad magic number)")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    if len(raw) - header != int(np.prod(dims)):
        raise DataError(f"{path} is truncated or padded: header says {dims}, body has {len(raw) - header} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def load_fashion_mnist(data_dir=None, download: bool = True):
    """Fashion-MNIST from ``data_dir`` (or ``data_dir/fashion-mnist``); without ``data_dir``
    from the Debian package dir, then the user cache. Downloads only when the files are
    absent and ``download`` is true."""
    if data_dir is not None:
        candidates = [Path(data_dir), Path(data_dir) / "fashion-mnist"]
    else:
        candidates = [FASHION_MNIST_SYSTEM_DIR, default_data_dir() / "fashion-mnist"]
    folder = next((c for c in candidates if all(_find_idx(c, f) for f in _FMNIST_ALL)), None)
    where = ", ".join(str(c) for c in candidates)
    hint = (
        f"Fashion-MNIST not found in {where}: install it with `apt-get install dataset-fashion-mnist` "
        f"or pass --data-dir DIR holding {', '.join(_FMNIST_ALL)}"
    )
    if folder is None:
        if not download:
            raise DataError(hint)
        folder = candidates[0] if data_dir is not None else candidates[1]
        try:
            for name in _FMNIST_ALL:
                if _find_idx(folder, name) is None:
                    download_file(FASHION_MNIST_URL + name, folder / name)
        except OSError as e:
            raise DataError(f"{hint} (download failed: {e})") from e
    splits = []
    for split in ("train", "test"):
        img_name, lab_name = _FMNIST_FILES[split]
        images = _read_idx(_find_idx(folder, img_name), _IDX_IMAGES, 3)
        labels = _read_idx(_find_idx(folder, lab_name), _IDX_LABELS, 1)
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"{folder}: {img_name} has {images.shape[0]} images but {lab_name} {labels.shape[0]} labels")
        if images.shape[1:] != (28, 28) or labels.max(initial=0) > 9:
            raise DataError(f"{folder}: {img_name} is not Fashion-MNIST (images {images.shape[1:]}, max label {labels.max()})")
        splits.append(TensorImageDataset(
            torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)), _FMNIST_INFO))
    return splits[0], splits[1]


# ----------------------------------------------------------------------------- safe unpickling

def _numpy_allowlist() -> dict:
    # numpy 2 moved numpy.core to numpy._core; files pickled by either version name their own
    # module, so both spellings map to whichever functions this numpy has.
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        # protocol-5 pickles of arrays use _frombuffer; it only builds an array from bytes
        allowed[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, 'latin1'); allow
    # exactly that (a re-pickled CIFAR file), never another codec.
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


def _latin1_encode(text, encoding="utf-8"):
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles dicts/lists/bytes/ints and numpy arrays, nothing else: a downloaded or
    user-supplied pickle must never be able to call arbitrary functions (os.system, ...)."""

    _allowed: dict | None = None

    def find_class(self, module, name):
        if _RestrictedUnpickler._allowed is None:
            _RestrictedUnpickler._allowed = _numpy_allowlist()
        obj = _RestrictedUnpickler._allowed.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return obj


def safe_unpickle(data: bytes, source: str = "<bytes>"):
    """Unpickle ``data`` (with ``encoding='bytes'``, as the CIFAR python-2 files need)
    allowing only numpy array reconstruction. Raises :class:`DataError` otherwise."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # any parse failure means a bad file; report it the same way
        raise DataError(f"{source} is not a valid CIFAR pickle ({type(e).__name__}: {e})") from e


# ----------------------------------------------------------------------------- CIFAR

_TORONTO = "https://www.cs.toronto.edu/~kriz/"
_CIFAR = {
    "cifar10": dict(
        title="CIFAR-10", folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz",
        train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"], label_key=b"labels",
        meta=("batches.meta", b"label_names"), num_classes=10, count=10000,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        # md5 of the canonical files; checked only on files that have the canonical image
        # count, so small generated test files in the same format still load.
        md5={"data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
             "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
             "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e"},
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    ),
    "cifar100": dict(
        title="CIFAR-100", folder="cifar-100-python", archive="cifar-100-python.tar.gz",
        train=["train"], test=["test"], label_key=b"fine_labels",
        meta=("meta", b"fine_label_names"), num_classes=100, count=None,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
        md5={"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfad6b2a5b3e"},
        classes=None,
    ),
}
_CIFAR100_COUNTS = {"train": 50000, "test": 10000}


def _cifar_source(spec: dict, root: Path):
    """('dir', path) or ('archive', path) for where the batches are, or None."""
    names = spec["train"] + spec["test"]
    if root.is_file() and root.name.endswith((".tar.gz", ".tgz", ".tar")):
        return "archive", root
    for folder in (root / spec["folder"], root):
        if all((folder / n).is_file() for n in names):
            return "dir", folder
    if (root / spec["archive"]).is_file():
        return "archive", root / spec["archive"]
    return None


def _read_archive(path: Path, wanted: set[str]) -> dict[str, bytes]:
    # Read members straight from the archive: one sequential pass, nothing written to disk,
    # so there is no path-traversal risk from hostile member names.
    out = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted and base not in out:
                    out[base] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot read archive {path}: {e} (delete it and download it again)") from e
    return out


def _parse_batch(spec: dict, name: str, raw: bytes, source: str):
    d = safe_unpickle(raw, source)
    if not isinstance(d, dict) or b"data" not in d or spec["label_key"] not in d:
        raise DataError(f"{source} lacks the b'data'/{spec['label_key']!r} keys of a {spec['title']} batch")
    data = d[b"data"]
    try:
        labels = np.asarray(d[spec["label_key"]], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{source}: labels are not a list of integers ({e})") from e
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{source}: b'data' must be a uint8 N x 3072 array")
    if labels.shape != (data.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) >= spec["num_classes"]:
        raise DataError(f"{source}: labels do not match the images or fall outside 0..{spec['num_classes'] - 1}")
    canonical_count = spec["count"] or _CIFAR100_COUNTS.get(name)
    if name in spec["md5"] and data.shape[0] == canonical_count and md5_bytes(raw) != spec["md5"][name]:
        # Warn rather than fail: a re-pickled copy of the same data differs byte-wise.
        warnings.warn(f"{source}: md5 differs from the canonical {spec['title']} file; the data may be corrupt")
    # Row format: 1024 red, 1024 green, 1024 blue values, each a row-major 32x32 plane.
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar(name: str = "cifar10", data_dir=None, download: bool = True):
    """CIFAR-10 (``name='cifar10'``) or CIFAR-100 (fine labels) from ``data_dir``: the dir
    holding ``cifar-10-batches-py/`` (or that dir itself), or the ``.tar.gz`` archive in it.
    Downloads the archive from the Toronto address when missing and ``download`` is true."""
    spec = _CIFAR[name]
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    url = _TORONTO + spec["archive"]
    names = spec["train"] + spec["test"]
    hint = (f"put {spec['folder']}/ ({', '.join(names)}) from {url} in {root}, "
            f"or pass --data-dir DIR that holds it")
    source = _cifar_source(spec, root)
    if source is None:
        if not download:
            raise DataError(f"{spec['title']} not found in {root} and downloading is off: {hint}")
        target = (root.parent if root.is_file() else root) / spec["archive"]
        try:
            download_file(url, target, timeout=60.0)
        except OSError as e:
            raise DataError(f"{spec['title']} not found in {root} and no network to download it ({e}): {hint}") from e
        source = ("archive", target)
    kind, path = source
    meta_name, names_key = spec["meta"]
    if kind == "dir":
        raw = {n: (path / n).read_bytes() for n in names}
        if (path / meta_name).is_file():
            raw[meta_name] = (path / meta_name).read_bytes()
    else:
        raw = _read_archive(path, set(names) | {meta_name})
        missing = [n for n in names if n not in raw]
        if missing:
            raise DataError(f"archive {path} lacks {', '.join(missing)}: {hint}")
    classes = spec["classes"]
    if meta_name in raw:
        meta = safe_unpickle(raw[meta_name], f"{path}/{meta_name}")
        if isinstance(meta, dict) and isinstance(meta.get(names_key), list):
            classes = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in meta[names_key])
    info = DatasetInfo(name, spec["num_classes"], 3, (32, 32), spec["mean"], spec["std"], classes)
    splits = []
    for part in (spec["train"], spec["test"]):
        arrays = [_parse_batch(spec, n, raw[n], f"{path}/{n}") for n in part]
        images = np.concatenate([a for a, _ in arrays]) if len(arrays) > 1 else arrays[0][0]
        labels = np.concatenate([b for _, b in arrays]) if len(arrays) > 1 else arrays[0][1]
        splits.append(TensorImageDataset(
            torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels), info))
    return splits[0], splits[1]


# ----------------------------------------------------------------------------- synthetic

def load_synthetic(shape=(3, 32, 32), num_classes: int = 10, train_size: int = 1024,
                   test_size: int = 256, seed: int = 0):
    """Uniform random uint8 images and labels, seeded: for benchmarks and smoke tests."""
    c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    # Uniform [0, 255] pixels: mean 127.5/255, std ~ 0.2887 per channel.
    info = DatasetInfo("synthetic", num_classes, c, (h, w), (0.5,) * c, (0.2887,) * c)
    out = []
    for n in (train_size, test_size):
        images = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, num_classes, (n,), generator=g)
        out.append(TensorImageDataset(images, labels, info))
    return out[0], out[1]

"""Dataset names and the single entry point ``load_dataset``."""
from __future__ import annotations

from .base import DataError
from .folder import load_folder
from .imagenet import load_imagenet
from .readers import load_cifar, load_fashion_mnist, load_synthetic

__all__ = ["DATASETS", "load_dataset", "canonical_name"]

DATASETS = ["fashion-mnist", "cifar10", "cifar100", "imagenet", "folder", "synthetic"]

_ALIASES = {"fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar10": "cifar10",
            "cifar100": "cifar100", "imagenet": "imagenet", "folder": "folder", "synthetic": "synthetic"}


def canonical_name(name: str) -> str:
    """'CIFAR-10', 'cifar_10', 'fashion_mnist', ... -> the name in :data:`DATASETS`."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in _ALIASES:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return _ALIASES[key]


def load_dataset(name: str, data_dir=None, download: bool = True, **kwargs):
    """``(train, test)`` for dataset ``name``.

    In-memory datasets (fashion-mnist, cifar10, cifar100, synthetic) come back as
    :class:`TensorImageDataset` (uint8 ``[N, C, H, W]`` + int64 labels + ``.info``);
    imagenet as :class:`ImageFolderDataset` (train, val); folder (your own class folders) as
    :class:`FolderDataset`, or :class:`FolderImageSet` when too large for memory (kwargs: see
    :func:`load_folder`). ``download`` allows fetching
    Fashion-MNIST/CIFAR from their official addresses when the files are missing.
    ``kwargs`` go to the reader (synthetic: shape, num_classes, train_size, test_size, seed;
    imagenet: size, resize). Raises :class:`DataError` with a fix hint when data is missing.
    """
    name = canonical_name(name)
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir, download=download, **kwargs)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, data_dir, download=download, **kwargs)
    if name == "imagenet":
        return load_imagenet(data_dir, **kwargs)
    if name == "folder":
        return load_folder(data_dir, **kwargs)
    return load_synthetic(**kwargs)

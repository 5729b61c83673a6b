"""Data layer: dataset readers, seeded splits, batched on-device augmentation, and the
in-memory :class:`BatchLoader` used by the search and training loops."""
from .augment import Augment, cutout, normalize, random_crop, random_flip, train_augment
from .base import DataError, DatasetInfo, TensorImageDataset, default_data_dir
from .folder import FolderDataset, FolderImageSet, load_folder, load_folder_eval
from .imagenet import (IMAGENET_MEAN, IMAGENET_STD, ImageFolderDataset, imagenet_loader,
                       imagenet_search_subset, load_imagenet)
from .loader import BatchLoader, derive_seed, split_indices
from .readers import load_cifar, load_fashion_mnist, load_synthetic, safe_unpickle
from .registry import DATASETS, canonical_name, load_dataset

__all__ = [
    "DATASETS", "load_dataset", "canonical_name",
    "DataError", "DatasetInfo", "TensorImageDataset", "default_data_dir",
    "load_fashion_mnist", "load_cifar", "load_synthetic", "safe_unpickle",
    "FolderDataset", "FolderImageSet", "load_folder", "load_folder_eval",
    "ImageFolderDataset", "imagenet_search_subset", "imagenet_loader", "load_imagenet",
    "IMAGENET_MEAN", "IMAGENET_STD",
    "split_indices", "derive_seed", "BatchLoader",
    "Augment", "train_augment", "random_crop", "random_flip", "cutout", "normalize",
]

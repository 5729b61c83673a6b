"""Tests of the data layer: readers (real Fashion-MNIST, generated CIFAR/ImageNet files),
safe unpickling, batched augmentation, the seeded split and the BatchLoader."""
from __future__ import annotations

import gzip
import os
import pickle
import struct
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from entrannas import data as D
from entrannas.data import DataError

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


# ----------------------------------------------------------------------------- Fashion-MNIST

@pytest.fixture(scope="module")
def fmnist():
    if not (FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist is not installed")
    return D.load_dataset("fashion-mnist", download=False)


def test_fashion_mnist_real_files(fmnist):
    train, test = fmnist
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert train.labels.dtype == torch.int64
    assert int(train.labels.min()) == 0 and int(train.labels.max()) == 9
    assert int(test.labels.min()) == 0 and int(test.labels.max()) == 9
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    info = train.info
    assert (info.num_classes, info.channels, info.image_size) == (10, 1, (28, 28))
    # the fixed normalisation constants are the real train-set statistics
    x = train.images.float() / 255
    assert abs(x.mean().item() - info.mean[0]) < 1e-3 and abs(x.std().item() - info.std[0]) < 1e-3


def _write_idx(path: Path, arr: np.ndarray, magic: int, compress: bool = True):
    raw = struct.pack(">I", magic) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.with_suffix("").write_bytes(raw)  # drop .gz: the gunzipped layout


def _make_fmnist(folder: Path, n_train=12, n_test=6, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz",
                   rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 0x803, compress)
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8), 0x801, compress)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_data_dir(tmp_path, compress):
    _make_fmnist(tmp_path, compress=compress)
    train, test = D.load_fashion_mnist(tmp_path, download=False)
    assert train.images.shape == (12, 1, 28, 28) and test.labels.tolist() == [0, 1, 2, 3, 4, 5]


def test_image_size_resizes_in_memory_sets_once_on_load(tmp_path):
    # data.image_size=14 on 28x28 Fashion-MNIST: each pixel is the rounded mean of its 2x2
    # block (area), the info says 14x14, and 32 upsamples; a set already that size is kept.
    from entrannas.config import load_config
    from entrannas.loop import load_datasets
    _make_fmnist(tmp_path)
    base = ["data.dataset=fashion-mnist", f"data.data_dir={tmp_path}", "data.download=false"]
    plain, _ = load_datasets(load_config(None, base))
    small, small_test = load_datasets(load_config(None, base + ["data.image_size=14"]))
    blocks = plain.images.float().reshape(12, 1, 14, 2, 14, 2).mean((3, 5))
    assert torch.equal(small.images, blocks.round().to(torch.uint8))
    assert small.info.image_size == (14, 14) and small_test.images.shape == (6, 1, 14, 14)
    assert torch.equal(small.labels, plain.labels)
    big, _ = load_datasets(load_config(None, base + ["data.image_size=32"]))
    assert big.images.shape == (12, 1, 32, 32) and big.info.image_size == (32, 32)
    assert plain.resized(28) is plain


def test_fashion_mnist_bad_magic_and_missing(tmp_path, monkeypatch):
    _make_fmnist(tmp_path)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(12, np.uint8), 0x803)  # wrong magic
    with pytest.raises(DataError, match="magic"):
        D.load_fashion_mnist(tmp_path, download=False)
    monkeypatch.setattr(D.readers, "download_file", _no_network)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        D.load_fashion_mnist(tmp_path / "nothing", download=False)
    with pytest.raises(DataError, match="download failed"):
        D.load_fashion_mnist(tmp_path / "nothing", download=True)
    assert not (tmp_path / "nothing").exists() or not any((tmp_path / "nothing").iterdir())


def _no_network(url, dest, timeout=30.0):
    raise OSError(f"no network in tests ({url})")


# ----------------------------------------------------------------------------- CIFAR

def _pattern(n: int, offset: int) -> np.ndarray:
    """[n, 3, 32, 32] pixels with value (k*7 + c*50 + y*3 + x) mod 256 for global image k."""
    k = np.arange(offset, offset + n)[:, None, None, None]
    c = np.arange(3)[None, :, None, None]
    y = np.arange(32)[None, None, :, None]
    x = np.arange(32)[None, None, None, :]
    return ((k * 7 + c * 50 + y * 3 + x) % 256).astype(np.uint8)


def _batch(n, offset, label_key, num_classes):
    # Canonical row layout: 1024 R, then 1024 G, then 1024 B, each row-major 32x32.
    rows = np.concatenate([_pattern(n, offset)[:, c].reshape(n, 1024) for c in range(3)], axis=1)
    labels = [int(v) for v in (np.arange(offset, offset + n) % num_classes)]
    d = {b"batch_label": b"fake", b"data": rows, label_key: labels,
         b"filenames": [b"img%d.png" % i for i in range(n)]}
    if label_key == b"fine_labels":
        d[b"coarse_labels"] = [v % 20 for v in labels]
    return pickle.dumps(d, protocol=2)  # the canonical files are python-2 protocol-2 pickles


def make_cifar(root: Path, name="cifar10", per_batch=20) -> Path:
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        files = {f"data_batch_{i}": (per_batch, (i - 1) * per_batch) for i in range(1, 6)}
        files["test_batch"] = (per_batch, 10_000)
        key, ncls, meta = b"labels", 10, ("batches.meta", {b"label_names": [b"c%d" % i for i in range(10)]})
    else:
        folder = root / "cifar-100-python"
        files = {"train": (5 * per_batch, 0), "test": (per_batch, 10_000)}
        key, ncls, meta = b"fine_labels", 100, ("meta", {b"fine_label_names": [b"f%d" % i for i in range(100)]})
    folder.mkdir(parents=True)
    for fname, (n, off) in files.items():
        (folder / fname).write_bytes(_batch(n, off, key, ncls))
    (folder / meta[0]).write_bytes(pickle.dumps(meta[1], protocol=2))
    return folder


def _check_cifar(train, test, ncls, n_train=100, n_test=20):
    assert train.images.shape == (n_train, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (n_test, 3, 32, 32)
    assert torch.equal(train.images, torch.from_numpy(_pattern(n_train, 0)))
    assert torch.equal(test.images, torch.from_numpy(_pattern(n_test, 10_000)))
    # spot check the layout: image 23, green channel, row 5, column 17
    assert int(train.images[23, 1, 5, 17]) == (23 * 7 + 50 + 15 + 17) % 256
    assert train.labels.tolist() == [i % ncls for i in range(n_train)]
    assert train.info.num_classes == ncls and len(train.info.classes) == ncls


def test_cifar10_from_dir_and_folder(tmp_path):
    folder = make_cifar(tmp_path, "cifar10")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # small files must not trigger the md5 warning
        train, test = D.load_dataset("cifar10", tmp_path, download=False)
    _check_cifar(train, test, 10)
    assert train.info.classes[3] == "c3"
    train2, _ = D.load_dataset("CIFAR-10", folder, download=False)  # the batches dir itself
    assert torch.equal(train2.images, train.images)


def test_cifar_from_archive(tmp_path):
    src = tmp_path / "src"
    make_cifar(src, "cifar10")
    dst = tmp_path / "dst"
    dst.mkdir()
    with tarfile.open(dst / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    train, test = D.load_cifar("cifar10", dst, download=False)
    _check_cifar(train, test, 10)
    assert sorted(os.listdir(dst)) == ["cifar-10-python.tar.gz"]  # read in place, nothing extracted


def test_cifar100(tmp_path):
    make_cifar(tmp_path, "cifar100")
    train, test = D.load_dataset("cifar100", tmp_path, download=False)
    _check_cifar(train, test, 100)
    assert train.info.classes[99] == "f99"


def test_cifar_md5_warns_on_canonical_size(tmp_path, monkeypatch):
    make_cifar(tmp_path, "cifar10")
    # pretend 20 images is the canonical batch size: now the files are md5-checked (and differ)
    monkeypatch.setitem(D.readers._CIFAR["cifar10"], "count", 20)
    with pytest.warns(UserWarning, match="md5 differs"):
        train, _ = D.load_cifar("cifar10", tmp_path, download=False)
    assert len(train) == 100  # a warning, not a failure


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused(tmp_path):
    folder = make_cifar(tmp_path, "cifar10")
    marker = tmp_path / "pwned"
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match="refusing"):
        D.load_cifar("cifar10", tmp_path, download=False)
    with pytest.raises(DataError):
        D.safe_unpickle(pickle.dumps(_Evil(marker)))
    assert not marker.exists()
    # numpy arrays in any pickle protocol are fine
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for proto in (2, 4, 5):
        assert np.array_equal(D.safe_unpickle(pickle.dumps({b"a": arr}, protocol=proto))[b"a"], arr)


def test_cifar_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(D.readers, "download_file", _no_network)
    with pytest.raises(DataError) as e:
        D.load_dataset("cifar10", tmp_path, download=False)
    msg = str(e.value)
    assert "cifar-10-batches-py" in msg and "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    assert "\n" not in msg
    with pytest.raises(DataError, match="no network"):
        D.load_dataset("cifar100", tmp_path, download=True)


def test_registry_and_synthetic():
    assert D.DATASETS == ["fashion-mnist", "cifar10", "cifar100", "imagenet", "folder", "synthetic"]
    a, _ = D.load_dataset("synthetic", shape=(3, 8, 8), num_classes=5, train_size=50, test_size=10, seed=3)
    b, t = D.load_dataset("synthetic", shape=(3, 8, 8), num_classes=5, train_size=50, test_size=10, seed=3)
    assert a.images.shape == (50, 3, 8, 8) and t.images.shape == (10, 3, 8, 8)
    assert torch.equal(a.images, b.images) and int(a.labels.max()) < 5
    with pytest.raises(DataError, match="unknown dataset"):
        D.load_dataset("mnist-ish")
    with pytest.raises(DataError, match="--data-dir"):
        D.load_dataset("imagenet", None)


# ----------------------------------------------------------------------------- augmentation

def _batch_u8(n=16, c=3, h=12, w=10, seed=0):
    return torch.randint(0, 256, (n, c, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_random_crop_is_translation(dtype):
    x = _batch_u8().to(dtype)
    pad = 3
    offsets = torch.randint(0, 2 * pad + 1, (16, 2), generator=torch.Generator().manual_seed(1))
    out = D.random_crop(x, pad, offsets=offsets)
    assert out.shape == x.shape and out.dtype == dtype
    padded = F.pad(x, (pad,) * 4)
    for i in range(16):  # reference: slice each padded image at its offset
        dy, dx = offsets[i].tolist()
        assert torch.equal(out[i], padded[i, :, dy:dy + 12, dx:dx + 10])
    # drawn offsets: deterministic, and cover the range
    a = D.random_crop(x, pad, torch.Generator().manual_seed(5))
    b = D.random_crop(x, pad, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, D.random_crop(x, pad, torch.Generator().manual_seed(6)))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_flip_exactly_masked(dtype):
    x = _batch_u8().to(dtype)
    mask = torch.arange(16) % 3 == 0
    out = D.random_flip(x, mask=mask)
    assert torch.equal(out[mask], x[mask].flip(3)) and torch.equal(out[~mask], x[~mask])
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    assert torch.equal(D.random_flip(x, g1), D.random_flip(x, g2))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_cutout_square_clipped(dtype):
    x = (_batch_u8(n=4, h=16, w=16) | 1).to(dtype)  # no zero pixels before cutout
    centers = torch.tensor([[8, 8], [0, 0], [15, 3], [7, 15]])
    out = D.cutout(x, 6, centers=centers)
    zero = (out == 0).all(1)  # [n, h, w]: zeroed in every channel
    expect = [(range(5, 11), range(5, 11)), (range(0, 3), range(0, 3)),
              (range(12, 16), range(0, 6)), (range(4, 10), range(12, 16))]
    for i, (ys, xs) in enumerate(expect):
        ref = torch.zeros(16, 16, dtype=torch.bool)
        ref[ys.start:ys.stop, xs.start:xs.stop] = True
        assert torch.equal(zero[i], ref), i
    assert torch.equal(out[~zero.unsqueeze(1).expand_as(out)], x[~zero.unsqueeze(1).expand_as(x)])
    assert int((D.cutout(x, 6, torch.Generator().manual_seed(0)) == 0).all(1).sum(dim=(1, 2)).max()) <= 36


def test_augment_composition_and_normalise():
    x = _batch_u8(n=32, h=8, w=8)
    aug = D.Augment(padding=2, flip=True, cutout=4)
    g = torch.Generator().manual_seed(9)
    fused = aug(x, torch.Generator().manual_seed(9))
    seq = D.cutout(D.random_flip(D.random_crop(x, 2, g), g), 4, g)
    assert fused.dtype == torch.uint8 and torch.equal(fused, seq)
    assert torch.equal(aug(x, torch.Generator().manual_seed(9)), fused)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    norm = D.Augment(padding=2, flip=True, cutout=4, mean=mean, std=std)(x, torch.Generator().manual_seed(9))
    # replay the draws in their documented order: crop offsets, flips, cutout centres
    g = torch.Generator().manual_seed(9)
    offsets = torch.randint(0, 5, (32, 2), generator=g)
    flips = torch.rand(32, generator=g) < 0.5
    centers = torch.stack([torch.randint(0, 8, (32,), generator=g), torch.randint(0, 8, (32,), generator=g)], 1)
    ref = D.normalize(D.random_flip(D.random_crop(x, 2, offsets=offsets), mask=flips), mean, std)
    hole = D.cutout(torch.ones(32, 1, 8, 8), 4, centers=centers) == 0
    assert norm.dtype == torch.float32 and hole.any()
    # cutout after normalisation (DARTS order): the hole is 0, i.e. the mean colour
    assert torch.allclose(norm, torch.where(hole, torch.zeros(()), ref), atol=1e-6)
    expected = (x[0, 1].float() / 255 - 0.5) / 0.25
    assert torch.allclose(D.normalize(x, mean, std)[0, 1], expected, atol=1e-6)
    assert torch.allclose(D.normalize(x.float() / 255, mean, std), D.normalize(x, mean, std), atol=1e-6)


def test_color_jitter_is_torchvisions_four_adjustments():
    """brightness scales, contrast blends with the image's mean grey, saturation with its
    greyscale, hue rotates through HSV (checked against colorsys pixel by pixel)."""
    import colorsys
    from entrannas.data.augment import _draw_jitter, color_jitter
    x = _batch_u8(n=4, h=5, w=6)
    f = lambda b=1.0, c=1.0, s=1.0, h=0.0: torch.tensor([[b, c, s, h]] * 4)  # noqa: E731
    assert torch.equal(color_jitter(x, f()), x)  # neutral factors: the image itself
    y = x.float() / 255
    assert torch.allclose(color_jitter(y, f(b=1.3)), (y * 1.3).clamp(0, 1))
    gray = (y * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert torch.allclose(color_jitter(y, f(s=0.0)), gray.expand_as(y), atol=1e-6)
    assert torch.allclose(color_jitter(y, f(c=0.0)), gray.mean((1, 2, 3), keepdim=True).expand_as(y), atol=1e-6)
    shifted = color_jitter(y, f(h=0.13))
    for n, i, j in [(0, 0, 0), (1, 2, 3), (2, 4, 5), (3, 1, 4)]:
        hh, ss, vv = colorsys.rgb_to_hsv(*y[n, :, i, j].tolist())
        assert shifted[n, :, i, j].tolist() == pytest.approx(colorsys.hsv_to_rgb((hh + 0.13) % 1, ss, vv), abs=1e-5)
    one = x[:, :1]  # a greyscale image: saturation and hue do not apply
    assert torch.equal(color_jitter(one, f(s=0.0, h=0.3)), one)
    draws = _draw_jitter(1000, (0.4, 0.4, 0.4, 0.2), torch.Generator().manual_seed(0))
    assert draws[:, :3].min() >= 0.6 and draws[:, :3].max() <= 1.4
    assert draws[:, 3].min() >= -0.2 and draws[:, 3].max() <= 0.2 and draws.std(0).min() > 0.1


def test_augment_jitters_after_crop_and_flip_with_draws_last():
    """A run without jitter keeps its crops and flips; with it, the factors come after them."""
    from entrannas.data.augment import _draw_jitter, color_jitter
    x = _batch_u8(n=8, h=8, w=8)
    plain = D.Augment(padding=2, flip=True)(x, torch.Generator().manual_seed(3))
    jit = (0.4, 0.4, 0.4, 0.2)
    jittered = D.Augment(padding=2, flip=True, color_jitter=jit)(x, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    torch.randint(0, 5, (8, 2), generator=g), torch.rand(8, generator=g)  # the crop and flip draws
    assert torch.equal(jittered, color_jitter(plain, _draw_jitter(8, jit, g)))
    assert not torch.equal(jittered, plain) and jittered.dtype == torch.uint8


# ----------------------------------------------------------------------------- split + loader

def test_split_indices():
    w, a = D.split_indices(1000, 0.5, seed=4)
    assert len(w) == len(a) == 500
    assert torch.equal(torch.cat([w, a]).sort().values, torch.arange(1000))
    w2, a2 = D.split_indices(1000, 0.5, seed=4)
    assert torch.equal(w, w2) and torch.equal(a, a2)
    assert not torch.equal(w, D.split_indices(1000, 0.5, seed=5)[0])
    wl, al = D.split_indices(1000, 0.5, seed=4, limit=30)
    assert len(wl) == len(al) == 30 and set(wl.tolist()) <= set(w.tolist()) and set(al.tolist()) <= set(a.tolist())


def _loader(n=103, **kw):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    kw.setdefault("batch_size", 10)
    return D.BatchLoader(images, torch.arange(n), **kw)


def _epoch(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_covers_and_is_deterministic():
    idx = torch.arange(0, 103, 2)  # a subset of indices
    ld = _loader(indices=idx, augment=D.Augment(padding=1, flip=True, cutout=2), seed=7)
    assert len(ld) == 6
    e0 = _epoch(ld)
    seen = torch.cat([y for _, y in e0])
    assert sorted(seen.tolist()) == idx.tolist() and e0[0][0].dtype == torch.float32
    assert ld.epoch == 1  # a full pass advances the epoch
    e1 = _epoch(ld)
    assert not torch.equal(e0[0][1], e1[0][1])  # new permutation
    ld.set_epoch(0)
    again = _epoch(ld)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(e0, again))
    twin = _loader(indices=idx, augment=D.Augment(padding=1, flip=True, cutout=2), seed=7)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(e0, _epoch(twin)))
    assert len(_loader(drop_last=True)) == 10 and len(_loader()) == 11
    assert _loader(shuffle=False).__iter__().__next__()[1].tolist() == list(range(10))


def test_loader_state_dict_resume_mid_epoch():
    mk = lambda: _loader(augment=D.Augment(padding=1, flip=True), seed=3)  # noqa: E731
    ref = mk()
    _epoch(ref)
    ref_e1 = _epoch(ref)  # epoch 1
    run = mk()
    _epoch(run)
    it = iter(run)
    for _ in range(4):
        next(it)
    state = run.state_dict()
    assert state == {"seed": 3, "epoch": 1, "batch": 4}
    resumed = mk()
    resumed.load_state_dict(state)
    rest = _epoch(resumed)
    assert len(rest) == len(ref_e1) - 4
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(rest, ref_e1[4:]))
    assert resumed.state_dict() == {"seed": 3, "epoch": 2, "batch": 0}


def test_loader_ranks_partition():
    parts = [torch.cat([y for _, y in _loader(n=100, rank=r, world_size=3, seed=1)]) for r in range(3)]
    assert all(len(p) == 33 for p in parts)
    assert len(set(torch.cat(parts).tolist())) == 99


# ----------------------------------------------------------------------------- ImageNet folders

@pytest.fixture
def image_tree(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    counts = {"n01": 20, "n02": 10, "n03": 5}
    for split in ("train", "val"):
        for wnid, n in counts.items():
            d = tmp_path / split / wnid
            d.mkdir(parents=True)
            for i in range(n if split == "train" else 2):
                arr = rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{wnid}_{i}.JPEG", quality=80)
    (tmp_path / "train" / "n01" / "notes.txt").write_text("not an image")
    return tmp_path, counts


def test_imagenet_subset_and_decoding(image_tree):
    root, counts = image_tree
    train, val = D.load_dataset("imagenet", root)
    assert len(train) == 35 and len(val) == 6 and train.classes == ["n01", "n02", "n03"]
    w, a = D.imagenet_search_subset(train, fraction=0.1, seed=0)
    assert not set(w) & set(a)
    per_class = lambda idx: np.bincount([train.targets[i] for i in idx], minlength=3).tolist()  # noqa: E731
    assert per_class(w) == per_class(a) == [2, 1, 1]
    w3, a3 = D.imagenet_search_subset(train, fraction=0.3, seed=0)
    assert per_class(w3) == [6, 3, 2] and not set(w3) & set(a3)
    assert (w, a) == D.imagenet_search_subset(train, fraction=0.1, seed=0)
    x, y = train[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.uint8 and y == 0
    small = D.ImageFolderDataset(root, "val", size=32, classes=train.classes)
    xv, yv = small[5]
    assert xv.shape == (3, 32, 32) and yv == 2
    loader = D.imagenet_loader(small, batch_size=4, num_workers=0, seed=1)
    xb, yb = next(iter(loader))
    assert xb.shape == (4, 3, 32, 32) and xb.dtype == torch.uint8
    assert D.normalize(xb, D.IMAGENET_MEAN, D.IMAGENET_STD).dtype == torch.float32


def test_imagenet_training_jitters_only_its_training_images(image_tree):
    """imagenet-eval jitters colours as DARTS' and PC-DARTS' ImageNet training do; the test
    images and the search presets are left alone."""
    from entrannas.config import load_config
    from entrannas.loop import build_loaders
    root, _ = image_tree
    cfg = load_config("imagenet-eval", [f"data.data_dir={root}", "data.workers=0", "data.image_size=32",
                                        "optim.batch_size=4"])
    assert cfg.data.color_jitter == [0.4, 0.4, 0.4, 0.2]
    loaders = build_loaders(cfg, torch.device("cpu"), search=False)
    assert loaders.train.augment.jitter == (0.4, 0.4, 0.4, 0.2) and loaders.val.augment is None
    x, _ = next(iter(loaders.train))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert load_config("imagenet-entrannas").data.color_jitter is None

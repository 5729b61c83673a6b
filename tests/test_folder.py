"""data.dataset=folder: your own class folders, decoded once into a cache, split, streamed when
too large, and every bad input refused with one line. Folders are generated per test."""
import json
import os
import time
from pathlib import Path

import pytest
import torch
from helpers import fails_with_one_line
from imagefolders import make_folder

from entrannas.config import load_config
from entrannas.data import DataError, FolderImageSet, folder as F, folder_cache as FC, load_folder
from entrannas.loop import build_loaders

TINY = ["data.dataset=folder", "data.image_size=null", "model.C=4", "model.layers=3", "optim.batch_size=8",
        "optim.epochs=1", "run.tensorboard=false", "run.plots=false", "run.log_every=1"]


def _load(root, tmp_path, **kw):
    return load_folder(root, cache_dir=tmp_path / "cache", workers=0, **kw)


def _tree(path: Path) -> dict:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*"))} if path.exists() else {}


def test_png_and_jpeg_rgb_and_gray_uneven_classes(tmp_path):
    root = make_folder(tmp_path / "rgb", classes=3, per_class=[5, 9, 3], fmt="png")
    make_folder(tmp_path / "jpg", classes=3, per_class=[5, 9, 3], fmt="jpg", seed=1)
    for p in (tmp_path / "jpg").rglob("*.jpg"):  # mix the formats within each class
        os.replace(p, root / p.relative_to(tmp_path / "jpg").with_name("j" + p.name))
    train, test = _load(root, tmp_path)
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (3, 32, 32)
    assert train.info.classes == ("class_0", "class_1", "class_2") and train.info.channels == 3
    # Stratified: every class keeps ~20% out (at least one), by class.
    assert torch.bincount(test.labels).tolist() == [2, 4, 1]
    assert torch.bincount(train.labels).tolist() == [8, 14, 5]
    # Mean and std are the training images' own.
    x = train.images.double() / 255
    assert train.info.mean[1] == pytest.approx(x[:, 1].mean().item(), abs=1e-5)
    assert train.info.std[2] == pytest.approx(x[:, 2].std(unbiased=False).item(), abs=1e-5)
    gray = make_folder(tmp_path / "gray", classes=2, per_class=4, gray=True, fmt="png")
    g_train, _ = _load(gray, tmp_path)
    assert g_train.info.channels == 1 and g_train.images.shape[1] == 1  # what the images are
    forced, _ = _load(root, tmp_path, channels=1)
    assert forced.images.shape[1] == 1
    rgb, _ = _load(gray, tmp_path, channels=3)
    assert rgb.images.shape[1] == 3 and torch.equal(rgb.images[:, 0], rgb.images[:, 2])


def test_split_layout_mixed_sizes_and_image_size(tmp_path):
    root = make_folder(tmp_path / "d", classes=2, per_class=6, size=[32, 48, 20], layout="split",
                       test_per_class=2)
    train, test = _load(root, tmp_path, image_size=24)
    assert (len(train), len(test)) == (12, 4) and train.images.shape[2:] == (24, 24)
    assert train.meta["layout"] == "train/test" and train.meta["test_files"][0].startswith("test/")
    assert any("3 image size(s)" in n and "resized to 24x24" in n for n in train.notes)
    auto, _ = _load(root, tmp_path)
    assert auto.info.image_size == (48, 48)  # a tie between 32, 48 and 20: the larger side
    (root / "test" / "class_9").mkdir()
    with pytest.raises(DataError, match="class_9.*training folder"):
        _load(root, tmp_path)


def test_test_split_depends_on_the_files_only(tmp_path):
    root = make_folder(tmp_path / "d", classes=3, per_class=[10, 7, 12])
    a = _load(root, tmp_path)[0].meta["test_files"]
    cfg = load_config("fmnist-quick", TINY + [f"data.data_dir={root}", f"data.cache_dir={tmp_path / 'c2'}",
                                               "run.seed=5"])
    b = build_loaders(cfg, torch.device("cpu"), search=True).meta["test_files"]
    assert a == b  # the same held-out images whatever run.seed
    make_folder(tmp_path / "more", classes=1, per_class=3, seed=9)
    for p in (tmp_path / "more" / "class_0").iterdir():
        os.replace(p, root / "class_0" / ("x" + p.name))
    c = _load(root, tmp_path)[0].meta["test_files"]
    assert [f for f in c if not f.startswith("class_0")] == [f for f in a if not f.startswith("class_0")]


def test_non_images_are_skipped_and_counted_or_refused(tmp_path):
    root = make_folder(tmp_path / "d", classes=2, per_class=5)
    (root / "class_0" / "notes.txt").write_text("not an image")
    png = root / "class_1" / "0001.png"
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])  # truncated: a valid header
    (root / ".DS_Store").write_bytes(b"\0\1")  # hidden files are not data
    train, test = _load(root, tmp_path)
    assert len(train) + len(test) == 9  # 10 images, one truncated
    note = next(n for n in train.notes if n.startswith("data: skipped"))
    assert "skipped 2 file(s)" in note and "data.strict=true" in note
    assert sorted(train.meta["skipped"]) == ["class_0/notes.txt", "class_1/0001.png"]
    with pytest.raises(DataError, match=r"class_0/notes.txt.*data.strict=false"):
        _load(root, tmp_path, strict=True)


def test_cache_is_reused_and_invalidated_by_a_changed_file(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d", classes=2, per_class=6)
    first, _ = _load(root, tmp_path)
    assert any("into the cache" in n for n in first.notes)
    cache = list((tmp_path / "cache").iterdir())
    assert len(cache) == 1 and cache[0].suffix == ".pt"

    def no_decoding(*a, **k):
        raise AssertionError("decoded although the cache is valid")
    monkeypatch.setattr(FC, "decode_image", no_decoding)
    t0 = time.perf_counter()
    again, _ = _load(root, tmp_path)
    assert time.perf_counter() - t0 < 5
    assert any("from the cache" in n for n in again.notes) and torch.equal(again.images, first.images)
    monkeypatch.undo()
    # Rewrite one image with other pixels: its size/mtime change, the cache is rebuilt in place.
    target = root / "class_0" / "0000.png"
    old = F.decode_image(target, 32, 3).tobytes()
    make_folder(tmp_path / "other", classes=1, per_class=1, seed=7)
    os.replace(tmp_path / "other" / "class_0" / "0000.png", target)
    changed, test = _load(root, tmp_path)
    assert any("into the cache" in n for n in changed.notes)
    assert list((tmp_path / "cache").iterdir()) == cache  # replaced, not added
    pixels = {im.numpy().tobytes() for im in torch.cat([changed.images, test.images])}
    assert F.decode_image(target, 32, 3).tobytes() in pixels and old not in pixels
    # A damaged cache file is rebuilt, never trusted.
    cache[0].write_bytes(b"garbage")
    rebuilt, _ = _load(root, tmp_path)
    assert any("into the cache" in n for n in rebuilt.notes) and torch.equal(rebuilt.images, changed.images)


def test_streaming_gives_the_batches_of_the_in_memory_path(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d", classes=2, per_class=12)
    base = TINY + [f"data.data_dir={root}", f"data.cache_dir={tmp_path / 'cache'}", "data.workers=0"]
    mem = build_loaders(load_config("fmnist-quick", base), torch.device("cpu"), search=True)
    monkeypatch.setattr(F, "_fits", lambda nbytes, device: False)
    stream = build_loaders(load_config("fmnist-quick", base + [f"data.cache_dir={tmp_path / 'c2'}"]),
                           torch.device("cpu"), search=True)
    assert any("do not fit in memory: streaming" in n for n in stream.notes)
    assert isinstance(stream.train.dataset, FolderImageSet)
    for a, b in ((mem.train, stream.train), (mem.arch, stream.arch), (mem.val, stream.val)):
        a.set_epoch(1), b.set_epoch(1)
        (xa, ya), (xb, yb) = next(iter(a)), next(iter(b))
        assert torch.equal(ya, yb) and torch.allclose(xa, xb, atol=1e-6)


@pytest.mark.parametrize("case", ["missing", "empty", "no-images", "one-class", "strict", "test-only",
                                  "no-data-dir"])
def test_bad_folders_fail_with_one_line_and_write_nothing(capsys, tmp_path, case):
    root = tmp_path / "data"
    if case != "missing":
        root.mkdir()
    needle = str(root)
    if case == "no-images":
        make_folder(root, classes=2, per_class=3)
        (root / "class_2").mkdir()
        needle = str(root / "class_2")
    elif case == "one-class":
        make_folder(root, classes=1, per_class=3)
        needle = "only one class folder (class_0)"
    elif case == "strict":
        make_folder(root, classes=2, per_class=3)
        (root / "class_1" / "bad.png").write_bytes(b"\x89PNG not really")
        needle = str(root / "class_1" / "bad.png")
    elif case == "test-only":
        make_folder(root / "test", classes=2, per_class=2)
        needle = "no train/"
    before = _tree(root)
    argv = ["search", "-c", "fmnist-quick", "-q", "--out", str(tmp_path / "run"),
            "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "data.strict=true"]
    if case != "no-data-dir":
        argv += ["--set", f"data.data_dir={root}"]
    else:
        needle = "data.data_dir=DIR"
    for s in TINY:
        argv += ["--set", s]
    fails_with_one_line(capsys, argv, needle)
    assert _tree(root) == before and not (tmp_path / "cache").exists()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_search_and_train_on_a_folder_keep_classes_and_split(tmp_path):
    from entrannas.search import run_search
    from entrannas.train import run_training
    root = make_folder(tmp_path / "d", classes=3, per_class=[14, 10, 12], fmt="jpg")
    over = TINY + [f"data.data_dir={root}", f"data.cache_dir={tmp_path / 'cache'}"]
    s = run_search(load_config("fmnist-quick", over), tmp_path / "s", quiet=True)
    t = run_training(load_config("fmnist-eval", over, kind="train"), s.run_dir, tmp_path / "t", quiet=True)
    for run in (s.run_dir, t.run_dir):
        meta = json.loads((run / "dataset.json").read_text())
        assert meta["classes"] == ["class_0", "class_1", "class_2"]
        assert len(meta["test_files"]) == meta["images"]["test"] == 3 + 2 + 2
        log = (run / "log.txt").read_text()
        assert "data: " in log and "cache" in log
    assert "from the cache" in (t.run_dir / "log.txt").read_text()  # the search had decoded it
    assert t.summary["test_images"] == 7

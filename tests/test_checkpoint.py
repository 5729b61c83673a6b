"""Checkpoints: atomic writes, weights-only loading, clear errors."""
import os
import pickle

import pytest
import torch

from entrannas.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_round_trip_and_no_temp_files(tmp_path):
    state = {"net": {"w": torch.arange(6.0)}, "epoch": 3, "partial": [1.5, 2.0, 3]}
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    loaded = load_checkpoint(tmp_path / "checkpoint.pt")
    assert loaded["epoch"] == 3 and torch.equal(loaded["net"]["w"], state["net"]["w"])
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_pickled_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "entrannas-checkpoint/1", "payload": _Evil(marker)}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps(_Evil(marker)))  # a bare pickle, not even a torch zip
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"net": {"w": torch.randn(1000)}})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_foreign_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"some": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not an entrannas checkpoint"):
        load_checkpoint(path)


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1})

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_every_flip_in_the_zip_directory_is_refused(tmp_path):
    """The zip CRCs do not cover the central directory: a flipped bit there once made torch
    read other bytes as weights without an error. The SHA-256 trailer refuses all of them."""
    import zipfile
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"net": {"w": torch.randn(64, 64), "b": torch.randn(64)}, "epoch": 1})
    data = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        start = z.start_dir  # offset of the central directory
    bad = tmp_path / "bad.pt"
    refused = 0
    end = len(data) - len(b"\nentrannas-sha256:") - 64  # the archive ends before its digest
    for pos in range(start, end):
        flipped = bytearray(data)
        flipped[pos] ^= 1 << (pos % 8)
        bad.write_bytes(bytes(flipped))
        with pytest.raises(CheckpointError, match="corrupt"):
            load_checkpoint(bad)
        refused += 1
    assert refused > 200

"""An output folder that cannot be written is reported at the start, before any work; a disk
that fills up mid-run stops the run with one line, the previous checkpoint intact, and the
run resumes once there is space again. (Tests run as root, so chmod cannot make a folder
read-only: a path under a regular file, /proc and /sys, a directory where a file should go,
and a simulated ENOSPC in a child process stand in.)"""
import json

import pytest

from entrannas.cli import main

from .conftest import SEARCH, TRAIN, assert_same_run, cli, metrics, one_line, position, snapshot, temp_files


@pytest.mark.parametrize("kind", ["search", "train"])
def test_unwritable_out_folder_is_refused_at_the_start(tmp_path, capsys, kind):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = SEARCH if kind == "search" else [*TRAIN, "-g", "DARTS_V2"]
    for out in (blocker / "run", blocker / "deeper" / "run", "/proc/entrannas-test/run", "/sys/entrannas-test"):
        assert main([*args, "--out", str(out)]) == 2
        one_line(capsys.readouterr().err, f"cannot write to the run folder {out}", "--out")
    assert blocker.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_other_outputs_that_cannot_be_written(tmp_path, capsys, search_ref):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["plot", "DARTS_V2", "-o", str(blocker / "cells.png")]) == 2
    one_line(capsys.readouterr().err, f"cannot write {blocker / 'cells.png'}")
    # `child` writes RUN/child.json: a folder in its place cannot be replaced by a file.
    import shutil
    run = tmp_path / "run"
    shutil.copytree(search_ref[0], run)
    (run / "child.json").mkdir()
    before = snapshot(run)
    assert main(["child", str(run), "--limit", "16"]) == 2
    one_line(capsys.readouterr().err, f"cannot write {run / 'child.json'}")
    assert snapshot(run) == before and not temp_files(run)


@pytest.mark.parametrize("resume", [False, True])
def test_full_disk_at_the_start(tmp_path, search_ref, resume):
    """Nothing can be written from the start: refused before any work, nothing left behind
    (a resumed run's folder is unchanged)."""
    out = tmp_path / "run"
    if resume:
        import shutil
        shutil.copytree(search_ref[0], out)
        before = snapshot(out)
    p = cli(["search", "-q", "--resume", out] if resume else [*SEARCH, "--out", out],
            fault={"enospc_from": "start"})
    assert p.returncode == 2
    one_line(p.stderr, f"cannot write to the run folder {out} (No space left on device)")
    assert snapshot(out) == (before if resume else {})


def test_disk_fills_up_during_a_search(tmp_path, search_ref):
    """Three full disks in a row, each freed and resumed: during a checkpoint write, from a
    step on (the log fails first: one warning, no traceback per line), and half-way through
    an epoch's metrics line. Each time the previous checkpoint is intact, no temporary file is
    left, and the resumed search ends exactly like the uninterrupted one."""
    out = tmp_path / "run"
    disk_full = "No space left on device"
    # 1. The checkpoint at epoch 1, step 4 cannot be written: the one at step 2 stays.
    p = cli([*SEARCH, "--out", out], fault={"enospc_from": "ckpt_half:0:4"})
    assert p.returncode == 2
    one_line(p.stderr, f"cannot write {out / 'checkpoint.pt'} ({disk_full})", "(epoch 1, step 2)",
             f"--resume {out}")
    assert position(out) == (0, 2) and not temp_files(out)
    # 2. Resumed, it saves step 4, then the disk is full from step 5 on: the log line fails
    #    first (one warning, not a traceback per line), then the epoch's metrics stop it.
    p = cli(["search", "-q", "--resume", out], fault={"enospc_from": "step:0:4"})
    assert p.returncode == 2
    warning, error = p.stderr.strip().splitlines()
    assert warning.startswith("entrannas: warning: cannot write") and "log.txt" in warning
    one_line(error, f"cannot write {out / 'metrics.jsonl'} ({disk_full})", "(epoch 1, step 4)", "--resume")
    assert position(out) == (0, 4) and not temp_files(out)
    assert not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text()
    # 3. Half of epoch 1's metrics line is on disk when it fills up; resuming drops it.
    p = cli(["search", "-q", "--resume", out], fault={"enospc_from": "metrics_half:0"})
    assert p.returncode == 2
    one_line(p.stderr, f"cannot write {out / 'metrics.jsonl'} ({disk_full})", "(epoch 1, step 4)", "--resume")
    assert position(out) == (0, 4) and not temp_files(out)
    with pytest.raises(json.JSONDecodeError):
        json.loads((out / "metrics.jsonl").read_text())
    # Space is free again.
    p = cli(["search", "-q", "--resume", out])
    assert p.returncode == 0, p.stderr
    assert_same_run(search_ref[0], out)


def test_disk_fills_up_during_training(tmp_path, train_ref, dst_genotype):
    out = tmp_path / "run"
    p = cli([*TRAIN, "-g", dst_genotype, "--out", out], fault={"enospc_from": "ckpt_half:1:0"})
    assert p.returncode == 2
    one_line(p.stderr, f"cannot write {out / 'checkpoint.pt'} (No space left on device)",
             "(epoch 1, step 6)", f"--resume {out}")
    assert position(out) == (0, 6) and not temp_files(out)
    assert len(metrics(out)) == 1  # epoch 1's line was written; its checkpoint was not
    p = cli(["train", "-q", "--resume", out])
    assert p.returncode == 0, p.stderr
    assert_same_run(train_ref[0], out)

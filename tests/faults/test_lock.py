"""One writer per run folder: a second search, training, child or experiment on a folder that
a running command holds exits 2 with one line naming the holder, and changes nothing; the
holder then ends exactly as if alone. The lock dies with its process, so a SIGKILLed run is
resumed at once; read-only commands never wait for it."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from entrannas.cli import main
from entrannas.runlock import LOCK_NAME, RunBusy, run_lock

from .conftest import INJECT, SEARCH, TRAIN, assert_same_run, child_env, cli, one_line, snapshot, temp_files

HOLD = ("import sys; from entrannas.runlock import run_lock\n"
        "with run_lock(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()")


def _holder(folder):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env=child_env(), text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout.readline().strip() == "held"
    return p


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    holder = _holder(tmp_path)
    try:
        info = json.loads((tmp_path / LOCK_NAME).read_text())
        assert info["pid"] == holder.pid and info["host"] == socket.gethostname()
        with pytest.raises(RunBusy) as e:
            with run_lock(tmp_path):
                pass
        msg = str(e.value)
        assert f"PID {holder.pid} on {socket.gethostname()}, started {info['started']}" in msg
        assert "\n" not in msg and str(tmp_path) in msg
    finally:
        holder.kill()  # SIGKILL: no clean-up runs
        holder.wait()
    assert (tmp_path / LOCK_NAME).exists()  # a stale file, holding no lock
    with run_lock(tmp_path):  # at once
        with run_lock(tmp_path):  # re-entrant within a process
            assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert (tmp_path / LOCK_NAME).exists()
    assert list(tmp_path.iterdir()) == []  # the holder removes it as it ends


def _start_paused(args, label):
    """`entrannas ARGS` in a child that stops itself (SIGSTOP) at `label`, holding its locks."""
    p = subprocess.Popen([sys.executable, str(INJECT), *map(str, args)], env=child_env({"stop_at": label}),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
                return p
        except OSError:
            pass
        assert p.poll() is None, p.communicate()
        time.sleep(0.2)
    p.kill()
    raise AssertionError(f"never reached {label}")


def _refused(capsys, argv, holder_pid):
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    return one_line(capsys.readouterr().err, "is in use by another process", f"PID {holder_pid} on",
                    "started")


def test_a_second_search_on_a_running_folder_is_refused(tmp_path, capsys, search_ref):
    out = tmp_path / "run"
    first = _start_paused([*SEARCH, "--out", out], "step:0:1")  # before its first checkpoint
    try:
        before = snapshot(out)
        assert LOCK_NAME in before and "checkpoint.pt" not in before
        _refused(capsys, ["search", "-q", "--resume", out], first.pid)
        _refused(capsys, [*SEARCH, "--out", out], first.pid)
        _refused(capsys, ["child", out], first.pid)
        assert snapshot(out) == before
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert_same_run(search_ref[0], out)  # as if it had been alone
    assert not (out / LOCK_NAME).exists() and not temp_files(out)


def test_a_second_training_is_refused_and_reading_never_waits(tmp_path, capsys, train_ref, dst_genotype):
    out = tmp_path / "run"
    first = _start_paused([*TRAIN, "-g", dst_genotype, "--out", out], "step:1:1")  # after a checkpoint
    try:
        before = snapshot(out)
        _refused(capsys, ["train", "-q", "--resume", out], first.pid)
        capsys.readouterr()
        assert main([*map(str, TRAIN), "-g", str(dst_genotype), "--out", str(out)]) == 2
        one_line(capsys.readouterr().err, "already holds a run")
        # Read-only commands: no lock, no waiting.
        assert main(["plot", str(out / "genotype.json"), "-o", str(tmp_path / "cells.png")]) == 0
        assert main(["profile", str(out), "--dataset", "fashion-mnist", "--json"]) == 0
        assert snapshot(out) == before
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert_same_run(train_ref[0], out)
    assert not (out / LOCK_NAME).exists()


def test_two_experiments_on_one_out_cannot_both_run(tmp_path, capsys):
    out = tmp_path / "exp"
    tiny = ["data.limit=64", "data.eval_limit=32", "model.C=4", "model.layers=3", "optim.batch_size=32",
            "optim.epochs=1", "run.plots=false"]
    args = ["experiment", "animation", "-q", "--out", out] + [a for s in tiny for a in ("--set", s)]
    first = _start_paused(args, "step:0:1")
    try:
        before = snapshot(out)
        assert LOCK_NAME in before and f"runs/dst/{LOCK_NAME}" in before  # its folder and its sub-run
        err = _refused(capsys, args, first.pid)
        assert str(out) in err
        assert snapshot(out) == before
    finally:
        first.kill()  # SIGKILL: its locks go with it
        first.wait()
    p = cli(args)  # at once, no clean-up by hand
    assert p.returncode == 0, p.stderr
    assert not list(out.rglob(LOCK_NAME)) and not temp_files(out)
    assert (out / "cells.gif").exists()


def _state(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def test_parallel_seeds_hold_the_parent_and_each_seed_folder(tmp_path, capsys):
    out = tmp_path / "seeds"
    args = [*SEARCH, "--seeds", 0, 1, "--jobs", 2, "--out", out]
    # Each worker stops itself at its first step, holding its seed folder; the parent waits.
    p = subprocess.Popen([sys.executable, str(INJECT), *map(str, args)], env=child_env({"stop_at": "step:0:1"}),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopped = []
    try:
        deadline = time.time() + 300
        while len(stopped) < 2 and time.time() < deadline:
            assert p.poll() is None, p.communicate()
            kids = [int(c) for t in Path(f"/proc/{p.pid}/task").iterdir()
                    for c in (t / "children").read_text().split()]
            stopped = [c for c in kids if _state(c) == "T"]
            time.sleep(0.2)
        assert len(stopped) == 2
        before = snapshot(out)
        for s in (0, 1):
            holder = json.loads((out / f"seed-{s}" / LOCK_NAME).read_text())["pid"]
            assert holder in stopped  # a worker, not the parent, writes the seed's folder
            _refused(capsys, ["search", "-q", "--resume", out / f"seed-{s}"], holder)
        _refused(capsys, args, p.pid)  # the same command again: the parent holds RUN
        assert snapshot(out) == before
    finally:
        for w in stopped:
            os.kill(w, signal.SIGCONT)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert json.loads((out / "seeds.json").read_text())["best_seed"] in (0, 1)
    assert not list(out.rglob(LOCK_NAME)) and not temp_files(out)

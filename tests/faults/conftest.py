"""Shared by the fault suite: tiny search and training runs in child processes (so they can be
SIGKILLed), their uninterrupted references, and the checks that a run equals another."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from entrannas.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
INJECT = Path(__file__).with_name("inject.py")

# 2 epochs of 6 (search) or 8 (train) steps, a checkpoint every 2 steps: kills land between
# mid-epoch checkpoints. DST search (the topology changes), drop path in training (resuming
# must restore the generator).
SEARCH = ["search", "-c", "fmnist-quick", "-q"] + [a for s in (
    "data.limit=96", "data.eval_limit=64", "model.method=dst", "model.derivation=dst", "optim.arch_lr=0.05",
    "model.C=4", "model.layers=3", "optim.batch_size=16", "optim.epochs=2", "run.checkpoint_every=2",
    "run.log_every=1", "run.tensorboard=false", "run.plots=false") for a in ("--set", s)]
TRAIN = ["train", "-c", "fmnist-eval", "-q"] + [a for s in (
    "data.limit=128", "data.eval_limit=64", "model.C=4", "model.layers=3", "model.drop_path=0.3",
    "optim.batch_size=16", "optim.epochs=2", "run.checkpoint_every=2", "run.log_every=1",
    "run.tensorboard=false", "run.plots=false") for a in ("--set", s)]
TIMING = ("wall_time", "peak_mem_gib")   # differ between any two runs by nature


def child_env(fault: dict | None = None) -> dict:
    """The environment of a child: this checkout's src first (CI runs another clone), one
    thread (identical arithmetic in every child; the machine has 2 cores)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("ENTRANNAS_FAULT", None)
    if fault:
        env["ENTRANNAS_FAULT"] = json.dumps(fault)
    return env


def cli(args, fault: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`entrannas ARGS` in a child process: through inject.py when a fault is asked for,
    otherwise as users run it (`python -m entrannas`)."""
    entry = [str(INJECT)] if fault else ["-m", "entrannas"]
    return subprocess.run([sys.executable, *entry, *map(str, args)], env=child_env(fault),
                          capture_output=True, text=True, timeout=timeout)


def one_line(err: str, *needles) -> str:
    """stderr is one line, no traceback, mentioning every needle."""
    err = err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert str(n) in err, err
    return err


def snapshot(folder) -> dict:
    """Every file under `folder` (relative path -> SHA-256): what 'nothing changed' means."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def temp_files(folder) -> list[str]:
    return sorted(p.name for p in Path(folder).rglob(".*") if ".tmp" in p.name)


def metrics(run) -> list[dict]:
    rows = [json.loads(l) for l in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def position(run):
    """(epoch, step) of RUN/checkpoint.pt, or None when there is none."""
    path = Path(run) / "checkpoint.pt"
    if not path.exists():
        return None
    state = load_checkpoint(path)
    return state["epoch"], state["step"]


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    return a == b


def assert_same_run(ref, got, ignore=()) -> None:
    """A run that was killed, resumed (or stopped, then resumed) ends exactly like the
    uninterrupted one: metrics, genotypes, weights, optimiser and generator states. `ignore`:
    JSON keys that name the folder (child.json's run_dir)."""
    ref, got = Path(ref), Path(got)
    assert metrics(got) == metrics(ref)
    a, b = load_checkpoint(ref / "checkpoint.pt"), load_checkpoint(got / "checkpoint.pt")
    assert a["net"].keys() == b["net"].keys()
    diff = [k for k in a["net"] if not torch.equal(a["net"][k], b["net"][k])]
    assert not diff, f"weights differ: {diff[:5]}"
    for key in a:
        if key not in ("elapsed", "config"):
            assert _equal(a[key], b[key]), f"checkpoint field {key!r} differs"
    names = sorted(str(p.relative_to(ref)) for p in ref.rglob("*.json"))
    assert names == sorted(str(p.relative_to(got)) for p in got.rglob("*.json"))
    for name in names:
        x, y = json.loads((ref / name).read_text()), json.loads((got / name).read_text())
        for d in (x, y):
            for k in (*TIMING, *ignore):
                d.pop(k, None)
        assert x == y, name
    assert not temp_files(got), temp_files(got)


def _reference(tmp_path_factory, name, args):
    out = tmp_path_factory.mktemp(name) / "run"
    trace = out.parent / "trace.txt"
    p = cli([*args, "--out", out], fault={"trace": str(trace)})
    assert p.returncode == 0, p.stderr
    return out, trace.read_text().split()


@pytest.fixture(scope="session")
def dst_genotype(tmp_path_factory):
    from helpers import DST
    path = tmp_path_factory.mktemp("genotype") / "dst.json"
    DST.save(path)
    return path


@pytest.fixture(scope="session")
def search_ref(tmp_path_factory):
    """An uninterrupted search and its event trace (see inject.py)."""
    return _reference(tmp_path_factory, "search-ref", SEARCH)


@pytest.fixture(scope="session")
def train_ref(tmp_path_factory, dst_genotype):
    """An uninterrupted training run of a DST cell and its event trace."""
    return _reference(tmp_path_factory, "train-ref", [*TRAIN, "-g", dst_genotype])

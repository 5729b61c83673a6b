"""SIGKILL a search and a training run again and again at seeded random points (mid-step,
half-way through a checkpoint write, before its rename, half-way through a metrics line),
resume each time, and check the result equals the uninterrupted run exactly."""
import json
import random
import signal

import pytest

from entrannas.runlock import LOCK_NAME

from .conftest import SEARCH, TRAIN, assert_same_run, cli, one_line, position

SEED = 20240607
# The first kill cuts the very first checkpoint write (there is nothing to resume yet); then
# one seeded random point of each kind, in the order they come in the run.
FIRST = "ckpt_rename:0:2"
KINDS = ("step", "step", "step", "ckpt_half", "ckpt_rename", "metrics_half", "metrics")


def kill_points(trace: list[str], seed: int, count: int | None = None) -> list[str]:
    """FIRST, then one seeded point of each of KINDS, or `count - 1` seeded points of any kind."""
    rng = random.Random(seed)
    start = trace.index(FIRST) + 1
    if count is not None:
        return [FIRST] + [trace[i] for i in sorted(rng.sample(range(start, len(trace)), count - 1))]
    chosen = set()
    for kind in KINDS:
        options = [i for i in range(start, len(trace)) if trace[i].split(":")[0] == kind and i not in chosen]
        chosen.add(rng.choice(options))
    return [FIRST] + [trace[i] for i in sorted(chosen)]


def saved_before(trace: list[str], label: str):
    """Where the checkpoint on disk must be after a kill at `label`: the last one renamed
    into place before it (None: no checkpoint yet)."""
    done = [l for l in trace[: trace.index(label)] if l.startswith("ckpt_rename:")]
    return tuple(int(x) for x in done[-1].split(":")[1:]) if done else None


def kill_chain(tmp_path, kind, fresh, ref, trace, seed=SEED, count=None):
    out = tmp_path / "run"
    kills = kill_points(trace, seed, count)
    assert len(kills) >= 5
    for label in kills:
        if position(out) is None and out.exists():
            # Killed before the first checkpoint: --resume says how to start again, and that works.
            p = cli([kind, "--resume", out])
            assert p.returncode == 2
            one_line(p.stderr, "before its first checkpoint", f"--config {out / 'config.yaml'}")
            args = [kind, "-q", "--config", out / "config.yaml", "--out", out]
            args += ["--genotype", out] if kind == "train" else []
        else:
            args = fresh + ["--out", out] if not out.exists() else [kind, "-q", "--resume", out]
        p = cli(args, fault={"kill_at": label})  # a stale .lock from the last kill does not stop it
        assert p.returncode == -signal.SIGKILL, f"not killed at {label}: rc {p.returncode} {p.stderr}"
        assert (out / LOCK_NAME).exists()  # left by the killed process, holding no lock
        assert position(out) == saved_before(trace, label), label   # the previous checkpoint loads
        if label.startswith(("ckpt_half", "ckpt_rename")):   # the write was really cut short
            assert list(out.glob(".checkpoint.pt.*.tmp")), label
        if label.startswith("metrics_half"):                 # a cut line is left for resume to drop
            last = (out / "metrics.jsonl").read_text().splitlines()[-1]
            with pytest.raises(json.JSONDecodeError):
                json.loads(last)
    p = cli([kind, "-q", "--resume", out])
    assert p.returncode == 0, p.stderr
    assert_same_run(ref, out)
    assert not (out / LOCK_NAME).exists()
    return kills


def test_search_survives_seeded_sigkills(tmp_path, search_ref):
    ref, trace = search_ref
    kills = kill_chain(tmp_path, "search", SEARCH, ref, trace)
    assert len(kills) == 8


def test_training_survives_seeded_sigkills(tmp_path, train_ref, dst_genotype):
    ref, trace = train_ref
    kills = kill_chain(tmp_path, "train", [*TRAIN, "-g", dst_genotype], ref, trace)
    assert len(kills) == 8

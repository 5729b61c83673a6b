"""The long soak (slow): over 30 seeded SIGKILLs across a search, a training run and a small
experiment run with --jobs 2, each followed by a resume (or, for the experiment, by the same
command again). Everything ends exactly like an uninterrupted run, with no temporary or lock
file left and no orphan process: an experiment whose own process is killed takes its worker
processes down with it (after a checkpoint), and one whose worker is killed stops the other
worker and says to run the command again.

`python3 -m pytest tests/faults/test_soak.py -s` prints its figures (kills, commands, time)."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from entrannas.runlock import LOCK_NAME

from .conftest import INJECT, SEARCH, TRAIN, assert_same_run, child_env, one_line, temp_files
from .test_kill_resume import kill_chain

SEED = 20251201
SEARCH_KILLS = TRAIN_KILLS = 11
EXPERIMENT_KILLS = 10  # of them, parent kills: the experiment's own process
PARENT_KILLS = 4
ORPHAN_LIMIT = 60  # seconds a worker may outlive a killed experiment (it checkpoints first)

# Table 1's four searches (and their child-net evaluations), tiny: 12 steps per epoch, a
# checkpoint every 2, so kills land between mid-epoch checkpoints.
EXPERIMENT = ["experiment", "consistency", "-q", "--jobs", "2"] + [a for s in (
    "data.limit=192", "data.eval_limit=64", "model.C=4", "model.layers=3", "optim.batch_size=16",
    "optim.epochs=2", "run.checkpoint_every=2", "run.log_every=1", "run.plots=false") for a in ("--set", s)]
VARYING = ("run_dir", "resumed", "seconds_this_call", "search_wall_time")


def _session(sid: int) -> list[int]:
    """Live processes of a session (zombies are dead: no one may be left to reap them)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def run_experiment(out: Path, fault: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """The experiment command in a session of its own; returns once every process of that
    session has ended, and how long its workers outlived it (none may stay)."""
    entry = [str(INJECT)] if fault else ["-m", "entrannas"]
    log = out.with_name(out.name + ".stderr")
    with open(log, "w") as err:  # a file, not a pipe: a worker left running keeps no pipe open
        p = subprocess.Popen([sys.executable, *entry, *EXPERIMENT, "--out", str(out)], env=child_env(fault),
                             stdout=subprocess.DEVNULL, stderr=err, text=True, start_new_session=True)
        p.wait(timeout=900)
    ended, deadline = time.time(), time.time() + ORPHAN_LIMIT
    while _session(p.pid) and time.time() < deadline:
        time.sleep(0.2)
    waited, left = time.time() - ended, _session(p.pid)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"orphans {left} still running {ORPHAN_LIMIT} s after the experiment ended"
    return subprocess.CompletedProcess(p.args, p.returncode, "", log.read_text()), waited


def _rows(out: Path) -> list[dict]:
    rows = json.loads((out / "results.json").read_text())["rows"]
    return [{k: v for k, v in r.items() if k not in VARYING} for r in rows]


def experiment_soak(tmp_path: Path) -> dict:
    ref = tmp_path / "experiment-ref"
    p, _ = run_experiment(ref)
    assert p.returncode == 0, p.stderr
    out = tmp_path / "experiment"
    rng = random.Random(SEED)
    plan = ["parent"] * PARENT_KILLS + ["worker"] * (EXPERIMENT_KILLS - PARENT_KILLS)
    rng.shuffle(plan)
    figures = {"worker kills": 0, "parent kills": 0, "commands": 1, "longest orphan wait s": 0.0}
    for who in plan:
        events = rng.randint(3, 9)  # in the first worker to count that many of its own events
        fault = {"kill_parent_after": events} if who == "parent" else {"kill_after": events}
        p, waited = run_experiment(out, fault)
        figures["commands"] += 1
        figures["longest orphan wait s"] = max(figures["longest orphan wait s"], round(waited, 1))
        if p.returncode == 0:  # finished before the kill came: nothing was left to kill
            break
        if who == "parent":
            assert p.returncode == -signal.SIGKILL, p.stderr
        else:
            assert p.returncode == 2, p.stderr
            one_line(p.stderr, "a sub-run's process died", "run the same command again")
        figures[f"{who} kills"] += 1
    p, _ = run_experiment(out)
    figures["commands"] += 1
    assert p.returncode == 0, p.stderr
    assert _rows(out) == _rows(ref)
    for run in sorted((ref / "runs").iterdir()):
        assert_same_run(run, out / "runs" / run.name, ignore=("run_dir",))
    assert not list(out.rglob(LOCK_NAME)) and not temp_files(out)
    return figures


@pytest.mark.slow
def test_soak(tmp_path, search_ref, train_ref, dst_genotype):
    t0 = time.time()
    search = kill_chain(tmp_path / "search", "search", SEARCH, *search_ref, seed=SEED, count=SEARCH_KILLS)
    train = kill_chain(tmp_path / "train", "train", [*TRAIN, "-g", dst_genotype], *train_ref, seed=SEED,
                       count=TRAIN_KILLS)
    t1 = time.time()
    exp = experiment_soak(tmp_path)
    kills = len(search) + len(train) + exp["worker kills"] + exp["parent kills"]
    figures = {"kills": kills, "search kills": len(search), "train kills": len(train), **exp,
               "search/train commands": len(search) + len(train) + 2,  # + a --resume check per early kill
               "search+train s": round(t1 - t0), "experiment s": round(time.time() - t1),
               "wall s": round(time.time() - t0)}
    print(f"\nsoak figures: {json.dumps(figures)}")
    assert exp["worker kills"] + exp["parent kills"] >= EXPERIMENT_KILLS - 2
    assert kills >= 30
    for run in (tmp_path / "search" / "run", tmp_path / "train" / "run"):
        assert not (run / LOCK_NAME).exists() and not temp_files(run)

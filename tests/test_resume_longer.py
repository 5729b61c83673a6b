"""`--resume RUN --set optim.epochs=N`: a finished search or training continued for longer,
its schedules those of an N-epoch run from there on; any other change refused."""
import hashlib
import json
import math
from pathlib import Path

import pytest
from helpers import fails_with_one_line

from entrannas.checkpoint import load_checkpoint
from entrannas.cli import main
from entrannas.search import cosine_lr

SEARCH = ["data.dataset=synthetic", "data.synthetic_shape=[1, 8, 8]", "data.synthetic_size=128",
          "model.C=4", "model.layers=3", "optim.batch_size=32", "optim.epochs=2", "run.tensorboard=false",
          "run.plots=false", "model.tau_final=null", "model.tau_decay=0.7"]
TRAIN = ["data.limit=64", "data.eval_limit=64", "model.C=4", "model.layers=3", "optim.batch_size=32",
         "optim.epochs=1", "model.drop_path=0.2", "run.tensorboard=false", "run.plots=false"]


def _sets(items):
    return [a for s in items for a in ("--set", s)]


def _rows(run):
    return [json.loads(l) for l in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_finished_search_continues_for_longer(tmp_path, capsys):
    run = tmp_path / "s"
    assert main(["search", "-c", "fmnist-quick", "-q", "--out", str(run), *_sets(SEARCH)]) == 0
    before = _rows(run)
    # Anything but the length is refused, naming the key, and nothing in the folder changes.
    files = _digest(run)
    fails_with_one_line(capsys, ["search", "--resume", str(run), "--set", "optim.lr=0.5"], "optim.lr")
    fails_with_one_line(capsys, ["search", "--resume", str(run), "--set", "optim.epochs=1"],
                        "fewer than the 2 epochs")
    fails_with_one_line(capsys, ["search", "--resume", str(run), "--set", "optim.epochs=3",
                                 "--set", "data.limit=32"], "data.limit")
    assert _digest(run) == files
    # The same value is no change: a plain resume of a finished run.
    assert main(["search", "--resume", str(run), "-q", "--set", "optim.epochs=2", "--set", "model.C=4"]) == 0
    assert _rows(run) == before

    assert main(["search", "--resume", str(run), "-q", "--set", "optim.epochs=4"]) == 0
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3] and rows[:2] == before
    lr0 = rows[0]["lr"]
    for r in rows[2:]:  # the remaining epochs follow the 4-epoch cosine
        assert r["lr"] == pytest.approx(cosine_lr(lr0, 0.0, r["epoch"], 4))
    assert rows[2]["tau"] == pytest.approx(rows[1]["tau"] * 0.7)  # tau keeps its per-epoch decay
    assert "extending the run from 2 to 4 epochs: epochs 3-4 follow" in (run / "log.txt").read_text()
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["epoch"] == 4 and state["config"]["optim"]["epochs"] == 4
    assert "epochs: 4" in (run / "config.yaml").read_text()


def test_a_finished_training_continues_for_longer(tmp_path, capsys):
    run = tmp_path / "t"
    assert main(["train", "-g", "DARTS_V2", "-c", "fmnist-eval", "-q", "--out", str(run), *_sets(TRAIN)]) == 0
    first = _rows(run)
    fails_with_one_line(capsys, ["train", "--resume", str(run), "--set", "model.drop_path=0.1"], "model.drop_path")
    assert main(["train", "--resume", str(run), "-q", "--set", "optim.epochs=3"]) == 0
    rows = _rows(run)
    assert rows[:1] == first and [r["epoch"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert r["lr"] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * r["epoch"] / 3)))
        assert r["drop_path"] == pytest.approx(0.2 * r["epoch"] / 3)
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3
    assert "extending the run from 1 to 3 epochs" in (run / "log.txt").read_text()
    # eval works on a built-in data set too: the whole test set, named classes.
    assert main(["eval", str(run), "--no-latency"]) == 0
    r = json.loads((run / "eval.json").read_text())
    assert r["images"] == 10000 and "Ankle boot" in r["per_class"] and r["epochs_trained"] == 3

"""Target-net training you can run: run folder, kill-and-resume equals an uninterrupted run,
flexible (DST) genotypes, NaN handling, and super-net versus child-net accuracy."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from entrannas.checkpoint import load_checkpoint
from entrannas.child import child_accuracy
from entrannas.cli import main
from entrannas.config import load_config, to_dict
from entrannas.genotype import Genotype
from entrannas.measure import profile_genotype
from entrannas.search import run_search
from entrannas.train import lr_at, resume_training, run_training

# Drop path > 0 so that resuming must restore the global generator to reproduce the masks.
TINY = ["data.dataset=fashion-mnist", "data.limit=256", "data.eval_limit=128", "model.C=4",
        "model.layers=5", "model.drop_path=0.3", "optim.batch_size=32", "optim.epochs=2",
        "run.log_every=1", "run.tensorboard=false", "run.plots=false"]

# A DST-style cell: node 2 takes three inputs, node 3 has two ops on the edge from node 0.
DST = {"format": "entrannas-genotype/1", "space": "standard",
       "normal": {"nodes": [[["sep_conv_3x3", 0], ["skip_connect", 1], ["dil_conv_3x3", 0]],
                            [["sep_conv_5x5", 0], ["max_pool_3x3", 0]],
                            [["avg_pool_3x3", 2]],
                            [["sep_conv_3x3", 4], ["skip_connect", 3], ["dil_conv_5x5", 1]]],
                  "concat": [2, 3, 4, 5]},
       "reduce": {"nodes": [[["max_pool_3x3", 0], ["sep_conv_3x3", 1]],
                            [["skip_connect", 2]],
                            [["sep_conv_3x3", 0], ["dil_conv_3x3", 0], ["avg_pool_3x3", 3]],
                            [["max_pool_3x3", 1]]],
                  "concat": [2, 3, 4, 5]}}


def _cfg(*extra):
    return load_config(None, TINY + list(extra), kind="train")


def _metrics(run_dir):
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    for r in rows:  # wall time and memory differ between runs by nature
        r.pop("wall_time"), r.pop("peak_mem_gib")
    return rows


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    run_training(_cfg(), "DARTS_V2", out, quiet=True)
    return out


def test_run_folder_has_every_file(reference):
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "genotype.json", "checkpoint.pt", "summary.json"):
        assert (reference / name).exists(), name
    rows = _metrics(reference)
    assert [r["epoch"] for r in rows] == [0, 1]
    for key in ("lr", "drop_path", "train_loss", "train_acc", "test_loss", "test_acc"):
        assert key in rows[0], key
    assert [r["drop_path"] for r in rows] == [0.0, pytest.approx(0.15)]  # 0.3 * epoch / epochs
    assert rows[1]["lr"] < rows[0]["lr"] == 0.025
    s = json.loads((reference / "summary.json").read_text())
    assert s["test_acc"] == rows[-1]["test_acc"] and s["best_test_acc"] == max(r["test_acc"] for r in rows)
    p = profile_genotype("DARTS_V2", "fashion-mnist", C=4, layers=5)
    assert s["params_M"] == pytest.approx(p["params_M"]) and s["macs_M"] == pytest.approx(p["macs_M"])
    assert s["epochs"] == 2 and s["test_images"] == 128 and s["wall_time"] > 0
    assert Genotype.from_dict(json.loads((reference / "genotype.json").read_text())) == Genotype.builtin("DARTS_V2")


def test_schedules():
    c = load_config("imagenet-eval", ["optim.epochs=4", "optim.lr_warmup_epochs=0"])
    assert [lr_at(c, e) for e in range(4)] == pytest.approx([0.5, 0.375, 0.25, 0.125])
    # PC-DARTS' ImageNet ramp: (e + 1) / 5 of the linear schedule in the first 5 epochs
    c = load_config("imagenet-eval", ["optim.epochs=10"])
    assert [lr_at(c, e) for e in range(7)] == pytest.approx(
        [0.5 * (1 - e / 10) * min(1, (e + 1) / 5) for e in range(7)])
    assert lr_at(c, 0) == pytest.approx(0.1) and lr_at(c, 5) == pytest.approx(0.25)
    c = load_config("cifar10-eval", ["optim.epochs=2"])
    assert [lr_at(c, e) for e in range(2)] == pytest.approx([0.025, 0.0125])


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(reference, tmp_path):
    out = tmp_path / "killed"
    # The same config as the reference, as a YAML file for the command line.
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(to_dict(_cfg())))
    cmd = [sys.executable, "-m", "entrannas", "train", "-g", "DARTS_V2", "-q", "--out", str(out),
           "-c", str(cfg_file), "--set", "run.checkpoint_every=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    # Kill in the middle of the second epoch, where drop path has already drawn masks.
    while time.time() < deadline:
        log = (out / "log.txt").read_text() if (out / "log.txt").exists() else ""
        if "epoch 2/2 step 3/8" in log:
            break
        time.sleep(0.01)
    else:
        proc.kill()
        pytest.fail("training did not reach epoch 2: " + proc.stderr.read().decode())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 1 and 0 < state["step"] < 8, "expected a mid-epoch checkpoint"
    assert len(_metrics(out)) == 1
    result = resume_training(out, quiet=True)
    assert _metrics(out) == _metrics(reference)
    ref_s = json.loads((reference / "summary.json").read_text())
    assert result.summary["test_acc"] == ref_s["test_acc"]
    ref_w, got_w = load_checkpoint(reference / "checkpoint.pt")["net"], load_checkpoint(out / "checkpoint.pt")["net"]
    assert ref_w.keys() == got_w.keys()
    assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)


def test_dst_genotype_trains_and_profiles(tmp_path):
    g = Genotype.from_dict(DST)
    r = run_training(_cfg("optim.epochs=1", "data.limit=64", "model.layers=3"), g, tmp_path / "dst", quiet=True)
    assert 0 <= r.test_acc <= 100 and len(r.metrics) == 1
    p = profile_genotype(g, "cifar10")
    assert p["ops_normal"] == 9 and p["edges_normal"] == 7
    assert p["params_M"] > 0 and p["macs_M"] > 0


def test_nan_loss_is_a_clear_error(tmp_path):
    with pytest.raises(FloatingPointError, match="lower optim.lr"):
        run_training(_cfg("optim.lr=1.0e+30", "optim.epochs=1", "model.layers=3"), "DARTS_V2", tmp_path / "nan",
                     quiet=True)


def test_child_accuracy_darts_mode(tmp_path, capsys):
    cfg = load_config("fmnist-quick", ["data.limit=64", "data.eval_limit=64", "model.C=4", "model.layers=3",
                                       "optim.batch_size=32", "optim.epochs=1", "model.method=darts",
                                       "model.engine_cells=all", "model.feature_sharing=false",
                                       "model.bottleneck=1", "run.tensorboard=false", "run.plots=false"])
    search = run_search(cfg, tmp_path / "search", quiet=True)
    r = child_accuracy(tmp_path / "search", macs=True)
    assert 0 <= r["supernet_acc"] <= 100 and 0 <= r["child_acc"] <= 100
    # Same weights, same temperature, same images: the super-net scores what the search logged.
    assert r["supernet_acc"] == search.metrics[-1]["val_acc"]
    # The child-net runs only the derived ops (2 per node) instead of all 7 per edge.
    assert r["child_macs_M"] < r["supernet_macs_M"] / 2
    assert r["genotype"] == search.genotype.to_dict()
    assert json.loads((tmp_path / "search" / "child.json").read_text())["child_acc"] == r["child_acc"]
    assert main(["child", str(tmp_path / "search"), "--limit", "32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 32
    assert json.loads((tmp_path / "search" / "child.json").read_text())["images"] == 32  # the latest

"""`entrannas segment` you can run: run folder, kill-and-resume equals an uninterrupted run,
poly schedule, bad input in one line before any folder exists, and a backbone that starts
from an ImageNet `train` run (on a generated VOC tree)."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from entrannas.checkpoint import load_checkpoint
from entrannas.cli import main
from entrannas.config import load_config, to_dict
from entrannas.segment import poly_lr, resume_segmentation, run_segmentation
from entrannas.segnet import build_segnet, load_backbone
from entrannas.train import run_training
from helpers import fails_with_one_line
from test_segdata import voc_tree  # noqa: F401  (a fixture)

# Dropout > 0 so that resuming must restore the global generator to drop the same units.
TINY = ["data.scenes_train=48", "data.scenes_val=24", "model.C=4", "model.layers=5", "model.head_channels=8",
        "model.dropout=0.3", "optim.batch_size=8", "optim.epochs=2", "run.log_every=1",
        "run.tensorboard=false", "run.plots=false"]


def _cfg(*extra):
    return load_config("fmnist-scenes", TINY + list(extra), kind="segment")


def _metrics(run_dir):
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    for r in rows:  # wall time and memory differ between runs by nature
        r.pop("wall_time"), r.pop("peak_mem_gib")
    return rows


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    run_segmentation(_cfg(), "DARTS_V2", out, quiet=True)
    return out


def test_run_folder_and_scores(reference):
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "genotype.json", "checkpoint.pt", "summary.json"):
        assert (reference / name).exists(), name
    rows = _metrics(reference)
    assert [r["epoch"] for r in rows] == [0, 1]
    last = rows[-1]
    cm = np.array(last["val_confusion"])
    assert cm.shape == (11, 11) and cm.sum() == 24 * 64 * 64  # every pixel of every val scene
    assert last["val_pixel_acc"] == pytest.approx(100 * np.trace(cm) / cm.sum())
    s = json.loads((reference / "summary.json").read_text())
    assert s["miou"] == last["val_miou"] and list(s["iou"])[0] == "background" and s["val_images"] == 24
    assert s["params_M"] > 0 and s["macs_M"] > 0 and yaml.safe_load((reference / "config.yaml").read_text())["kind"] == "segment"


def test_poly_schedule():
    c = _cfg("optim.lr=0.1", "optim.power=1.0")
    assert [poly_lr(c, t, 4) for t in range(4)] == pytest.approx([0.1, 0.075, 0.05, 0.025])
    assert poly_lr(_cfg("optim.lr=0.1"), 2, 4) == pytest.approx(0.1 * 0.5 ** 0.9)


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(reference, tmp_path):
    out = tmp_path / "killed"
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump({"kind": "segment", **to_dict(_cfg())}))
    cmd = [sys.executable, "-m", "entrannas", "segment", "-g", "DARTS_V2", "-q", "--out", str(out),
           "-c", str(cfg_file), "--set", "run.checkpoint_every=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill in the middle of the second epoch
        log = (out / "log.txt").read_text() if (out / "log.txt").exists() else ""
        if "epoch 2/2 step 3/6" in log:
            break
        time.sleep(0.01)
    else:
        proc.kill()
        pytest.fail("segment did not reach epoch 2: " + proc.stderr.read().decode())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["kind"] == "segment" and state["epoch"] == 1 and 0 < state["step"] < 6
    result = resume_segmentation(out, quiet=True)
    assert _metrics(out) == _metrics(reference)
    assert result.miou == json.loads((reference / "summary.json").read_text())["miou"]
    ref_w, got_w = load_checkpoint(reference / "checkpoint.pt")["net"], load_checkpoint(out / "checkpoint.pt")["net"]
    assert ref_w.keys() == got_w.keys() and all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)


def test_bad_input_is_one_line_and_creates_no_folder(tmp_path, capsys, reference):
    out = tmp_path / "r"
    fails_with_one_line(capsys, ["segment", "-g", "DARTS_V2", "-c", "voc-deeplabv3", "--out", str(out)],
                        "Pascal VOC", "data.data_dir")
    fails_with_one_line(capsys, ["segment", "-g", "DARTS_V2", "-c", "fmnist-scenes", "--out", str(out),
                                 "--set", "model.output_stride=4"], "model.output_stride", "8, 16 or 32")
    fails_with_one_line(capsys, ["segment", "-g", "DARTS_V2", "-c", "fmnist-scenes", "--out", str(out),
                                 "--set", "data.scenes_train=4"], "batch size")
    fails_with_one_line(capsys, ["segment", "-g", "DARTS_V2", "-c", "fmnist-scenes", "--out", str(out),
                                 "--backbone", str(reference)], "holds a segment checkpoint")
    assert not out.exists()
    fails_with_one_line(capsys, ["train", "--resume", str(reference)], "entrannas segment --resume")
    fails_with_one_line(capsys, ["segment", "-g", "DARTS_V2", "-c", "fmnist-scenes", "--out", str(reference)],
                        "already holds a run", "--resume")


@pytest.fixture
def imagenet_run(tmp_path):
    """A real (tiny) ImageNet-layout `train` run of DARTS_V2: 2 classes x 4 images, 1 epoch."""
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for wnid in ("n01", "n02"):
            d = tmp_path / "imagenet" / split / wnid
            d.mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(d / f"{i}.JPEG")
    cfg = load_config("imagenet-eval", [f"data.data_dir={tmp_path / 'imagenet'}", "data.image_size=32",
                                        "data.workers=0", "model.C=4", "model.layers=5", "optim.epochs=1",
                                        "optim.batch_size=4", "run.tensorboard=false", "run.plots=false"],
                      kind="train")
    run_training(cfg, "DARTS_V2", tmp_path / "imagenet-run", quiet=True)
    return tmp_path / "imagenet-run"


def test_backbone_from_an_imagenet_train_run_on_voc(imagenet_run, voc_tree, tmp_path, capsys):  # noqa: F811
    base, _ = voc_tree
    sets = [f"data.data_dir={base}", "data.crop_size=48", "data.workers=0", "model.C=4", "model.layers=5",
            "model.head_channels=8", "optim.batch_size=2", "optim.epochs=1", "run.tensorboard=false",
            "run.plots=false"]
    cfg = load_config("voc-deeplabv3", sets + ["data.train_split=train"], kind="segment")
    net = build_segnet(cfg, "DARTS_V2", 21, 3)
    loaded = load_backbone(net, imagenet_run, "DARTS_V2", 4, 5)
    trained = load_checkpoint(imagenet_run / "checkpoint.pt")["net"]
    got = net.backbone.state_dict()
    assert loaded["tensors"] == len(got) and all(torch.equal(got[k], trained[k]) for k in got)
    # end to end: the genotype comes from the backbone run, VOC decoded in the loop
    args = ["segment", "--backbone", str(imagenet_run), "-c", "voc-deeplabv3", "-q", "--out", str(tmp_path / "seg"),
            "--set", "data.train_split=train"] + [a for s in sets for a in ("--set", s)]
    assert main(args) == 0
    assert "val mIoU" in capsys.readouterr().out
    s = json.loads((tmp_path / "seg" / "summary.json").read_text())
    assert s["backbone"] == str(imagenet_run) and s["val_images"] == 2 and 0 <= s["miou"] <= 100
    assert "backbone weights from" in (tmp_path / "seg" / "log.txt").read_text()
    fails_with_one_line(capsys, args[:-2] + ["--set", "model.C=8", "--out", str(tmp_path / "other")],
                        "model.C=4")
    fails_with_one_line(capsys, ["segment", "-g", "PDARTS", "--backbone", str(imagenet_run), "-c", "voc-deeplabv3",
                                 "--out", str(tmp_path / "other")] + [a for s in sets for a in ("--set", s)],
                        "another genotype")
    assert not (tmp_path / "other").exists()

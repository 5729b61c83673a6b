"""A trained model taken away: load_model, `entrannas export` (TorchScript, torch.export, ONNX,
safetensors) and `entrannas eval`, from a search + training on a generated image folder."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import fails_with_one_line
from imagefolders import make_folder

import entrannas
from entrannas.checkpoint import load_checkpoint
from entrannas.cli import main
from entrannas.data.augment import normalize

TINY = ["data.dataset=folder", "model.C=4", "model.layers=3", "optim.batch_size=8", "optim.epochs=1",
        "run.tensorboard=false", "run.plots=false", "data.workers=0"]
HAVE_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))


def _sets(*extra):
    return [a for s in TINY + list(extra) for a in ("--set", s)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The README's four commands, on a tiny folder: search, train (then eval, export below)."""
    tmp = tmp_path_factory.mktemp("model")
    root = make_folder(tmp / "images", classes=4, per_class=[12, 9, 10, 11], fmt="png")
    extra = (f"data.data_dir={root}", f"data.cache_dir={tmp / 'cache'}")
    assert main(["search", "-c", "fmnist-quick", "-q", "--out", str(tmp / "search"), *_sets(*extra)]) == 0
    assert main(["train", "-g", str(tmp / "search"), "-c", "fmnist-eval", "-q", "--out", str(tmp / "train"),
                 *_sets(*extra)]) == 0
    return tmp


def _batch(model, n=5, seed=3):
    return torch.rand((n, *model.input_shape), generator=torch.Generator().manual_seed(seed))


def test_load_model_gives_the_trained_network_in_eval_mode(runs):
    model = entrannas.load_model(runs / "train")
    assert not model.training and model.network.auxiliary_head is None
    assert model.classes == ("class_0", "class_1", "class_2", "class_3") and model.input_shape == (3, 32, 32)
    state = load_checkpoint(runs / "train" / "checkpoint.pt")
    trained = {k: v for k, v in state["net"].items() if not k.startswith("auxiliary_head.")}
    assert all(torch.equal(model.network.state_dict()[k], v) for k, v in trained.items())
    # The model normalises as training did: pixels in [0, 1] in, logits out.
    u8 = (_batch(model) * 255).round().to(torch.uint8)
    info = state["data_info"]
    with torch.no_grad():
        want = model.network(normalize(u8, info["mean"], info["std"]))[0]
        assert torch.allclose(model(u8.float() / 255), want, atol=1e-5)


def test_load_model_refuses_a_search_run_and_damaged_files(runs, tmp_path, capsys):
    with pytest.raises(entrannas.export.CheckpointError, match="search run.*entrannas train --genotype"):
        entrannas.load_model(runs / "search")
    fails_with_one_line(capsys, ["eval", str(runs / "search")], "is a search run")
    fails_with_one_line(capsys, ["export", str(tmp_path), "-o", str(tmp_path / "m.onnx")], "neither a train run")
    bad = tmp_path / "bad"
    bad.mkdir()
    raw = (runs / "train" / "checkpoint.pt").read_bytes()
    (bad / "checkpoint.pt").write_bytes(raw[: len(raw) // 2])
    fails_with_one_line(capsys, ["export", str(bad), "-o", str(tmp_path / "m.pt")], "checkpoint.pt", "corrupt")
    assert not (tmp_path / "m.pt").exists()
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    fails_with_one_line(capsys, ["eval", str(tmp_path / "junk.safetensors")], "junk.safetensors")
    fails_with_one_line(capsys, ["export", str(runs / "train"), "-o", str(tmp_path / "m.tflite")], ".pt2", ".onnx")


@pytest.mark.parametrize("suffix", [".pt", ".pt2", ".safetensors",
                                    pytest.param(".onnx", marks=pytest.mark.skipif(
                                        not HAVE_ONNX, reason="the onnx extra is not installed"))])
def test_each_export_gives_the_module_outputs(runs, tmp_path, capsys, suffix):
    out = tmp_path / f"model{suffix}"
    assert main(["export", str(runs / "train"), "-o", str(out)]) == 0
    assert "outputs match the trained model" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # one file, no temp left
    model = entrannas.load_model(runs / "train")
    x = _batch(model, n=7)  # another batch size than the one traced
    with torch.no_grad():
        want = model(x)
        if suffix == ".pt":
            got = torch.jit.load(str(out))(x)
        elif suffix == ".pt2":
            got = torch.export.load(str(out)).module()(x)
        elif suffix == ".safetensors":
            again = entrannas.load_model(out)
            assert again.classes == model.classes and again.genotype.to_dict() == model.genotype.to_dict()
            got = again(x)
        else:
            import onnxruntime as ort
            session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    assert got.shape == (7, 4) and torch.allclose(got, want, atol=1e-5, rtol=0)


def test_torchscript_runs_where_entrannas_cannot_be_imported(runs, tmp_path):
    out = tmp_path / "model.pt"
    assert main(["export", str(runs / "train"), "-o", str(out)]) == 0
    model = entrannas.load_model(runs / "train")
    x = _batch(model)
    torch.save(x, tmp_path / "x.pt")
    script = ("import sys; sys.modules['entrannas'] = None\n"  # any import of it now fails
              "import torch\n"
              "try:\n    import entrannas\nexcept ImportError:\n    pass\n"
              "else:\n    raise SystemExit('entrannas is importable')\n"
              f"m = torch.jit.load({str(out)!r})\n"
              f"torch.save(m(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r})\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, check=True, timeout=120)
    with torch.no_grad():
        assert torch.allclose(torch.load(tmp_path / "y.pt"), model(x), atol=1e-5, rtol=0)


def test_eval_prints_accuracy_cost_and_latency(runs, tmp_path, capsys):
    assert main(["eval", str(runs / "train")]) == 0
    out = capsys.readouterr().out
    for needle in ("top-1", "top-4", "class_3", "params", "multiply-adds", "batch 1:", "batch 64:", "eval.json"):
        assert needle in out, needle
    r = json.loads((runs / "train" / "eval.json").read_text())
    meta = json.loads((runs / "train" / "dataset.json").read_text())
    assert r["images"] == meta["images"]["test"] == sum(v["images"] for v in r["per_class"].values())
    assert r["top5"] == 100.0 and 0 <= r["top1"] <= 100  # 4 classes: top-4 holds every label
    summary = json.loads((runs / "train" / "summary.json").read_text())
    assert r["top1"] == pytest.approx(summary["test_acc"])  # the same images and weights as training's test
    assert r["params_M"] == pytest.approx(summary["params_M"])
    assert [t["batch"] for t in r["latency"]] == [1, 64] and all(t["images_per_s"] > 0 for t in r["latency"])
    # Another folder: fewer classes, labelled by name; a class the model does not know is refused.
    other = make_folder(tmp_path / "other", classes=2, per_class=3, seed=4)
    os.rename(other / "class_0", other / "class_3")
    assert main(["eval", str(runs / "train"), "--data", str(other), "--no-latency"]) == 0
    r2 = json.loads((runs / "train" / "eval.json").read_text())
    assert r2["images"] == 6 and r2["per_class"]["class_3"]["images"] == 3 and r2["per_class"]["class_0"]["images"] == 0
    os.rename(other / "class_1", other / "dog")
    fails_with_one_line(capsys, ["eval", str(runs / "train"), "--data", str(other)], "dog", "not trained on")


def test_onnx_without_the_extra_says_how_to_install_it(runs, tmp_path, capsys, monkeypatch):
    import importlib.util as util
    real = util.find_spec
    monkeypatch.setattr(util, "find_spec", lambda name, *a: None if name.startswith("onnx") else real(name, *a))
    fails_with_one_line(capsys, ["export", str(runs / "train"), "-o", str(tmp_path / "m.onnx")],
                        "pip install 'entrannas[onnx]'")
    assert not any(tmp_path.iterdir())

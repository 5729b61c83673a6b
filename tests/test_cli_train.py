"""`entrannas train / profile / child`: presets, output, and bad input as one line with exit 2."""
from helpers import fails_with_one_line as _fails
import json

import pytest

from entrannas.checkpoint import save_checkpoint
from entrannas.cli import main
from entrannas.config import load_config, presets

TINY = ["data.dataset=fashion-mnist", "data.limit=64", "data.eval_limit=64", "model.C=4", "model.layers=3",
        "optim.batch_size=32", "optim.epochs=1", "run.tensorboard=false", "run.plots=false"]




def test_every_paper_training_setting_has_a_preset():
    assert {"cifar10-eval", "imagenet-eval", "fmnist-eval"} <= set(presets("train"))
    c = load_config("cifar10-eval", kind="train")
    assert (c.model.C, c.model.layers, c.optim.epochs, c.optim.batch_size, c.optim.lr, c.optim.schedule,
            c.optim.momentum, c.optim.weight_decay, c.optim.grad_clip, c.data.cutout, c.model.drop_path,
            c.model.auxiliary, c.model.aux_weight) == \
        (36, 20, 600, 96, 0.025, "cosine", 0.9, 3e-4, 5.0, 16, 0.2, True, 0.4)
    i = load_config("imagenet-eval", kind="train")
    assert (i.model.C, i.model.layers, i.optim.epochs, i.optim.batch_size, i.optim.lr, i.optim.schedule,
            i.optim.weight_decay, i.optim.label_smoothing, i.data.cutout, i.model.drop_path, i.model.auxiliary) == \
        (48, 14, 250, 1024, 0.5, "linear", 3e-5, 0.1, 0, 0.0, True)
    f = load_config("fmnist-eval", kind="train")
    assert f.data.dataset == "fashion-mnist" and f.model.auxiliary


def test_profile_table_and_json(capsys):
    assert main(["profile", "DARTS_V2"]) == 0
    out = capsys.readouterr().out
    assert "3.35" in out and "multiply-adds" in out
    assert main(["profile", "DARTS", "--dataset", "imagenet", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["dataset"], r["C"], r["layers"], r["input_shape"]) == ("imagenet", 48, 14, [3, 224, 224])
    assert main(["profile", "DARTS_V2", "--C", "16", "--layers", "8", "--json"]) == 0
    small = json.loads(capsys.readouterr().out)
    assert small["params_M"] < 3.35 and small["layers"] == 8


def test_plot_and_profile_take_the_genotype_as_train_does(capsys, tmp_path):
    # `train -g RUN` by habit works for profile and plot too, with the same result as positional.
    assert main(["profile", "DARTS_V2", "--json"]) == 0
    positional = json.loads(capsys.readouterr().out)
    assert main(["profile", "-g", "DARTS_V2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == positional
    assert main(["plot", "--genotype", "PDARTS", "-o", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 0
    _fails(capsys, ["profile"], "give one genotype")
    _fails(capsys, ["plot", "-o", str(tmp_path / "q.png")], "give one genotype")
    _fails(capsys, ["profile", "DARTS_V2", "-g", "PDARTS"], "two genotypes")
    assert not (tmp_path / "q.png").exists()


def test_a_search_ends_with_the_train_command_that_retrains_its_cell(capsys, tmp_path):
    import shlex
    argv = ["search", "-c", "fmnist-quick", "-q", "--out", str(tmp_path / "my search")]
    for s in TINY:
        argv += ["--set", s]
    assert main(argv) == 0
    hint = [line for line in capsys.readouterr().out.splitlines() if line.startswith("next")]
    assert len(hint) == 1
    command = shlex.split(hint[0].split(": ", 1)[1])  # the folder's space is quoted
    assert command[:2] == ["entrannas", "train"] and "fmnist-eval" in command
    for s in TINY:
        command += ["--set", s]
    assert main(command[1:] + ["-q", "--out", str(tmp_path / "trained")]) == 0
    searched = json.loads((tmp_path / "my search" / "genotype.json").read_text())
    trained = json.loads((tmp_path / "trained" / "genotype.json").read_text())
    assert (trained["normal"], trained["reduce"]) == (searched["normal"], searched["reduce"])


def test_the_train_hint_carries_the_data_set_over():
    import shlex
    from entrannas.cli import train_hint
    cfg = load_config("cifar10-entrannas", ["data.dataset=cifar100", "data.data_dir=/my data"])
    command = shlex.split(train_hint("runs/c100", cfg))
    assert command[command.index("-g") + 1] == "runs/c100"
    preset, sets = command[command.index("-c") + 1], command[command.index("--set") + 1:][:1]
    train = load_config(preset, sets + [f"data.data_dir={command[command.index('--data-dir') + 1]}"],
                        kind="train")
    assert (train.data.dataset, train.data.data_dir) == ("cifar100", "/my data")
    assert train_hint("runs/x", load_config("fmnist-quick", ["data.dataset=synthetic"])) is None


def test_train_prints_the_summary(capsys, tmp_path):
    argv = ["train", "-g", "PC_DARTS", "-c", "fmnist-eval", "-q", "--out", str(tmp_path / "run")]
    for s in TINY:
        argv += ["--set", s]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "params" in out and str(tmp_path / "run") in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs"] == 1
    # Resuming a finished run only rewrites its summary.
    assert main(["train", "--resume", str(tmp_path / "run"), "-q"]) == 0
    # The genotype may be given as a run folder: the trained one is copied there.
    assert main(["profile", str(tmp_path / "run"), "--json"]) == 0


def test_bad_genotypes(capsys, tmp_path):
    _fails(capsys, ["profile", "NOT_A_CELL"], "NOT_A_CELL", "builtin")
    _fails(capsys, ["train", "-g", "NOT_A_CELL", "-c", "fmnist-eval", "--out", str(tmp_path / "a")], "NOT_A_CELL")
    bad = tmp_path / "bad.json"
    bad.write_text('{"normal": {"nodes": [[["sep_conv_3x3", 0]]]')
    _fails(capsys, ["profile", str(bad)], "bad.json", "invalid JSON")
    unknown = tmp_path / "unknown.json"
    cell = {"nodes": [[["skip_connect", 0]], [["skip_connect", 1]], [["skip_connect", 2]], [["skip_connect", 3]]]}
    unknown.write_text(json.dumps({"normal": {"nodes": [[["warp_conv", 0]]] + cell["nodes"][1:]}, "reduce": cell}))
    _fails(capsys, ["train", "-g", str(unknown), "-c", "fmnist-eval", "--out", str(tmp_path / "b")], "warp_conv")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b" / "checkpoint.pt").exists()


def test_config_kind_mismatch_and_usage(capsys, tmp_path):
    _fails(capsys, ["search", "-c", "cifar10-eval"], "train config", "search presets")
    _fails(capsys, ["train", "-g", "DARTS_V2", "-c", "cifar10-entrannas"], "search config", "cifar10-eval")
    _fails(capsys, ["train", "-c", "fmnist-eval"], "--genotype")
    _fails(capsys, ["train", "-g", "DARTS_V2"], "--config")
    _fails(capsys, ["train", "--resume", str(tmp_path), "-g", "DARTS_V2"], "drop")
    _fails(capsys, ["train", "-g", "DARTS_V2", "-c", "fmnist-eval", "--set", "optim.schedule=step"], "cosine")


def test_wrong_kind_of_run_folder(capsys, tmp_path):
    _fails(capsys, ["child", str(tmp_path)], "checkpoint", "does not exist")
    _fails(capsys, ["train", "--resume", str(tmp_path)], "does not exist")
    save_checkpoint(tmp_path / "checkpoint.pt", {"kind": "train"})
    _fails(capsys, ["child", str(tmp_path)], "not a search")
    save_checkpoint(tmp_path / "checkpoint.pt", {"kind": "search"})
    _fails(capsys, ["train", "--resume", str(tmp_path)], "search --resume")
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    _fails(capsys, ["child", str(tmp_path), "--json"], "checkpoint.pt", "restore it")


def test_profile_rejects_bad_numbers(capsys):
    with pytest.raises(SystemExit) as e:
        main(["profile", "DARTS_V2", "--layers", "2"])
    assert e.value.code == 2 and "at least 3" in capsys.readouterr().err

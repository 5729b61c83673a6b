"""Bad input gets one clear line on stderr and exit code 2, never a traceback."""
from helpers import fails_with_one_line as _fails

import pytest

from entrannas.cli import main
from entrannas.config import load_config, presets

SEARCH_PRESETS = {"cifar10-entrannas", "cifar10-entrannas-extended", "cifar10-dst", "cifar10-darts",
                  "imagenet-entrannas", "imagenet-dst", "fmnist-quick"}




def test_every_paper_search_setting_has_a_preset():
    assert SEARCH_PRESETS <= set(presets("search"))
    c = load_config("cifar10-entrannas")
    assert (c.optim.epochs, c.optim.batch_size, c.optim.lr, c.optim.arch_lr, c.model.tau0, c.model.tau_decay) == \
        (50, 512, 0.2, 6e-4, 5.0, 0.923)
    i = load_config("imagenet-dst")
    assert (i.optim.batch_size, i.optim.lr, i.optim.arch_lr, i.model.tau0, i.model.tau_decay, i.model.stem) == \
        (1024, 0.5, 6e-3, 1.0, 0.9, "imagenet")
    d = load_config("cifar10-darts")
    assert (d.model.method, d.optim.batch_size, d.optim.lr, d.optim.arch_lr) == ("darts", 64, 0.025, 3e-4)
    assert load_config("cifar10-entrannas-extended").model.space == "extended"


def test_overrides_are_typed():
    c = load_config("fmnist-quick", ["optim.lr=0.05", "model.engine_cells=[0, 2]", "data.limit=null"])
    assert c.optim.lr == 0.05 and c.model.engine_cells == [0, 2] and c.data.limit is None


def test_exponent_numbers_without_a_dot_are_numbers(tmp_path):
    # YAML 1.1 reads `1e-3` as a string; users (and Python) write learning rates that way.
    c = load_config("fmnist-quick", ["optim.arch_lr=1e-3", "optim.weight_decay=0E0"])
    assert (c.optim.arch_lr, c.optim.weight_decay) == (1e-3, 0.0)
    f = tmp_path / "mine.yaml"
    f.write_text("kind: search\noptim: {lr: 2e-2, arch_lr: 6E-4}\ndata: {dataset: fashion-mnist}\n")
    c = load_config(f)
    assert (c.optim.lr, c.optim.arch_lr) == (0.02, 6e-4)


def test_unknown_preset_lists_the_valid_ones(capsys):
    _fails(capsys, ["search", "-c", "cifar11-entrannas"], "cifar11-entrannas", "fmnist-quick", "cifar10-dst")


def test_unknown_key_lists_the_valid_ones(capsys):
    _fails(capsys, ["search", "-c", "fmnist-quick", "--set", "optim.lrr=0.1"], "optim.lrr", "optim.lr")
    _fails(capsys, ["search", "-c", "fmnist-quick", "--set", "optimizer.lr=0.1"], "optimizer", "optim")


def test_search_jobs_needs_distinct_seeds(capsys, tmp_path):
    out = tmp_path / "run"
    base = ["search", "-c", "fmnist-quick", "-o", str(out), "-q"]
    _fails(capsys, base + ["--jobs", "2"], "--jobs 2", "--seeds")
    _fails(capsys, base + ["--seeds", "0", "1", "--jobs", "0"], "--jobs must be at least 1")
    _fails(capsys, base + ["--seeds", "0", "1", "0", "--jobs", "2"], "seed 0 more than once")
    assert not out.exists()  # refused before any folder


@pytest.mark.parametrize("override,needle", [
    ("optim.epochs=ten", "integer"), ("optim.lr=-1", "positive"), ("data.split=1.5", "between 0 and 1"),
    ("model.method=enas", "darts"), ("run.tensorboard=maybe", "true or false"), ("optim.lr", "section.key=value")])
def test_wrong_type_or_range(capsys, override, needle):
    _fails(capsys, ["search", "-c", "fmnist-quick", "--set", override], needle)


def test_missing_dataset_says_how_to_get_it(capsys, tmp_path):
    _fails(capsys, ["search", "-c", "cifar10-entrannas", "--set", f"data.data_dir={tmp_path}",
                    "--set", "data.download=false", "--out", str(tmp_path / "run")], "CIFAR-10", "cifar-10-batches-py")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_malformed_yaml_config(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: search\noptim: {epochs: 3\n")
    _fails(capsys, ["search", "-c", str(bad)], str(bad), "invalid YAML")
    bad.write_text("- just\n- a list\n")
    _fails(capsys, ["search", "-c", str(bad)], "mapping")


def test_resume_of_a_folder_without_checkpoint(capsys, tmp_path):
    _fails(capsys, ["search", "--resume", str(tmp_path)], "checkpoint")


def test_corrupt_checkpoint(capsys, tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    _fails(capsys, ["search", "--resume", str(tmp_path)], "corrupt or truncated")


def test_plot_and_show_config(capsys, tmp_path):
    assert main(["plot", "DARTS_V2", "-o", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000
    _fails(capsys, ["plot", "NOT_A_CELL", "-o", str(tmp_path / "x.png")], "NOT_A_CELL")
    capsys.readouterr()
    assert main(["show-config", "fmnist-quick", "--set", "optim.epochs=2"]) == 0
    assert "epochs: 2" in capsys.readouterr().out


def test_plot_unknown_extension(capsys, tmp_path):
    _fails(capsys, ["plot", "DARTS_V2", "-o", str(tmp_path / "c.bmp")], ".png")

"""Compressed schedules: `model.tau_final` ends the annealing where the paper's 50 epochs end
it whatever the epoch count, and `optim.warmup_fraction` keeps PC-DARTS' 15/50 warm-up as a
fraction of any epoch count."""
import json

import pytest

from entrannas.arch import Temperature
from entrannas.config import ConfigError, load_config
from entrannas.data import load_dataset
from entrannas.search import build_supernet, run_search, tau_decay, warmup_epochs
from helpers import fails_with_one_line

PAPER_FINAL = 5.0 * 0.923 ** 49  # tau of the paper's 50th epoch (index 49)


def _cfg(*extra):
    return load_config("fmnist-quick", ["model.tau_decay=null", *extra])


def test_tau_final_reaches_the_papers_last_temperature_in_10_epochs():
    cfg = _cfg("model.tau0=5", f"model.tau_final={PAPER_FINAL!r}", "optim.epochs=10")
    decay = 0.923 ** (49 / 9)  # 10 epochs anneal as far as the paper's 50
    assert tau_decay(cfg) == pytest.approx(decay, rel=1e-12)
    net = build_supernet(cfg, load_dataset("fashion-mnist")[0].info)
    taus = [net.set_epoch(e) for e in range(10)]
    assert taus == pytest.approx([5.0 * decay ** e for e in range(10)], rel=1e-12)
    assert taus[0] == 5.0 and taus[-1] == pytest.approx(PAPER_FINAL, rel=1e-12)
    # The paper's own 50 epochs give back its decay.
    assert tau_decay(_cfg("model.tau0=5", f"model.tau_final={PAPER_FINAL!r}", "optim.epochs=50")) == \
        pytest.approx(0.923, rel=1e-12)


def test_tau_final_uses_the_methods_tau0_and_keeps_tau0_for_one_epoch():
    cfg = _cfg("model.tau0=null", "model.tau_final=0.5", "optim.epochs=3")
    assert tau_decay(cfg) == pytest.approx((0.5 / 5.0) ** 0.5)  # EnTranNAS' tau0 is 5
    assert Temperature.decay_reaching(5.0, 0.5, 1) == 1.0
    assert tau_decay(load_config("cifar10-entrannas")) == 0.923  # the paper's presets are unchanged
    assert load_config("cifar10-entrannas").model.tau_final is None


def test_both_annealing_keys_are_refused_with_one_line(capsys):
    with pytest.raises(ConfigError, match="tau_decay=null"):
        load_config("fmnist-quick", ["model.tau_decay=0.7"])  # the preset sets tau_final
    fails_with_one_line(capsys, ["search", "-c", "fmnist-quick", "--set", "model.tau_decay=0.7"],
                        "model.tau_final", "model.tau_decay")
    fails_with_one_line(capsys, ["search", "-c", "fmnist-quick", "--set", "optim.warmup_epochs=2",
                                 "--set", "optim.warmup_fraction=0.3"],
                        "optim.warmup_fraction", "optim.warmup_epochs")
    fails_with_one_line(capsys, ["search", "-c", "fmnist-quick", "--set", "optim.warmup_fraction=1.0"],
                        "optim.warmup_fraction")


@pytest.mark.parametrize("fraction,epochs,expected", [
    (0.3, 50, 15), (0.3, 10, 3), (0.3, 5, 2), (0.3, 3, 1), (0.3, 1, 0), (0.0, 10, 0),
    (0.9, 2, 1), (0.7, 45, 32)])
def test_warmup_fraction_rounds_half_up_and_leaves_an_architecture_epoch(fraction, epochs, expected):
    cfg = load_config("fmnist-quick", [f"optim.warmup_fraction={fraction}", f"optim.epochs={epochs}"])
    assert warmup_epochs(cfg) == expected
    assert warmup_epochs(load_config("cifar10-pcdarts")) == 15


def test_compressed_schedule_runs_as_its_resolved_schedule(tmp_path):
    """A search with tau_final and warmup_fraction is the search with the decay and warm-up
    epochs they resolve to: same metrics, step for step."""
    tiny = ["data.limit=96", "data.eval_limit=64", "model.C=4", "model.layers=3",
            "optim.batch_size=32", "optim.epochs=3", "run.tensorboard=false", "run.plots=false",
            "model.tau0=5"]
    a = _cfg(*tiny, "model.tau_final=0.5", "optim.warmup_fraction=0.34")
    b = _cfg(*tiny, "model.tau_final=null", f"model.tau_decay={(0.5 / 5.0) ** 0.5!r}",
             "optim.warmup_epochs=1")
    rows = {}
    for name, cfg in (("a", a), ("b", b)):
        run_search(cfg, tmp_path / name, quiet=True)
        rows[name] = [json.loads(l) for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        for r in rows[name]:
            r.pop("wall_time"), r.pop("peak_mem_gib")
    assert rows["a"] == rows["b"]
    assert [r["warmup"] for r in rows["a"]] == [True, False, False]
    assert [r["tau"] for r in rows["a"]] == pytest.approx([5.0, 5.0 * 0.1 ** 0.5, 0.5], rel=1e-12)
    assert "schedule: tau 5 x0.316228 per epoch -> 0.5 at the last epoch; 1 warm-up" in \
        (tmp_path / "a" / "log.txt").read_text()

"""The search you can run: determinism, kill-and-resume, the run folder, best of N seeds."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from entrannas.checkpoint import load_checkpoint
from entrannas.config import load_config
from entrannas import search as S
from entrannas.search import resume_search, run_search, run_search_seeds
from entrannas.supernet import SuperNet

TINY = ["data.limit=192", "data.eval_limit=128", "model.C=4", "model.layers=5", "optim.batch_size=32",
        "optim.epochs=3", "run.log_every=1", "run.tensorboard=false", "run.plots=false"]


def _cfg(*extra):
    return load_config("fmnist-quick", TINY + list(extra))


def _metrics(run_dir):
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    for r in rows:  # wall time and memory differ between runs by nature
        r.pop("wall_time"), r.pop("peak_mem_gib")
    return rows


def _weights(run_dir):
    return load_checkpoint(Path(run_dir) / "checkpoint.pt")["net"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted DST search (thresholds and topology change during it)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    run_search(_cfg("model.method=dst", "model.derivation=dst", "optim.arch_lr=0.05"), out, quiet=True)
    return out


def test_run_folder_has_every_file(reference):
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "genotype.json", "split.json", "checkpoint.pt",
                 "genotypes/epoch_000.json", "genotypes/epoch_002.json"):
        assert (reference / name).exists(), name
    rows = _metrics(reference)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "tau", "thresholds", "cells", "genotype", "lr"):
        assert key in rows[0], key
    # fmnist-quick anneals to its tau_final at the last of TINY's 3 epochs.
    assert [r["tau"] for r in rows] == pytest.approx([5.0, 5.0 * (0.09 / 5.0) ** 0.5, 0.09])
    assert rows[-1]["lr"] < rows[0]["lr"]
    # The final genotype is the one derived at the end, and each epoch's is kept.
    final = json.loads((reference / "genotype.json").read_text())
    last = json.loads((reference / "genotypes/epoch_002.json").read_text())
    assert final["normal"] == last["normal"] == rows[-1]["genotype"]["normal"]
    split = json.loads((reference / "split.json").read_text())
    assert split["weight"] == split["arch"] == 192


def test_same_seed_same_search(reference, tmp_path):
    out = tmp_path / "again"
    run_search(_cfg("model.method=dst", "model.derivation=dst", "optim.arch_lr=0.05"), out, quiet=True)
    assert _metrics(out) == _metrics(reference)


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(reference, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "entrannas", "search", "-c", "fmnist-quick", "-q", "--out", str(out),
           "--set", "model.method=dst", "--set", "model.derivation=dst", "--set", "optim.arch_lr=0.05",
           "--set", "run.checkpoint_every=1"]
    for s in TINY:
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    # Kill in the middle of the second epoch, after some mid-epoch checkpoints.
    while time.time() < deadline:
        log = (out / "log.txt").read_text() if (out / "log.txt").exists() else ""
        if "epoch 2/3 step 3/6" in log:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the search did not reach epoch 2: " + proc.stderr.read().decode())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 1 and 0 < state["step"] < 6, "expected a mid-epoch checkpoint"
    assert len(_metrics(out)) == 1
    result = resume_search(out, quiet=True)
    assert _metrics(out) == _metrics(reference)
    assert result.genotype.to_dict() == json.loads((reference / "genotype.json").read_text()) | {}
    ref_w, got_w = _weights(reference), _weights(out)
    assert ref_w.keys() == got_w.keys()
    assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path):
    out = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "entrannas", "search", "-c", "fmnist-quick", "-q", "--out", str(out)]
    for s in TINY:
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and "step 2/6" not in ((out / "log.txt").read_text() if (out / "log.txt").exists() else ""):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "--resume" in err.decode()
    state = load_checkpoint(out / "checkpoint.pt")
    assert (state["epoch"], state["step"]) >= (0, 2)
    result = resume_search(out, quiet=True)
    assert len(result.metrics) == 3


def test_best_of_seeds(tmp_path):
    result = run_search_seeds(_cfg("optim.epochs=1"), [0, 1], tmp_path / "seeds", quiet=True)
    table = json.loads((tmp_path / "seeds" / "seeds.json").read_text())
    accs = {r["seed"]: r["val_acc"] for r in table["runs"]}
    assert table["best_seed"] == max(accs, key=accs.get)
    best = json.loads((tmp_path / "seeds" / "genotype.json").read_text())
    chosen = json.loads((tmp_path / "seeds" / f"seed-{table['best_seed']}" / "genotype.json").read_text())
    assert best["normal"] == chosen["normal"] and best["reduce"] == chosen["reduce"]
    assert result.val_acc == accs[table["best_seed"]]


def test_seeds_in_parallel_processes_give_the_sequential_results(tmp_path):
    from entrannas.experiments.common import _threads_per_job
    # Each of 2 workers gets half the cores; the thread count moves a CPU search's sums (and
    # then, chaotically, its path), so the sequential run gets the same count.
    threads = torch.get_num_threads()
    torch.set_num_threads(_threads_per_job(2))
    try:
        seq = run_search_seeds(_cfg("optim.epochs=2"), [0, 1], tmp_path / "seq", quiet=True)
    finally:
        torch.set_num_threads(threads)
    par = run_search_seeds(_cfg("optim.epochs=2"), [0, 1], tmp_path / "par", quiet=True, jobs=2)
    a, b = (json.loads((r.run_dir / "seeds.json").read_text()) for r in (seq, par))
    assert [(r["seed"], r["val_acc"], Path(r["run_dir"]).name) for r in a["runs"]] == \
        [(r["seed"], r["val_acc"], Path(r["run_dir"]).name) for r in b["runs"]] and a["best_seed"] == b["best_seed"]
    assert par.genotype == seq.genotype and par.val_acc == seq.val_acc
    for s in (0, 1):  # every seed's folder: the same files and the same numbers
        one, two = seq.run_dir / f"seed-{s}", par.run_dir / f"seed-{s}"
        assert sorted(p.name for p in one.rglob("*")) == sorted(p.name for p in two.rglob("*"))
        assert _metrics(one) == _metrics(two)
        for g in (one / "genotypes").iterdir():
            assert g.read_text() == (two / "genotypes" / g.name).read_text()
    assert not list(tmp_path.rglob(".lock"))  # every folder was let go


def test_existing_run_is_never_overwritten(reference):
    from entrannas.rundir import RunError
    with pytest.raises(RunError, match="--resume"):
        run_search(_cfg(), reference, quiet=True)


def test_warmup_epochs_leave_the_architecture_alone(tmp_path):
    from entrannas.loop import seed_everything
    from entrannas.search import build_supernet
    from entrannas.data import load_dataset
    cfg = _cfg("optim.epochs=1", "optim.warmup_epochs=1")
    run_search(cfg, tmp_path / "warm", quiet=True)
    seed_everything(cfg.run.seed)
    fresh = build_supernet(cfg, load_dataset("fashion-mnist")[0].info)
    state = _weights(tmp_path / "warm")
    assert torch.equal(state["alpha_normal"], fresh.alpha_normal.detach())
    assert not torch.equal(state["cells.0.preprocess1.1.weight"], fresh.cells[0].preprocess1[1].weight.detach())


def test_resuming_a_finished_search_returns_the_genotype_it_saved(reference):
    """The temperature is not a weight: a resumed, already finished search must derive with
    the last epoch's temperature, not the initial one (DST prunes by it)."""
    from entrannas.genotype import Genotype
    saved = Genotype.from_json((reference / "genotype.json").read_text())
    again = resume_search(reference, quiet=True)
    assert again.genotype.to_dict()["normal"] == saved.to_dict()["normal"]
    assert again.genotype.to_dict()["reduce"] == saved.to_dict()["reduce"]


def test_a_resumed_step_updates_the_same_weights_as_an_uninterrupted_one():
    """A resumed run starts without gradient tensors. The candidates a Transit-cell did not
    select still get their momentum and weight-decay step, as in the run that never stopped,
    so the weights after a resume are the uninterrupted run's, bit for bit."""
    from entrannas.optim import optimizer_options
    from entrannas.search import search_step
    from entrannas.supernet import SuperNet

    def make():
        torch.manual_seed(0)
        net = SuperNet(method="entrannas", C=4, layers=5, num_classes=10, in_channels=1, engine_cells="first")
        w = torch.optim.SGD(net.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4,
                            **optimizer_options(torch.device("cpu")))
        a = torch.optim.Adam(net.arch_parameters(), lr=0.05, betas=(0.5, 0.999), weight_decay=1e-3)
        return net, w, a

    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 1, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g))
               for _ in range(6)]
    net, w, a = make()
    for b in batches:
        search_step(net, w, a, b, b)
    resumed, w2, a2 = make()
    for b in batches[:3]:
        search_step(resumed, w2, a2, b, b)
    state = {k: v.clone() for k, v in resumed.state_dict().items()}
    ws, as_ = w2.state_dict(), a2.state_dict()
    resumed, w2, a2 = make()  # a new process: no gradient tensors
    resumed.load_state_dict(state), w2.load_state_dict(ws), a2.load_state_dict(as_)
    for b in batches[3:]:
        search_step(resumed, w2, a2, b, b)
    for (name, x), y in zip(net.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(x, y), name


def test_metrics_count_the_steps_whose_derived_cell_changed(reference):
    """Transit-cells run the cell derived at each step; how often it changes is in the metrics
    (a kill and resume keeps the count: the resume test compares whole metric rows)."""
    rows = _metrics(reference)
    steps = 192 // 32
    assert all(0 <= r["selection_changes"] <= steps for r in rows)
    assert any(r["selection_changes"] > 0 for r in rows)  # arch lr 0.05 moves alpha at once
    assert "derived cell changed at" in (reference / "log.txt").read_text()


def test_each_validation_uses_statistics_measured_on_the_derived_cell(reference):
    """The search recalibrates BatchNorm before it validates (bnstats.py): recalibrating the
    saved super-net again on the same batches leaves every statistic as it is, whereas the
    statistics training alone leaves differ."""
    import yaml

    from entrannas.bnstats import batchnorm_statistics, recalibrate_batchnorm
    from entrannas.config import from_dict
    from entrannas.loop import build_loaders
    from entrannas.search import build_supernet

    cfg = from_dict(yaml.safe_load((reference / "config.yaml").read_text()), "search")
    assert cfg.optim.bn_recalibration == 8
    state = load_checkpoint(reference / "checkpoint.pt")
    data = build_loaders(cfg, torch.device("cpu"), search=True)
    net = build_supernet(cfg, data.info)
    net.load_state_dict(state["net"])
    net.set_epoch(state["epoch"] - 1)
    saved = [b.clone() for _, b in batchnorm_statistics(net)]
    recalibrate_batchnorm(net, data.train, cfg.optim.bn_recalibration, state["epoch"] - 1)
    for a, (_, b) in zip(saved, batchnorm_statistics(net)):
        torch.testing.assert_close(a, b)
    net.train()
    with torch.no_grad():
        net(next(iter(data.train))[0])  # one ordinary training forward (momentum 0.1)
    assert any(not torch.allclose(a, b) for a, (_, b) in zip(saved, batchnorm_statistics(net)))


class _SharedGradients(torch.nn.Module):
    """Weights whose gradients autograd hands over shared (p1 + p2: one tensor for both) or
    broadcast (p3.sum(): a stride-0 tensor), the cases backward's accumulation would copy."""

    def __init__(self, broadcast: bool):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.p1 = torch.nn.Parameter(torch.randn(10, generator=g))
        self.p2 = torch.nn.Parameter(torch.randn(10, generator=g))
        self.p3 = torch.nn.Parameter(torch.randn(3, generator=g))
        self.broadcast = broadcast

    def weight_parameters(self):
        return [self.p1, self.p2, self.p3]

    def arch_parameters(self):
        return []

    def forward(self, x):
        logits = x * (self.p1 + self.p2)
        return logits + self.p3.sum() if self.broadcast else logits


@pytest.mark.parametrize("broadcast", [False, True])
def test_a_weight_step_with_shared_or_broadcast_gradients_is_the_plain_clipped_sgd_step(broadcast):
    x = torch.randn(8, 10, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 10
    ours, ref = _SharedGradients(broadcast), _SharedGradients(broadcast)
    opt = torch.optim.SGD(ours.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    S.search_step(ours, opt, None, (x, y), None, grad_clip=0.01)  # the clip scales every gradient
    ref_opt = torch.optim.SGD(ref.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    F.cross_entropy(ref(x), y).backward()
    for p in ref.weight_parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    torch.nn.utils.clip_grad_norm_(ref.weight_parameters(), 0.01)
    ref_opt.step()
    for a, b in zip(ours.weight_parameters(), ref.weight_parameters()):
        torch.testing.assert_close(a, b)


def test_each_step_keeps_only_what_its_own_gradients_need():
    """Peak memory: the architecture forward saves what alpha/beta's gradients need and no
    input kept for a weight gradient, and what its partial backward left unused (the stem, the
    first cell's ops) is released before the weight step's forward; the weight forward keeps
    nothing for alpha/beta's gradients."""
    import weakref

    from entrannas.optim import optimizer_options
    from entrannas.search import search_step
    from entrannas.supernet import SuperNet

    torch.manual_seed(0)
    net = SuperNet(method="entrannas", C=8, layers=5, num_classes=10, in_channels=1)
    w = torch.optim.SGD(net.weight_parameters(), lr=0.1, momentum=0.9, **optimizer_options(torch.device("cpu")))
    a = torch.optim.Adam(net.arch_parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    val, train = [(torch.randn(16, 1, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g))
                  for _ in range(2)]
    # Module tensors and the plans' index tensors outlive any step by design.
    params = {id(p) for p in net.parameters()} | {id(b) for b in net.buffers()}
    saved = [[], []]  # per forward: (weak reference, bytes) of each tensor autograd saved
    alive_at_weight_forward = []

    def pack(t):
        if t.is_floating_point() and id(t) not in params and t is not val[0] and t is not train[0]:
            saved[len(calls) - 1].append((weakref.ref(t), t.numel() * t.element_size()))
        return t

    calls = []

    def pre_forward(module, args):
        calls.append(1)
        if len(calls) == 2:
            alive_at_weight_forward.extend(r for r, _ in saved[0] if r() is not None)

    hook = net.register_forward_pre_hook(pre_forward)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        search_step(net, w, a, train, val)
    hook.remove()
    arch_bytes, weight_bytes = (sum(n for _, n in s) for s in saved)
    assert arch_bytes < 0.75 * weight_bytes, (arch_bytes, weight_bytes)
    assert not [tuple(r().shape) for r in alive_at_weight_forward]
    # Nor does the weight step keep the Engine-cells' op outputs for alpha's gradient.
    saved[1].clear()
    calls[:] = [1, 1]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.cross_entropy(net(train[0]), train[1])
    both_bytes = sum(n for _, n in saved[1])
    assert weight_bytes < 0.95 * both_bytes, (weight_bytes, both_bytes)


def test_the_cell_picture_is_redrawn_only_when_the_derived_cell_changes(tmp_path, monkeypatch):
    """cells.png costs 0.2-1.1 s an epoch: it is drawn when the derived cell changes, titled
    with the epoch since which it is derived, and once more by a resumed process, which finds
    that epoch in the saved genotypes (so it shows what an uninterrupted run shows)."""
    from types import SimpleNamespace

    from entrannas import plot
    from entrannas.genotype import BUILTINS

    drawn = []

    def fake_plot(genotype, path, title=None):
        drawn.append((genotype.normal, title))
        Path(path).write_bytes(b"png")
    monkeypatch.setattr(plot, "plot_genotype", fake_plot)
    run = SimpleNamespace(file=lambda name: tmp_path / name)
    (tmp_path / "genotypes").mkdir()
    a, b = BUILTINS["DARTS_V2"], BUILTINS["PDARTS"]
    b_again = type(b)(b.normal, b.reduce, b.space, {"note": "other metadata"})  # the same cells

    def epoch(search, e, g):  # as end_epoch: the epoch's genotype is saved, then drawn
        g.save(tmp_path / f"genotypes/epoch_{e:03d}.json")
        search.draw_cells(g, e)

    search = SimpleNamespace(run=run, drawn=None)
    search.draw_cells = S._Search.draw_cells.__get__(search)
    for e, g in enumerate([a, a, b, b_again]):
        epoch(search, e, g)
    assert drawn == [(a.normal, "derived since epoch 1"), (b.normal, "derived since epoch 3")]
    # A resumed process draws once, with the epoch since which the cell is derived.
    resumed = SimpleNamespace(run=run, drawn=None)
    resumed.draw_cells = S._Search.draw_cells.__get__(resumed)
    epoch(resumed, 4, b)
    epoch(resumed, 5, b)
    assert drawn[2:] == [(b.normal, "derived since epoch 3")]
    # A deleted picture is drawn again.
    (tmp_path / "cells.png").unlink()
    epoch(resumed, 6, b)
    assert drawn[3:] == [(b.normal, "derived since epoch 3")]


def test_a_dst_search_annealed_below_0_05_says_its_cell_will_fill_up_again(reference, tmp_path):
    """docs/design.md, "DST at a small temperature": the paper's ImageNet DST schedule ends at
    tau 0.0057, where DST keeps every edge; the log says so before the search spends its time."""
    assert "fills up again" not in (reference / "log.txt").read_text()  # ends at tau 0.09
    out = tmp_path / "cold"
    run_search(_cfg("model.method=dst", "model.derivation=dst", "optim.epochs=2", "model.tau0=1.0",
                    "model.tau_final=0.0057"), out, quiet=True)
    log = (out / "log.txt").read_text()
    assert "fills up again" in log and "model.tau_final=0.1" in log


def test_a_dst_search_without_a_bottleneck_says_its_transit_sums_are_not_normalised(reference, tmp_path):
    """docs/design.md, "DST without a bottleneck": with every connection active, a Transit-cell
    node sums up to 35 ops and nothing normalises it, so the first logits are ~100x too large;
    the log says so, and says nothing where the bottleneck's expansion BatchNorm is there."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 14, 14), torch.randint(0, 10, (32,))
    losses = {}
    for b in (1, 2):
        net = SuperNet(C=4, layers=5, num_classes=10, in_channels=1, method="dst", bottleneck=b)
        with torch.no_grad():
            losses[b] = F.cross_entropy(net(x), y).item()
    assert losses[1] > 30 and losses[2] < 3, losses  # the reason for the note
    assert "without a bottleneck" not in (reference / "log.txt").read_text()  # bottleneck 2
    out = tmp_path / "flat"
    run_search(_cfg("model.method=dst", "model.derivation=dst", "model.bottleneck=1", "optim.epochs=1"),
               out, quiet=True)
    assert "EnTranNAS-DST without a bottleneck (model.bottleneck=1)" in (out / "log.txt").read_text()


def test_lr_warmup_ramps_the_weights_learning_rate_of_a_search(tmp_path):
    """optim.lr_warmup_epochs (PC-DARTS' ImageNet search): (e + 1) / n of the cosine's rate."""
    cfg = _cfg("optim.lr_warmup_epochs=2")
    run_search(cfg, tmp_path / "ramp", quiet=True)
    lrs = [r["lr"] for r in _metrics(tmp_path / "ramp")]
    cosine = [S.cosine_lr(cfg.optim.lr, cfg.optim.lr_min, e, 3) for e in range(3)]
    assert lrs == pytest.approx([cosine[0] / 2, cosine[1], cosine[2]])

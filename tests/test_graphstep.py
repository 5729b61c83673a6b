"""The CUDA-graph search step (graphstep.py), as far as a CPU can check it: the cache's
eager-capture-replay rule, its bound and flushes, failed captures, and that the graphed
phases (run through the CPU stand-in backend, which replays a captured function on its static
inputs) compute the eager step bit for bit, in a whole search too."""
import gc
import json
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from entrannas import accel, cpuconv, narrowbn
from entrannas.config import ConfigError, load_config
from entrannas.graphstep import Eager, GraphCache, GraphedSearchStep
from entrannas.loop import make_run_folder
from entrannas.opplan import Plan, clear_plan_cache
from entrannas.optim import optimizer_options
from entrannas.search import _drive, _Search, run_search, search_step
from entrannas.supernet import SuperNet
from helpers import fails_with_one_line


class Recording(Eager):
    """The stand-in backend, counting what it is asked to do."""

    def __init__(self, fail_on=()):
        self.captures, self.released, self.fail_on = [], 0, fail_on

    def capture(self, fn):
        if len(self.captures) in self.fail_on:
            self.captures.append(None)
            raise RuntimeError("operation not permitted when stream is capturing\nmore detail")
        graph = super().capture(fn)
        self.captures.append(graph)
        outer = self

        class Counted(type(graph)):
            def release(self):
                outer.released += 1
                super().release()
        graph.__class__ = Counted
        return graph


def test_a_key_runs_eagerly_then_is_captured_then_replays_on_new_inputs():
    backend, calls = Recording(), []
    cache = GraphCache(2, backend)

    def fn(x):
        calls.append(x)
        return (x * 2,)
    a = torch.tensor([1.0])
    assert cache.run("k", fn, a)[0].item() == 2 and calls[-1] is a  # eager: on the tensor itself
    assert not backend.captures
    assert cache.run("k", fn, torch.tensor([3.0]))[0].item() == 6  # captured, then run once
    assert len(backend.captures) == 1 and calls[-1] is not a
    static = calls[-1]
    assert cache.run("k", fn, torch.tensor([5.0]))[0].item() == 10  # replayed: inputs copied in
    assert calls[-1] is static and len(backend.captures) == 1
    assert cache.take_counts() == {"eager": 1, "captured": 1, "replayed": 1, "hit_rate": 1 / 3}
    assert cache.take_counts()["hit_rate"] == 0.0  # counts start again after each take


def test_the_cache_keeps_the_most_recently_used_graphs_and_a_flush_drops_them_all():
    backend = Recording()
    cache = GraphCache(2, backend)
    x = torch.zeros(1)
    for key in "aabbaacc":  # c's capture pushes out b, the least recently used
        cache.run(key, lambda t: (t,), x)
    assert list(cache.graphs) == ["a", "c"] and backend.released == 1
    cache.run("b", lambda t: (t,), x)  # evicted: seen afresh, so eager again
    assert cache.counts["eager"] == 4 and "b" not in cache.graphs
    cache.flush()
    assert not cache.graphs and backend.released == 3
    cache.run("a", lambda t: (t,), x)
    assert not cache.graphs  # after a flush a key is new again
    with pytest.raises(ValueError):
        GraphCache(0, backend)


def test_a_failed_capture_leaves_its_key_eager_and_says_so_once():
    lines = []
    cache = GraphCache(4, Recording(fail_on=(0, 1)), lines.append)
    x = torch.ones(1)
    outs = [cache.run(k, lambda t: (t + 1,), x)[0].item() for k in "aaabbb"]
    assert outs == [2.0] * 6  # every step still ran, eagerly
    assert cache.refused == {"a", "b"} and not cache.graphs
    assert cache.counts == {"eager": 6, "captured": 0, "replayed": 0}
    assert len(lines) == 1 and "operation not permitted" in lines[0] and "\n" not in lines[0]


def test_running_out_of_memory_in_a_capture_drops_the_graphs_and_keeps_fewer():
    class OutOfMemoryOnThird(Recording):
        def capture(self, fn):
            if len(self.captures) == 2:
                self.captures.append(None)
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().capture(fn)
    lines, backend = [], OutOfMemoryOnThird()
    cache = GraphCache(4, backend, lines.append)
    x = torch.ones(1)
    for key in "aabbcc":
        assert cache.run(key, lambda t: (t * 3,), x)[0].item() == 3.0
    assert not cache.graphs and cache.capacity == 2 and backend.released == 2
    assert "out of GPU memory" in lines[0] and "at most 2" in lines[0]
    for key in "cc":  # captured again later, within the smaller bound
        cache.run(key, lambda t: (t,), x)
    assert list(cache.graphs) == ["c"]


class Recorder(Eager):
    """Like torch.cuda.graph: runs the function once while capturing (here, outside any graph)."""

    def capture(self, fn):
        fn()
        return super().capture(fn)


def test_a_captured_graph_holds_the_plans_whose_index_tensors_its_kernels_read():
    """A CUDA graph's kernels read the op banks' index tensors by address: when the plan cache
    evicts a plan (or is cleared) while a graph that used it is cached, the graph must keep
    the plan alive, or a later allocation reuses that memory and replays read garbage."""
    clear_plan_cache()
    net, _, _ = _net("entrannas")
    x = torch.randn(2, 1, 8, 8)
    cache = GraphCache(1, Recorder())
    for _ in range(2):  # eager, then captured
        cache.run("k", lambda t: (net(t),), x)
    held = cache.graphs["k"][2]
    assert held and all(isinstance(p, Plan) for p in held)
    refs = [weakref.ref(p) for p in held]
    del held
    clear_plan_cache()
    gc.collect()
    assert all(r() is not None for r in refs)  # out of the plan cache, alive in the graph's entry
    cache.flush()
    gc.collect()
    assert all(r() is None for r in refs)  # and freed with the graph: nothing leaks


def _net(method, **kw):
    torch.manual_seed(0)
    net = SuperNet(method=method, C=4, layers=4, num_classes=10, in_channels=1, **kw)
    with torch.no_grad():  # clear margins, so the derived cell holds still and graphs replay
        for p in net.arch_parameters():
            p.copy_(3 * torch.randn_like(p))
    w = torch.optim.SGD(net.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4,
                        **optimizer_options(torch.device("cpu")))
    a = torch.optim.Adam(net.arch_parameters(), lr=3e-3, betas=(0.5, 0.999), weight_decay=1e-3,
                         **optimizer_options(torch.device("cpu")))
    return net, w, a


@pytest.mark.parametrize("method,kw", [("entrannas", {}), ("dst", {}), ("darts", {}),
                                       ("pcdarts", {}), ("entrannas", {"engine_cells": "last"})])
def test_graphed_phases_give_the_eager_steps_bit_for_bit(method, kw):
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g))
               for _ in range(4)]
    plan = [(b, True) for b in batches] * 2 + [(batches[0], False)] * 2  # and warm-up steps
    net, w, a = _net(method, **kw)
    eager = []
    for i, (b, arch) in enumerate(plan):
        if i == 6:  # a new epoch: another learning rate and temperature
            net.set_epoch(1), w.param_groups[0].update(lr=0.05)
        eager.append(search_step(net, w, a if arch else None, b, b))
    net2, w2, a2 = _net(method, **kw)
    graphed = GraphedSearchStep(net2, w2, a2, 5.0, capacity=8, backend=Eager())
    out, selections = [], []
    for i, (b, arch) in enumerate(plan):
        if i == 6:
            net2.set_epoch(1), w2.param_groups[0].update(lr=0.05)
            graphed.new_epoch()
        out.append(graphed.step(b, b, arch))
        selections.append(net2.last_selection)
    for (l1, z1), (l2, z2) in zip(eager, out):
        assert torch.equal(l1, l2) and torch.equal(z1, z2)
    for (name, x), y in zip(net.state_dict().items(), net2.state_dict().values()):
        assert torch.equal(x, y), name
    for s1, s2 in zip(w.state_dict()["state"].values(), w2.state_dict()["state"].values()):
        assert torch.equal(s1["momentum_buffer"], s2["momentum_buffer"])
    if net2.has_transit():
        assert net2.last_selection == net.last_selection
    counts = graphed.cache.take_counts()
    assert counts["replayed"] > 0 and counts["captured"] > 0  # the captured path did run


class CaptureRules(TorchDispatchMode):
    """What a CUDA graph capture refuses, as far as a CPU run shows it: a device value read on
    the host (item, bool, float: `_local_scalar_dense`; `nonzero`, whose shape is data), a
    tensor made from host data (`torch.tensor`: `lift_fresh`), a copy across devices
    (`_to_copy` given a device). On CUDA any of them inside a capture fails it, and the derived
    cell then runs eagerly for the whole search: nothing is wrong but the speed."""
    REFUSED = {"_local_scalar_dense", "nonzero", "lift_fresh", "lift_fresh_copy", "is_nonzero",
               "equal", "masked_select", "unique", "_unique2", "repeat_interleave"}

    def __init__(self, found):
        super().__init__()
        self.found = found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.REFUSED or (name == "_to_copy" and (kwargs or {}).get("device") is not None):
            self.found.append(name)
        return func(*args, **(kwargs or {}))


class Checked(Eager):
    """The stand-in backend, running each captured function under CaptureRules (and with the
    host reads that dispatch no op, tolist/numpy/cpu, recorded too). `key` is the phase being
    run: the Adam phase is left out, since the CUDA step's Adam is the capturable one, which a
    CPU cannot run."""

    def __init__(self, monkeypatch):
        self.found, self.key, self.checked, self.checking = [], None, 0, False
        for name in ("tolist", "numpy", "cpu"):
            real = getattr(torch.Tensor, name)

            def host_read(t, *a, _real=real, _name=name, **k):
                if self.checking:
                    self.found.append(_name)
                return _real(t, *a, **k)
            monkeypatch.setattr(torch.Tensor, name, host_read)

    def capture(self, fn):
        if self.key[0] == "adam":
            return super().capture(fn)

        def checked():
            self.checking, self.checked = True, self.checked + 1
            try:
                with CaptureRules(self.found):
                    return fn()
            finally:
                self.checking = False
        return super().capture(checked)


@pytest.mark.parametrize("method,kw,narrow_bn", [
    ("entrannas", {}, "native"), ("entrannas", {}, "var_mean"), ("dst", {}, "native"),
    ("darts", {}, "native"), ("pcdarts", {}, "native"), ("entrannas", {"engine_cells": "last"}, "native")])
def test_the_captured_phases_do_nothing_a_cuda_graph_capture_refuses(method, kw, narrow_bn, monkeypatch):
    """The forward, backward, clip and SGD step that a CUDA graph records, on the GPU's code
    path (plain calls, not the CPU forms): no host read of a device value, no tensor from host
    data. The eager step may do either (it is never captured); a capture may not."""
    monkeypatch.setattr(cpuconv, "ENABLED", False)  # what a GPU runs
    narrowbn.set_form(narrow_bn)
    try:
        net, w, a = _net(method, **kw)
        backend = Checked(monkeypatch)
        graphed = GraphedSearchStep(net, w, a, 5.0, capacity=8, backend=backend)
        run = graphed.cache.run

        def keyed(key, fn, *tensors):
            backend.key = key
            return run(key, fn, *tensors)
        monkeypatch.setattr(graphed.cache, "run", keyed)
        g = torch.Generator().manual_seed(1)
        b = (torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g))
        for _ in range(4):
            graphed.step(b, b, True)
    finally:
        narrowbn.set_form("native")
    assert backend.checked >= 4  # the arch and weight phases, captured and replayed
    assert not backend.found, sorted(set(backend.found))


def test_a_search_with_graphs_is_the_eager_search_and_reports_its_replays(tmp_path):
    over = ["data.dataset=synthetic", "data.synthetic_size=96", "data.eval_limit=64", "model.C=4",
            "model.layers=4", "optim.batch_size=16", "optim.epochs=2", "optim.warmup_epochs=0",
            "optim.warmup_fraction=null", "optim.bn_recalibration=0", "run.tensorboard=false",
            "run.plots=false"]
    cfg = load_config("fmnist-quick", over)
    plain = run_search(cfg, tmp_path / "eager", quiet=True)
    graphed = _Search(load_config("fmnist-quick", over), graph_backend=Eager())
    result = _drive(graphed, make_run_folder(graphed.cfg, tmp_path / "graphs", quiet=True))
    assert result.genotype == plain.genotype
    rows = [json.loads(l) for l in (tmp_path / "graphs" / "metrics.jsonl").read_text().splitlines()]
    for r, p in zip(rows, plain.metrics):
        counts = r.pop("cuda_graphs")
        assert counts["eager"] + counts["captured"] + counts["replayed"] == 3 * 3  # 3 steps, 3 phases
        for k in ("train_loss", "train_acc", "val_loss", "val_acc", "genotype", "selection_changes"):
            assert r[k] == p[k], k
    assert "CUDA graph hit rate" in (tmp_path / "graphs" / "log.txt").read_text()


def test_cuda_graphs_are_refused_off_cuda_and_outside_a_search(capsys, tmp_path):
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        _Search(load_config("fmnist-quick", ["run.cuda_graphs=true", "run.device=cpu"]))
    fails_with_one_line(capsys, ["search", "-c", "fmnist-quick", "--set", "run.cuda_graphs=true",
                                 "--out", str(tmp_path / "s")], "run.cuda_graphs", "CUDA")
    assert not (tmp_path / "s").exists()
    fails_with_one_line(capsys, ["search", "-c", "fmnist-quick", "--set", "run.graph_cache=0",
                                 "--out", str(tmp_path / "s")], "run.graph_cache")
    with pytest.raises(ConfigError, match="does not use it"):  # target-network training
        accel.check(load_config("fmnist-eval", ["run.cuda_graphs=true"]).run, torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["entrannas", "dst", "darts"])
def test_on_cuda_the_captured_step_follows_the_eager_one(method):
    """The real backend: steps replayed from CUDA graphs end where the eager steps end (float32,
    TF32 off; not bit for bit, since cuDNN may pick other algorithms inside a capture)."""
    from entrannas.graphstep import CudaGraphs
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")

    def make():
        torch.manual_seed(0)
        net = SuperNet(method=method, C=8, layers=5, num_classes=10, in_channels=3).to(dev)
        with torch.no_grad():
            for p in net.arch_parameters():
                p.copy_(3 * torch.randn_like(p))
        w = torch.optim.SGD(net.weight_parameters(), lr=0.05, momentum=0.9, weight_decay=3e-4, fused=True)
        a = torch.optim.Adam(net.arch_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3,
                             fused=True, capturable=True)
        return net, w, a
    g = torch.Generator(device=dev).manual_seed(1)
    batches = [(torch.randn(32, 3, 16, 16, device=dev, generator=g),
                torch.randint(0, 10, (32,), device=dev, generator=g)) for _ in range(2)]
    net, w, a = make()
    graphed = GraphedSearchStep(net, w, a, 5.0, capacity=4, backend=CudaGraphs())
    net2, w2, a2 = make()
    for i in range(8):
        b = batches[i % 2]
        l1, _ = graphed.step(b, b, True)
        l2, _ = search_step(net2, w2, a2, b, b)
        assert torch.allclose(l1, l2, rtol=1e-4, atol=1e-5), (i, l1, l2)
    torch.cuda.synchronize()
    counts = graphed.cache.take_counts()
    assert counts["replayed"] >= 8, counts
    for (name, x), y in zip(net.state_dict().items(), net2.state_dict().values()):
        if x.is_floating_point():
            assert torch.allclose(x, y, rtol=1e-3, atol=1e-5), name

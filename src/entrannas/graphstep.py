"""The search step as CUDA graphs: captured once per derived cell, then replayed.

A search step launches thousands of small kernels, and on a GPU the host's launching, not the
arithmetic, sets its time. A CUDA graph records a step's kernels once and replays them in one
launch. What a step computes depends on the derived cell (which candidate paths the
Transit-cells run, and for DST which ops the Engine-cells compute), so each derived cell gets
graphs of its own, kept in a bounded cache:

    arch    the validation batch's forward and backward: alpha/beta gradients into fixed
            buffers, and a flag saying whether they are finite
    adam    the architecture optimiser's step (Adam, capturable)
    weight  the training batch's forward and backward, the gradient clip and the SGD step

The arch and weight graphs are keyed by the derived cell and the batch shape. A key seen for the
first time runs eagerly (cuDNN picks its algorithms and the op banks build their index
tensors, neither of which may happen during a capture); the second time it is captured and
replayed; after that it is replayed. A graph holds the op-bank plans it was captured with:
its kernels read their index tensors by address, so the plan cache's evictions must not free
them. The learning rate and the temperature are constants inside the recorded kernels, so the
cache is emptied when an epoch changes them. A capture that fails
leaves that key eager for the rest of the run, and says why once in the log.

The phases compute exactly what `search.search_step` computes (the tests run them through a
CPU stand-in for the graph backend and compare every weight, bit for bit); the finite check
on alpha/beta's gradients happens on the host after the arch graph, before the Adam graph.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict

import torch
import torch.nn.functional as F

from .opplan import plans_in_use
from .optim import clip_grad_norm_
from .supernet import frozen

__all__ = ["GraphedSearchStep", "GraphCache", "CudaGraphs", "Eager"]


class CudaGraphs:
    """The real backend: torch.cuda.CUDAGraph, all graphs in one memory pool.

    Sharing the pool is safe here because no two graphs' memory is ever in use at once: the
    graphs replay one at a time on one stream, their inputs and the gradient buffers live
    outside the pool, and each graph's outputs are read (copied, or turned into a Python
    number) before any other graph replays. Without it every cached graph would hold a
    step's activations of its own."""

    def __init__(self):
        self.pool = None

    class _Graph:
        def __init__(self, fn, backend):
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=backend.pool):  # records on a side stream; runs nothing
                self.outputs = fn()
            if backend.pool is None:
                backend.pool = self.graph.pool()

        def replay(self):
            self.graph.replay()
            return self.outputs

        def release(self):
            self.graph.reset()
            self.outputs = None

    def capture(self, fn):
        return self._Graph(fn, self)


class Eager:
    """A stand-in backend for CPUs and tests: a "graph" that calls its function again on the
    same static inputs, so the cache's bookkeeping (static input copies, eviction, flushes)
    runs exactly as on CUDA and its results can be compared with the eager step."""

    class _Graph:
        def __init__(self, fn):
            self.fn = fn

        def replay(self):
            return self.fn()

        def release(self):
            self.fn = None

    def capture(self, fn):
        return self._Graph(fn)


class GraphCache:
    """Graphs by key, least recently used first out. `run(key, fn, *tensors)` returns fn's
    outputs: eagerly the first time a key is seen, from a new capture the second time, by
    replay after that. Captured graphs read copies of `tensors` (their static inputs); their
    outputs are overwritten by the next replay of the same graph."""

    def __init__(self, capacity: int, backend, log=None):
        if capacity < 1:
            raise ValueError(f"the graph cache needs room for at least one graph, got {capacity}")
        self.capacity, self.backend, self.log = capacity, backend, log
        self.graphs: OrderedDict = OrderedDict()  # key -> (graph, static inputs, plans it reads)
        self.seen: OrderedDict = OrderedDict()  # keys run eagerly once, not yet captured
        self.refused: set = set()  # keys whose capture failed: eager from then on
        self.counts = {"eager": 0, "captured": 0, "replayed": 0}

    def run(self, key, fn, *tensors):
        entry = self.graphs.get(key)
        if entry is not None:
            graph, static, _ = entry
            self.graphs.move_to_end(key)
            for s, t in zip(static, tensors):
                s.copy_(t)
            self.counts["replayed"] += 1
            return graph.replay()
        if key in self.refused or key not in self.seen:
            self._remember(key)
            self.counts["eager"] += 1
            return fn(*tensors)
        static = tuple(t.clone() for t in tensors)
        try:
            with plans_in_use() as plans:  # held with the graph: its kernels read their tensors
                graph = self.backend.capture(lambda: fn(*static))
        except torch.OutOfMemoryError:
            # The cached graphs hold too much: drop them and keep fewer from now on.
            self.flush()
            self.capacity = max(1, self.capacity // 2)
            if self.log is not None:
                self.log(f"out of GPU memory while capturing a CUDA graph: the cache now keeps "
                         f"at most {self.capacity} (run.graph_cache)")
            self.counts["eager"] += 1
            return fn(*tensors)
        except RuntimeError as err:
            # A capture only records kernels: nothing has run, so the step is run eagerly.
            self.refused.add(key)
            if self.log is not None and len(self.refused) == 1:
                self.log(f"CUDA graph capture failed, this derived cell runs eagerly: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}")
            self.counts["eager"] += 1
            return fn(*tensors)
        self.seen.pop(key, None)
        self.graphs[key] = (graph, static, plans)
        while len(self.graphs) > self.capacity:
            _, (old, _, _) = self.graphs.popitem(last=False)
            old.release()
        self.counts["captured"] += 1
        return graph.replay()

    def _remember(self, key) -> None:
        self.seen[key] = None
        self.seen.move_to_end(key)
        while len(self.seen) > 4 * self.capacity:  # a selection that keeps changing
            self.seen.popitem(last=False)

    def flush(self) -> None:
        """Drop every graph (their constants changed); keys must be seen afresh."""
        for graph, _, _ in self.graphs.values():
            graph.release()
        self.graphs.clear()
        self.seen.clear()

    def take_counts(self) -> dict:
        """The counts since the last call, and the share of phases that replayed."""
        c = dict(self.counts)
        n = sum(c.values())
        c["hit_rate"] = c["replayed"] / n if n else 0.0
        self.counts = {k: 0 for k in self.counts}
        return c


class GraphedSearchStep:
    """`search_step` (search.py) in three graphed phases; see the module docstring.

    `step(train_batch, val_batch, arch)` does what `search_step(net, w_opt, a_opt if arch else
    None, ...)` does and returns the same (loss, logits). `new_epoch()` must be called after the
    learning rate or the temperature changed. The optimisers must be the ones built for this
    net; on CUDA the Adam one must be `capturable=True`. Not for torchrun (the all-reduces are
    not in the graphs)."""

    def __init__(self, net, w_opt, a_opt, grad_clip: float = 5.0, capacity: int = 8,
                 backend=None, log=None):
        self.net, self.w_opt, self.a_opt, self.grad_clip = net, w_opt, a_opt, grad_clip
        self.weights, self.arch = net.weight_parameters(), net.arch_parameters()
        # Fixed gradient buffers: every graph writes into the same ones, which the optimisers'
        # recorded kernels read (p.grad may be replaced elsewhere; these stay alive here).
        self.w_grads = [torch.zeros_like(p) for p in self.weights]
        self.a_grads = [torch.zeros_like(p) for p in self.arch]
        self.keyed = net.has_transit() or net.derivation == "dst"
        self.cache = GraphCache(capacity, backend if backend is not None else CudaGraphs(), log)

    def new_epoch(self) -> None:
        self.cache.flush()

    def selection(self):
        """The derived cell the next forward runs (None where no cell depends on it)."""
        if not self.keyed:
            return None
        with torch.no_grad():
            return self.net.arch_state().selection

    @staticmethod
    def _key(selection) -> tuple | None:
        return None if selection is None else tuple(sorted(selection.items()))

    def step(self, train_batch, val_batch, arch: bool):
        net = self.net
        if arch:
            xv, yv = val_batch
            sel = self.selection()
            finite, arch_loss = self.cache.run(("arch", self._key(sel), tuple(xv.shape)),
                                               lambda x, y: self._arch_phase(sel, x, y), xv, yv)
            if not bool(finite):
                value = float(arch_loss)
                raise FloatingPointError(f"the architecture loss became {value}"
                                         if value != value or abs(value) == float("inf")
                                         else "the architecture gradients became non-finite")
            for p, g in zip(self.arch, self.a_grads):
                p.grad = g
            self.cache.run(("adam",), self._adam_phase)
        xt, yt = train_batch
        sel = self.selection()
        if sel is not None and net.has_transit():
            net.last_selection = sel
        for p, g in zip(self.weights, self.w_grads):
            p.grad = g
        loss, logits = self.cache.run(("weight", self._key(sel), tuple(xt.shape)),
                                      lambda x, y: self._weight_phase(sel, x, y), xt, yt)
        return loss.clone(), logits.clone()  # the next replay overwrites the graph's outputs

    # -- the phases: device work only, no host synchronisation ----------------------------
    def _arch_phase(self, sel, x, y):
        net = self.net
        with net.given_selection(sel), frozen(self.weights):  # as search_step
            loss = F.cross_entropy(net(x), y) + net.dst_regulariser()
        grads = torch.autograd.grad(loss, self.arch, allow_unused=True)
        # Every alpha/beta feeds an Engine-cell, so none is unused in practice; a zero keeps
        # the Adam graph's set of tensors fixed if one ever were.
        _into(self.a_grads, grads)
        finite = torch.stack([torch.isfinite(g).all() for g in grads if g is not None]).all()
        return finite, loss.detach()

    def _adam_phase(self):
        with warnings.catch_warnings():  # "capturable=True can impair performance" when eager
            warnings.simplefilter("ignore", UserWarning)
            self.a_opt.step()
        return ()

    def _weight_phase(self, sel, x, y):
        net = self.net
        with net.given_selection(sel), frozen(self.arch):  # as search_step
            logits = net(x)
        loss = F.cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, self.weights, allow_unused=True)
        # Unused weights get a zero gradient, stepped like any other (search_step's rule).
        _into(self.w_grads, grads)
        clip_grad_norm_(self.weights, self.grad_clip)
        self.w_opt.step()
        return loss.detach(), logits.detach()


def _into(buffers, grads) -> None:
    """Copy each gradient into its buffer, zeroing the buffers of those that are None."""
    used = [(b, g) for b, g in zip(buffers, grads) if g is not None]
    unused = [b for b, g in zip(buffers, grads) if g is None]
    if used:
        torch._foreach_copy_([b for b, _ in used], [g for _, g in used])
    if unused:
        torch._foreach_zero_(unused)

"""The op banks compute exactly what the one-call-per-op cells compute: same outputs, input
gradients, coefficient gradients, weight gradients and BatchNorm statistics (fp32, 1e-5), for
every op type, Engine- and Transit-cells, with and without feature sharing and the bottleneck."""
import copy

import pytest
import torch

from entrannas import SuperNet
from entrannas.cells import SearchCell
from entrannas.genotype import Genotype
from entrannas.opbank import BankedCell
from entrannas.opplan import clear_plan_cache, get_plan, plan_cache_info
from entrannas.ops import op_names
from entrannas.genotype import CellGenotype
from helpers import DST_NODES

DST_CELL = CellGenotype(DST_NODES)

TOL = 1e-5


def _randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
        for name, b in module.named_buffers():
            if "running_var" in name:
                b.uniform_(0.5, 2.0)
            elif "running_mean" in name:
                b.normal_(0, 0.2)


def _pair(space, sharing, bottleneck, reduction, reduction_prev, C=8, partial=1):
    names = op_names(space)
    args = (names, 12, 12, C, reduction, reduction_prev, sharing, bottleneck, partial)
    plain = SearchCell(*args)
    _randomise(plain)
    return names, plain, BankedCell(*args).load_from_plain(plain)


def _rel(a, ref):
    """Norm-wise relative error against a reference."""
    a, ref = a.double(), ref.double()
    return ((a - ref).norm() / ref.norm().clamp(min=1e-30)).item()


def _bank_layout_of_plain_grads(plain, bank):
    """The plain cell's weight gradients in the bank's layout (zeros where plain has none)."""
    g = copy.deepcopy(plain)  # (deepcopy does not copy .grad)
    with torch.no_grad():
        for p, q in zip(plain.parameters(), g.parameters()):
            q.copy_(p.grad if p.grad is not None else torch.zeros_like(p))
    return dict(copy.deepcopy(bank).load_from_plain(g).named_parameters())


def _jitter(t: torch.Tensor, gen: torch.Generator) -> None:
    """Scale each element by 1 +- one float32 epsilon: a perturbation of the size of the
    rounding that storing the value in float32 makes anyway."""
    sign = torch.randint(0, 2, t.shape, generator=gen, dtype=t.dtype) * 2 - 1
    t.mul_(1 + torch.finfo(torch.float32).eps * sign)


def _results(cell, dtype, run, inputs, coeff, training, jitter=None):
    """Output, input/coefficient gradients, weight gradients (bank layout for a plain cell) and
    the running statistics after a forward of a copy of `cell` in `dtype`; with `jitter` (a
    seed), every weight and input first moves by one float32 epsilon (see _jitter)."""
    c = copy.deepcopy(cell).to(dtype).train(training)
    xs = [t.detach().to(dtype, copy=True) for t in (*inputs, coeff) if t is not None]
    if jitter is not None:
        gen = torch.Generator().manual_seed(jitter)
        with torch.no_grad():
            for t in [*c.parameters(), *xs]:
                _jitter(t, gen)
    xs = [t.requires_grad_() for t in xs]
    out = run(c, *xs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    (out * g.to(dtype)).sum().backward()
    return {"output": out.detach(), **{f"grad input {n}": x.grad for n, x in enumerate(xs)}}, c


def _check(plain, bank, run, inputs, coeff=None):
    """Both paths against a float64 run of the plain cell, in train and eval mode: in float64
    they agree to rounding (1e-10); in float32 the batched path is within 1e-5 of the float64
    result, or no further from it than four times the plain float32 path's float noise. That
    noise is the worst of the plain path's own error and its error after every weight and input
    moved by one float32 epsilon (twice): a weight gradient that sums thousands of float32
    products with cancellation, or a BatchNorm over few values, amplifies rounding past 1e-5 on
    either path, and the plain path's own error alone is at times far below its typical one."""
    for training in (True, False):
        ref, ref_cell = _results(plain, torch.float64, run, inputs, coeff, training)
        p32, p32_cell = _results(plain, torch.float32, run, inputs, coeff, training)
        jittered = [_results(plain, torch.float32, run, inputs, coeff, training, jitter=seed)
                    for seed in (1, 2)]
        b64, b64_cell = _results(bank, torch.float64, run, inputs, coeff, training)
        b32, b32_cell = _results(bank, torch.float32, run, inputs, coeff, training)
        mode = "train" if training else "eval"
        ref_w = _bank_layout_of_plain_grads(ref_cell, b64_cell)
        p32_w = _bank_layout_of_plain_grads(p32_cell, b32_cell)
        jit_w = [_bank_layout_of_plain_grads(cell, b32_cell) for _, cell in jittered]
        for name, p in b64_cell.named_parameters():
            ref[f"grad {name}"] = ref_w[name]
            p32[f"grad {name}"] = p32_w[name]
            for (res, _), w in zip(jittered, jit_w):
                res[f"grad {name}"] = w[name]
            b64[f"grad {name}"] = p.grad if p.grad is not None else torch.zeros_like(p)
            q = dict(b32_cell.named_parameters())[name]
            b32[f"grad {name}"] = q.grad if q.grad is not None else torch.zeros_like(q)
        # The forward left the same running statistics.
        ref_stats = dict(copy.deepcopy(b64_cell).load_from_plain(ref_cell).named_buffers())
        for name, b in b64_cell.named_buffers():
            if b.is_floating_point():
                ref[f"buffer {name}"] = ref_stats[name]
                b64[f"buffer {name}"] = b
                b32[f"buffer {name}"] = dict(b32_cell.named_buffers())[name]
        for key, r in ref.items():
            if r.abs().max() == 0:
                assert b64[key].abs().max() == 0 and b32[key].abs().max() == 0, f"{key} ({mode})"
                continue
            assert _rel(b64[key], r) < 1e-10, f"{key} ({mode}): float64 error {_rel(b64[key], r):.1e}"
            err = _rel(b32[key], r)
            if key.startswith("buffer"):  # statistics: the float32 bank against float64 alone
                assert err < TOL, f"{key} ({mode}): float32 error {err:.1e}"
                continue
            plain_err = max(_rel(res[key], r) for res in (p32, *(j for j, _ in jittered)))
            assert err < max(TOL, 4 * plain_err), \
                f"{key} ({mode}): float32 error {err:.1e}, plain path's noise {plain_err:.1e}"


def _inputs(reduction_prev, H=8):
    # 8x8 maps, not smaller: a reduction cell's 4x4 (or 2x2) outputs give each affine-free
    # BatchNorm so few values per channel that its backward amplifies float32 rounding past 1e-5
    # on both paths alike (seen at 4x4 inputs: 1e-6 to 9e-6, varying by seed), and the test would
    # measure the conditioning of the inputs rather than the bank.
    s0 = torch.randn(2, 12, 2 * H if reduction_prev else H, 2 * H if reduction_prev else H, requires_grad=True)
    s1 = torch.randn(2, 12, H, H, requires_grad=True)
    return s0, s1


LAYOUTS = [(True, 1), (False, 1), (True, 4), (False, 4)]
POSITIONS = [(False, False), (True, False), (False, True)]  # normal, reduction, after a reduction


ENGINE_CASES = ([("standard", *layout, *pos) for layout in LAYOUTS for pos in POSITIONS]
                + [("extended", True, 1, False, False), ("extended", False, 4, True, False)])


@pytest.mark.parametrize("space,sharing,bottleneck,reduction,reduction_prev", ENGINE_CASES)
def test_engine_cell_matches_plain(space, sharing, bottleneck, reduction, reduction_prev):
    torch.manual_seed(0)
    names, plain, bank = _pair(space, sharing, bottleneck, reduction, reduction_prev)
    s0, s1 = _inputs(reduction_prev)
    coeff = torch.softmax(torch.randn(14, len(names)), -1).requires_grad_()
    active = [list(range(1, len(names)))] * 14  # every op but `none`
    _check(plain, bank, lambda c, a, b, k: c.forward_engine(a, b, k, active), (s0, s1), coeff)


@pytest.mark.parametrize("sharing", [True, False])
def test_dst_engine_cell_matches_plain(sharing):
    """Pruned connections: each edge computes its own subset of ops (the DST engine)."""
    torch.manual_seed(1)
    names = op_names("standard", include_none=False)
    plain = SearchCell(names, 12, 12, 8, False, False, sharing, 4)
    _randomise(plain)
    bank = BankedCell(names, 12, 12, 8, False, False, sharing, 4).load_from_plain(plain)
    s0, s1 = _inputs(False)
    q = torch.rand(14, len(names))
    q[q < 0.6] = 0  # prune most (edge, op) pairs; keep one per node at least
    q[[0, 2, 5, 9], 0] = 0.5
    coeff = (q / q.sum(-1, keepdim=True).clamp(min=1e-9)).requires_grad_()
    active = [[k for k in range(len(names)) if q[e, k] > 0] for e in range(14)]
    assert sum(map(len, active)) < 14 * len(names) // 2
    _check(plain, bank, lambda c, a, b, k: c.forward_engine(a, b, k, active), (s0, s1), coeff)


def _selection(cell, names):
    return tuple(tuple((i, names.index(op)) for op, i in node) for node in cell.nodes)


TRANSIT_CASES = ([(cell, "standard", *layout, red, False) for cell in ("DARTS_V2", "PDARTS", "DST")
                  for layout in LAYOUTS for red in (False, True)]
                 + [("DARTS_V2", "standard", *layout, False, True) for layout in ((True, 4), (False, 1))]
                 + [("DST", "extended", False, 4, True, False)])


@pytest.mark.parametrize("cell,space,sharing,bottleneck,reduction,reduction_prev", TRANSIT_CASES)
def test_transit_cell_matches_plain(cell, space, sharing, bottleneck, reduction, reduction_prev):
    torch.manual_seed(2)
    names, plain, bank = _pair(space, sharing, bottleneck, reduction, reduction_prev)
    if cell == "DST":  # a three-input node and two ops on one edge
        g = DST_NODES
    else:
        g = getattr(Genotype.builtin(cell), "reduce" if reduction else "normal").nodes
    sel = tuple(tuple((i, names.index(op)) for op, i in node) for node in g)
    s0, s1 = _inputs(reduction_prev)
    _check(plain, bank, lambda c, a, b: c.forward_transit(a, b, sel), (s0, s1))


@pytest.mark.parametrize("sharing,bottleneck,reduction", [(True, 4, False), (True, 1, True), (False, 4, False)])
def test_a_dense_transit_cell_matches_plain_and_sums_shared_blocks_in_one_product(sharing, bottleneck, reduction):
    """EnTranNAS-DST starts dense: every edge keeps every op. With feature sharing a block feeds
    every later node, so a point sums its blocks with one 0/1 product instead of an add per
    (block, node); the last point (one node) and cells without sharing (a block feeds one
    node) keep the adds. Either way the cell computes what the plain cell computes."""
    torch.manual_seed(6)
    names, plain, bank = _pair("standard", sharing, bottleneck, reduction, False)
    ops = [k for k, n in enumerate(names) if n != "none"]
    sel = tuple(tuple((i, k) for i in range(m + 2) for k in ops) for m in range(4))
    s0, s1 = _inputs(False)
    _check(plain, bank, lambda c, a, b: c.forward_transit(a, b, sel), (s0, s1))
    pairs = tuple((m + 2, i, k) for m, node in enumerate(sel) for i, k in node)
    plan = get_plan(sharing, len(names), False, pairs, torch.device("cpu"))
    summed = [bool(p.mixes) for p in plan.points]
    assert summed == ([True, True, True, False] if sharing else [False] * 4)
    for p in plan.points:
        assert bool(p.adds) != bool(p.mixes)  # each point sums one way
    if sharing:
        assert plan.points[0].mixes[0].ones.shape == (4, 2 * len(ops))  # nodes 2-5 x (source, op)


PARTIAL_CASES = [(False, 1, *pos) for pos in POSITIONS] + [(True, 2, True, False)]


@pytest.mark.parametrize("sharing,bottleneck,reduction,reduction_prev", PARTIAL_CASES)
def test_partial_channel_cells_match_plain(sharing, bottleneck, reduction, reduction_prev):
    """PC-DARTS: a quarter of the channels through the ops, the bypass joined and shuffled, and
    edge weights on each edge (Engine); the Transit-cell joins each selected edge once."""
    torch.manual_seed(5)
    names, plain, bank = _pair("standard", sharing, bottleneck, reduction, reduction_prev, C=16, partial=4)
    s0, s1 = _inputs(reduction_prev)
    coeff = torch.softmax(torch.randn(14, len(names)), -1).requires_grad_()
    w = torch.rand(14) + 0.1
    active = [list(range(1, len(names)))] * 14
    _check(plain, bank, lambda c, a, b, k: c.forward_engine(a, b, k, active, w), (s0, s1), coeff)
    sel = _selection(Genotype.builtin("PC_DARTS").reduce if reduction else DST_CELL, names)
    _check(plain, bank, lambda c, a, b: c.forward_transit(a, b, sel), (s0, s1))


def test_extended_ops_in_a_transit_cell_match_plain():
    torch.manual_seed(3)
    names, plain, bank = _pair("extended", True, 1, True, False)
    k = names.index
    sel = (((0, k("conv_1x1")), (1, k("conv_3x3"))), ((0, k("conv_1x3_3x1")), (2, k("conv_1x5_5x1"))),
           ((1, k("conv_1x7_7x1")), (3, k("conv_3x3"))), ((4, k("conv_1x1")), (0, k("conv_1x1"))))
    s0, s1 = _inputs(False)
    _check(plain, bank, lambda c, a, b: c.forward_transit(a, b, sel), (s0, s1))


@pytest.mark.parametrize("method", ["darts", "entrannas", "dst", "pcdarts"])
def test_supernet_matches_plain(method):
    """The whole super-net: logits and the gradients of alpha/beta (float64: to rounding; the
    float32 logits within 1e-5), the child-net's logits, and the derived genotype."""
    torch.manual_seed(4)
    plain = SuperNet(method=method, C=8 if method != "pcdarts" else 16, layers=5, batched=False)
    _randomise(plain)
    with torch.no_grad():
        for p in plain.arch_parameters():
            p.normal_(0, 1)
    net = SuperNet(method=method, C=plain.C, layers=5).load_from_plain(plain)
    x = torch.randn(4, 3, 16, 16)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, TOL)):
        for child in (False, True):
            outs = []
            for m in (plain, net):
                m = copy.deepcopy(m).to(dtype)
                out = m(x.to(dtype), child=child)
                out.logsumexp(-1).sum().backward()
                grads = [p.grad for p in m.arch_parameters()] if dtype == torch.float64 and not child else []
                outs.append([out.detach(), *grads])
            for a, b in zip(*outs):
                assert _rel(b, a) < tol, f"{method} {dtype} child={child}: error {_rel(b, a):.1e}"
    assert net.genotype() == plain.genotype()


def test_transit_plans_are_cached_and_bounded():
    clear_plan_cache()
    net = SuperNet(method="entrannas", C=8, layers=5)
    x = torch.randn(2, 3, 16, 16)
    net(x)
    first = plan_cache_info()
    net(x)
    second = plan_cache_info()
    assert second["misses"] == first["misses"]  # nothing new: every plan was a hit
    assert second["hits"] > first["hits"]



def test_a_compiled_transit_cell_compiles_once_per_selection():
    """torch.compile of a cell (benchmarks/compile_step.py) graphs it once per selection, and
    an Engine-cell once: the plan cache, its counters and the cells' index caches are left
    alone while dynamo traces (it would guard on them and trace again on the next call). The
    compiled cells compute what the eager ones do."""
    net = SuperNet(method="entrannas", C=8, layers=5)
    cell = net.cells[1]
    s0, s1 = torch.relu(torch.randn(2, 24, 8, 8)), torch.relu(torch.randn(2, 32, 8, 8))
    graphs = []

    def backend(gm, inputs):  # dynamo only (no inductor): counts the graphs it hands over
        graphs.append(gm)
        return gm.forward

    sel = ((1, 4), (0, 3)), ((2, 1), (1, 2)), ((0, 6), (3, 7)), ((4, 5), (1, 5))  # (source, op)
    other = (((1, 1), (0, 3)),) + sel[1:]
    compiled = torch.compile(cell.forward_transit, backend=backend, dynamic=False)
    for _ in range(3):
        out = compiled(s0, s1, sel, activated=True)
    assert len(graphs) == 1
    torch.testing.assert_close(out, cell.forward_transit(s0, s1, sel, activated=True), rtol=TOL, atol=TOL)
    compiled(s0, s1, other, activated=True)
    assert len(graphs) == 2  # a new derived cell is a new graph
    state = net.arch_state()
    args = (s0, s1, state.coeff["reduce"], state.active["reduce"], None)
    engine = torch.compile(cell.forward_engine, backend=backend, dynamic=False)
    for _ in range(2):
        out = engine(*args, activated=True)
    assert len(graphs) == 3
    torch.testing.assert_close(out, cell.forward_engine(*args, activated=True), rtol=TOL, atol=TOL)

@pytest.mark.parametrize("method", ["darts", "entrannas", "dst", "pcdarts"])
def test_no_tensor_is_relu_d_twice_in_a_forward(method):
    """Each cell output feeds the next two cells, whose preprocessing both start with a ReLU:
    the super-net computes that ReLU once (and, within a cell, one per ready point)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Relus(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.inputs, self.kept = [], []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.relu.default, torch.ops.aten.clamp_min.default):
                x = args[0]
                self.kept.append(x)  # alive, so no later tensor reuses its memory
                self.inputs.append((x.untyped_storage().data_ptr(), x.storage_offset(), tuple(x.shape)))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    net = SuperNet(method=method, C=16 if method == "pcdarts" else 8, layers=5)
    with Relus() as seen:
        net(torch.randn(2, 3, 16, 16)).sum().backward()
    assert seen.inputs and len(set(seen.inputs)) == len(seen.inputs)


@pytest.mark.parametrize("method", ["entrannas", "dst", "pcdarts"])
def test_search_steps_of_the_batched_super_net_match_the_plain_one(method):
    """Whole first-order search steps (architecture step with the weights frozen, weight step
    with alpha/beta frozen, one ReLU per cell output, the CPU forms): after three of them, in
    float64, every weight, alpha/beta and running statistic is the one-call-per-op reference's."""
    from entrannas.optim import optimizer_options
    from entrannas.search import search_step

    def optimisers(net):
        w = torch.optim.SGD(net.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4,
                            **optimizer_options(torch.device("cpu")))
        return w, torch.optim.Adam(net.arch_parameters(), lr=0.05, betas=(0.5, 0.999), weight_decay=1e-3)
    torch.manual_seed(0)
    C = 16 if method == "pcdarts" else 8
    plain = SuperNet(method=method, C=C, layers=5, batched=False).double()
    net = copy.deepcopy(SuperNet(method=method, C=C, layers=5)).double().load_from_plain(plain)
    g = torch.Generator().manual_seed(1)
    batches = [[(torch.randn(8, 3, 16, 16, generator=g, dtype=torch.float64), torch.randint(0, 10, (8,), generator=g))
                for _ in range(2)] for _ in range(3)]
    for m in (plain, net):
        w, a = optimisers(m)
        for train, val in batches:
            search_step(m, w, a, train, val)
    expected = copy.deepcopy(net).load_from_plain(plain)
    got, want = dict(net.state_dict()), dict(expected.state_dict())
    for name, p in plain.named_parameters():  # alpha/beta are not copied by load_from_plain
        if name in want and not name.startswith("cells."):
            want[name] = p.detach()
    for k, v in got.items():
        if v.is_floating_point():  # against at least 1: some running means are zero but for rounding
            err = float((v - want[k]).abs().max()) / max(1.0, float(want[k].abs().max()))
            assert err < 1e-9, f"{method} {k}: {err:.1e}"


@pytest.mark.parametrize("method", ["darts", "entrannas", "dst", "pcdarts"])
def test_channels_last_super_net_computes_what_the_nchw_one_computes(method):
    """channels_last is the default on a GPU (run.channels_last=auto): the banks then mix in
    HWC order (Engine-cells and DST's dense Transit points alike). In float64 on the CPU the
    logits, alpha/beta gradients and weight gradients of both layouts agree to rounding, for
    the super-net forward and for the child-net (every cell a Transit-cell)."""
    torch.manual_seed(8)
    net = SuperNet(method=method, C=8 if method != "pcdarts" else 16, layers=5).double()
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_(0, 1)
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    for child in (False, True):
        outs = []
        for last in (False, True):
            m = copy.deepcopy(net)
            xi = x
            if last:
                m = m.to(memory_format=torch.channels_last)
                xi = x.contiguous(memory_format=torch.channels_last)
            out = m(xi, child=child)
            out.logsumexp(-1).sum().backward()
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in m.parameters()]
            outs.append([out.detach(), *grads])
        for i, (a, b) in enumerate(zip(*outs)):
            assert _rel(b, a) < 1e-10, f"{method} child={child} tensor {i}: error {_rel(b, a):.1e}"

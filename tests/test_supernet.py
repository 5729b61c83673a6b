"""Structure of the super-net: parameter counts, switches, and that each cell computes exactly
what the paper says it computes (counted with forward hooks on the op modules)."""
from collections import Counter

import pytest
import torch

from entrannas import EngineCell, SuperNet, TransitCell
from entrannas.arch import edge_index
from entrannas.cells import SearchCell
from entrannas.ops import op_names


def _count_op_calls(net):
    """(cell, unit, op) -> how many times that op instance ran: forward hooks on the op modules
    of the one-call-per-op cells, or on the banks of the batched ones (each call runs a set of
    rows, each row an op instance)."""
    calls = Counter()
    handles = []
    for c, cell in enumerate(net.cells):
        if hasattr(cell, "ops"):
            for u, unit in enumerate(cell.ops):
                for k, op in enumerate(unit):
                    handles.append(op.register_forward_hook(
                        lambda *_, key=(c, u, k): calls.update([key])))
            continue
        for k, name in enumerate(cell.op_names):
            if name == "none":
                continue

            def hook(module, args, out, c=c, k=k, cell=cell):
                rows = args[1]
                calls.update((c, cell.units[rows.segment][r], k) for r in rows.rows)
            handles.append(cell.banks[name].register_forward_hook(hook))
    return calls, handles


def test_darts_mode_matches_official_counts():
    net = SuperNet(method="darts", C=16, layers=8, num_classes=10)
    assert sum(p.numel() for p in net.weight_parameters()) == 1_930_618
    assert sum(p.numel() for p in net.arch_parameters()) == 224
    assert all(net.is_engine(c) for c in range(len(net.cells)))
    plain = SuperNet(method="darts", C=16, layers=8, num_classes=10, batched=False)
    assert sum(p.numel() for p in plain.weight_parameters()) == 1_930_618
    assert all(isinstance(c, EngineCell) for c in plain.cells)


def test_parameter_lists_are_disjoint_and_complete():
    net = SuperNet(method="dst", C=8, layers=5)
    arch, weights = net.arch_parameters(), net.weight_parameters()
    assert len(arch) == 4 and [tuple(p.shape) for p in arch] == [(14, 7), (14, 7), (4,), (4,)]
    ids = {id(p) for p in arch} | {id(p) for p in weights}
    assert len(ids) == len(arch) + len(weights) == len(list(net.parameters()))


@pytest.mark.parametrize("spec,expected", [
    ("first", (0, 2)), ("last", (5, 7)), ("all", tuple(range(8))), ("half", (0, 1, 2, 3)),
    ([1, 5], (1, 5))])
def test_engine_cell_placement(spec, expected):
    net = SuperNet(method="entrannas", C=8, layers=8, engine_cells=spec)
    assert net.engine_cells == expected
    assert [i for i in range(len(net.cells)) if net.is_engine(i)] == list(expected)
    plain = SuperNet(method="entrannas", C=8, layers=8, engine_cells=spec, batched=False)
    assert [i for i, c in enumerate(plain.cells) if isinstance(c, EngineCell)] == list(expected)


def test_half_placement_is_half_of_each_type():
    net = SuperNet(method="entrannas", C=8, layers=8, engine_cells="half")
    # 6 normal cells (first 3 are engines) and 2 reduction cells (first is an engine).
    normal = [i for i, c in enumerate(net.cells) if not c.reduction]
    red = [i for i, c in enumerate(net.cells) if c.reduction]
    assert sum(i in net.engine_cells for i in normal) == 3 and sum(i in net.engine_cells for i in red) == 1


def test_engine_cells_need_both_types():
    with pytest.raises(ValueError, match="reduction"):
        SuperNet(C=8, layers=8, engine_cells=[0, 1])


def test_method_defaults_and_keyword_switches():
    e = SuperNet(method="entrannas", C=8)
    assert (e.engine_cells, e.feature_sharing, e.bottleneck, e.tau, e.derivation) == ((0, 2), True, 4, 5.0, "top2")
    d = SuperNet(method="darts", C=8)
    assert (d.feature_sharing, d.bottleneck, d.tau, d.derivation) == (False, 1, 1.0, "top2")
    s = SuperNet(method="dst", C=8)
    assert s.derivation == "dst" and "none" not in s.op_names
    custom = SuperNet(method="darts", C=8, engine_cells="first", feature_sharing=True, bottleneck=2,
                      tau0=3.0, tau_decay=0.5)
    assert custom.engine_cells == (0, 2) and custom.feature_sharing and custom.bottleneck == 2
    assert custom.set_epoch(2) == pytest.approx(0.75)


def test_forward_shapes_stems_and_channels():
    x = torch.randn(2, 1, 28, 28)
    assert SuperNet(C=8, in_channels=1)(x).shape == (2, 10)
    net = SuperNet(C=8, space="extended", num_classes=5, stem="imagenet")
    assert net.alpha_normal.shape == (14, 13)
    assert net(torch.randn(2, 3, 112, 112)).shape == (2, 5)


def _transit_selection():
    # node 2: (0, sep3) (1, skip); node 3: (0, sep3) again, (2, dil3); node 4: three inputs;
    # node 5: two ops on the same edge (a DST-style cell).
    names = op_names("standard")
    k = names.index
    return (((0, k("sep_conv_3x3")), (1, k("skip_connect"))),
            ((0, k("sep_conv_3x3")), (2, k("dil_conv_3x3"))),
            ((1, k("max_pool_3x3")), (2, k("sep_conv_5x5")), (3, k("avg_pool_3x3"))),
            ((4, k("sep_conv_3x3")), (4, k("dil_conv_5x5"))))


@pytest.mark.parametrize("sharing,bottleneck", [(True, 1), (False, 1), (True, 4)])
def test_transit_cell_calls_only_derived_ops(sharing, bottleneck):
    cell = TransitCell(op_names("standard"), 16, 16, 16, False, False, sharing, bottleneck)
    calls = Counter()
    for u, unit in enumerate(cell.ops):
        for k, op in enumerate(unit):
            op.register_forward_hook(lambda *_, key=(u, k): calls.update([key]))
    sel = _transit_selection()
    out = cell(torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8), sel)
    assert out.shape == (2, 64, 8, 8)
    expected = Counter()
    for m, pairs in enumerate(sel):
        for i, k in pairs:
            expected[(i if sharing else edge_index(i, m + 2), k)] = 1  # shared: (0, sep3) once
    assert calls == expected
    assert sum(calls.values()) == (8 if sharing else 9)  # 9 pairs, one shared


def test_engine_cell_feature_sharing_computes_each_source_op_once():
    names = op_names("standard")
    shared = EngineCell(names, 8, 8, 8, False, False, feature_sharing=True)
    plain = EngineCell(names, 8, 8, 8, False, False, feature_sharing=False)
    coeff = torch.softmax(torch.randn(14, 8), -1)
    active = [list(range(1, 8))] * 14  # every op but `none`
    for cell, units in ((shared, 5), (plain, 14)):
        calls = Counter()
        for u, unit in enumerate(cell.ops):
            for k, op in enumerate(unit):
                op.register_forward_hook(lambda *_, key=(u, k): calls.update([key]))
        cell(torch.randn(2, 8, 8, 8), torch.randn(2, 8, 8, 8), coeff, active)
        assert set(calls.values()) == {1}
        assert len(calls) == units * 7  # `none` is never computed
    assert len(shared.ops) == 5 and len(plain.ops) == 14


def test_engine_cell_equals_weighted_sum_definition():
    """Eq. 1 spelled out term by term against the cell's stacked contraction."""
    torch.manual_seed(0)
    names = op_names("standard")
    cell = EngineCell(names, 8, 8, 8, False, False, feature_sharing=False).eval()
    s0, s1 = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6)
    coeff = torch.softmax(torch.randn(14, 8), -1)
    out = cell(s0, s1, coeff, [list(range(1, 8))] * 14)
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    for j in range(2, 6):
        total = 0
        for i in range(j):
            e = edge_index(i, j)
            for k in range(1, 8):
                total = total + coeff[e, k] * cell._mixed_op(e, k, states[i])
        states.append(total)
    assert torch.allclose(out, torch.cat(states[2:], 1), atol=1e-5)


@pytest.mark.parametrize("batched", [True, False])
def test_dst_engine_cell_skips_pruned_ops(batched):
    torch.manual_seed(0)
    net = SuperNet(method="dst", C=8, layers=5, batched=batched)
    with torch.no_grad():
        net.alpha_normal.normal_(0, 3)
        net.beta_normal.fill_(1.0)  # t = 0.73: prunes most connections
    calls, _ = _count_op_calls(net)
    net(torch.randn(2, 3, 16, 16))
    q = net.coefficients("normal").detach()
    engine = net.engine_cells[0]
    computed = {(u, k) for (c, u, k) in calls if c == engine}
    expected = {(i, k) for (i, j) in [(i, j) for j in range(2, 6) for i in range(j)]
                for k in range(7) if q[edge_index(i, j), k] > 0}
    assert computed == expected and len(expected) < 5 * 7


@pytest.mark.parametrize("batched", [True, False])
def test_child_mode_runs_every_cell_as_transit(batched):
    torch.manual_seed(0)
    net = SuperNet(method="darts", C=8, layers=5, batched=batched)
    geno = net.genotype()
    calls, _ = _count_op_calls(net)
    net(torch.randn(2, 3, 16, 16), child=True)
    per_cell = Counter(c for (c, _, _) in calls)
    assert all(per_cell[c] == 8 for c in range(5))  # 4 nodes x 2 inputs, no sharing
    assert sum(len(n) for n in geno.normal.nodes) == 8


@pytest.mark.parametrize("batched", [True, False])
def test_entrannas_transit_cells_run_the_current_derivation(batched):
    torch.manual_seed(0)
    net = SuperNet(method="entrannas", C=8, layers=8, batched=batched)
    calls, _ = _count_op_calls(net)
    net(torch.randn(2, 3, 16, 16))
    sel = net.arch_state().selection
    for c, cell in enumerate(net.cells):
        got = {(u, k) for (cc, u, k) in calls if cc == c}
        if not net.is_engine(c):
            t = "reduce" if cell.reduction else "normal"
            assert got == {(i, k) for pairs in sel[t] for i, k in pairs}
        else:
            assert len(got) == 5 * 7


def test_arch_gradients_only_from_engine_cells_and_dst_regulariser():
    torch.manual_seed(0)
    net = SuperNet(method="dst", C=8, layers=5)
    loss = net(torch.randn(4, 3, 16, 16)).logsumexp(-1).mean() + net.dst_regulariser()
    loss.backward(inputs=net.arch_parameters())
    for p in net.arch_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.weight_parameters())


def test_genotype_is_derived_from_alpha():
    net = SuperNet(method="entrannas", C=8)
    names = net.op_names
    with torch.no_grad():
        net.alpha_normal.zero_()
        net.alpha_normal[edge_index(0, 2), names.index("sep_conv_3x3")] = 5
        net.alpha_normal[edge_index(1, 2), names.index("dil_conv_5x5")] = 4
    g = net.genotype()
    assert g.normal.nodes[0] == (("sep_conv_3x3", 0), ("dil_conv_5x5", 1))
    assert g.space == "standard"


def test_search_cell_rejects_bad_bottleneck():
    with pytest.raises(ValueError, match="bottleneck"):
        SearchCell(op_names("standard"), 8, 8, 6, False, False, True, 4)


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("method", ["entrannas", "dst", "darts", "pcdarts"])
def test_a_repeated_step_builds_no_tensor_from_host_data(monkeypatch, method, batched):
    """Per step nothing is made on the host and copied to the device: index tensors are built
    when a cell layout is first seen, then reused (on a GPU each would be a copy and a sync)."""
    torch.manual_seed(0)
    net = SuperNet(method=method, C=8, layers=5, batched=batched)
    x = torch.randn(2, 3, 16, 16)
    for child in (False, True):  # the first step meets the layouts: plans and indices are built
        net(x, child=child).sum().backward()

    def refuse(*args, **kwargs):
        raise AssertionError("a repeated forward built a tensor from host data")
    monkeypatch.setattr(torch, "tensor", refuse)
    monkeypatch.setattr(torch, "as_tensor", refuse)
    for child in (False, True):
        net(x, child=child).sum().backward()

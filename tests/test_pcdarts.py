"""PC-DARTS as a built-in method (the baseline of the paper's Table 2): the official super-net's
size, partial-channel connections with channel shuffle, edge normalisation in search and in
derivation, and a real search on Fashion-MNIST end to end."""
import json

import pytest
import torch

from entrannas import EngineCell, SuperNet, TransitCell
from entrannas.arch import derive_top2, edge_index, edge_normalization, node_edges, softmax_t
from entrannas.checkpoint import load_checkpoint
from entrannas.cli import main
from entrannas.config import load_config
from entrannas.layers import channel_shuffle
from entrannas.ops import op_names
from entrannas.search import run_search


def test_pcdarts_matches_the_official_search_network_counts():
    net = SuperNet(method="pcdarts", C=16, layers=8, num_classes=10)
    assert sum(p.numel() for p in net.weight_parameters()) == 299_578
    assert sum(p.numel() for p in net.arch_parameters()) == 252
    assert all(net.is_engine(c) for c in range(len(net.cells)))
    assert (net.feature_sharing, net.bottleneck, net.tau, net.partial_channels, net.edge_normalization) == \
        (False, 1, 1.0, 4, True)
    names = [n for n, p in net.named_parameters() if any(p is a for a in net.arch_parameters())]
    assert names == ["alpha_normal", "alpha_reduce", "edge_beta_normal", "edge_beta_reduce"]
    # The other methods are unchanged by the new switches.
    assert not hasattr(SuperNet(method="darts", C=8), "edge_beta_normal")


def test_channel_shuffle_interleaves_the_groups():
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert channel_shuffle(x, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


def test_edge_normalisation_is_a_softmax_over_each_nodes_inputs():
    beta = torch.randn(14)
    w = edge_normalization(beta)
    for j in range(2, 6):
        r = node_edges(j)
        assert torch.allclose(w[r.start:r.stop], torch.softmax(beta[r.start:r.stop], 0))


@pytest.mark.parametrize("reduction", [False, True])
def test_engine_cell_is_the_partial_channel_definition(reduction):
    """Each edge: the mixed op on the first 1/4 of the channels, the rest bypassed (2x2 max
    pool on strided edges), shuffled in 4 groups, times the edge weight; summed per node."""
    torch.manual_seed(0)
    names = op_names("standard")
    cell = EngineCell(names, 16, 16, 16, reduction, False, partial_channels=4).eval()
    s0, s1 = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    coeff = torch.softmax(torch.randn(14, 8), -1)
    w = edge_normalization(torch.randn(14))
    out = cell(s0, s1, coeff, [list(range(1, 8))] * 14, w)
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    for j in range(2, 6):
        total = 0
        for i in range(j):
            e, x = edge_index(i, j), states[i]
            mixed = sum(coeff[e, k] * cell._mixed_op(e, k, x[:, :4]) for k in range(1, 8))
            rest = x[:, 4:]
            if reduction and i < 2:
                rest = torch.nn.functional.max_pool2d(rest, 2, 2)
            edge = torch.cat([mixed, rest], 1)
            edge = edge.view(2, 4, 4, *edge.shape[2:]).transpose(1, 2).reshape(edge.shape)
            total = total + w[e] * edge
        states.append(total)
    assert out.shape == (2, 64) + ((4, 4) if reduction else (8, 8))
    assert torch.allclose(out, torch.cat(states[2:], 1), atol=1e-5)


def test_transit_cell_runs_the_derived_ops_on_partial_channels():
    torch.manual_seed(0)
    names = op_names("standard")
    cell = TransitCell(names, 16, 16, 16, True, False, partial_channels=4).eval()
    sep3, skip = names.index("sep_conv_3x3"), names.index("skip_connect")
    sel = (((0, sep3), (1, skip)), ((2, sep3), (0, skip)), ((3, skip), (1, sep3)), ((4, sep3), (2, skip)))
    s0, s1 = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    out = cell(s0, s1, sel)
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    for m, pairs in enumerate(sel):
        total = 0
        for i, k in pairs:
            x = states[i]
            rest = x[:, 4:] if i >= 2 else torch.nn.functional.max_pool2d(x[:, 4:], 2, 2)
            edge = torch.cat([cell.ops[edge_index(i, m + 2)][k](x[:, :4]), rest], 1)
            total = total + channel_shuffle(edge, 4)
        states.append(total)
    assert torch.allclose(out, torch.cat(states[2:], 1), atol=1e-5)


def test_derivation_weights_the_edges_by_beta():
    """Node 3 (inputs 0, 1, 2): by p alone edges 0 and 1 are the two strongest; the edge
    weights make edge 2 the strongest and edge 0 the weakest, so PC-DARTS keeps 2 and 1."""
    net = SuperNet(method="pcdarts", C=8, layers=5)
    names = net.op_names
    sep3, dil5, skip = (names.index(n) for n in ("sep_conv_3x3", "dil_conv_5x5", "skip_connect"))
    with torch.no_grad():
        net.alpha_normal.zero_()
        net.edge_beta_normal.zero_()
        net.alpha_normal[edge_index(0, 3), sep3] = 3.0
        net.alpha_normal[edge_index(1, 3), dil5] = 2.5
        net.alpha_normal[edge_index(2, 3), skip] = 2.0
        net.edge_beta_normal[edge_index(0, 3)] = -2.0
        net.edge_beta_normal[edge_index(2, 3)] = 2.0
    p = softmax_t(net.alpha_normal.detach(), 1.0)
    w = edge_normalization(net.edge_beta_normal.detach())
    # Check the construction: the beta weighting does change the chosen edges.
    assert {i for i, _ in derive_top2(p, net.none_index)[1]} == {0, 1}
    assert all(w[edge_index(2, 3)] * p[edge_index(2, 3), skip] > w[edge_index(i, 3)] * p[edge_index(i, 3)].max()
               for i in (0, 1))
    g = net.genotype()
    assert g.normal.nodes[1] == (("skip_connect", 2), ("dil_conv_5x5", 1))
    # And the arch state the Engine-cells use carries the same weights.
    assert torch.equal(net.arch_state().edge_weight["normal"], w)


def test_forward_and_backward_reach_every_parameter():
    torch.manual_seed(0)
    net = SuperNet(method="pcdarts", C=8, layers=5)
    assert all(net.is_engine(c) for c in range(len(net.cells)))
    loss = net(torch.randn(4, 3, 16, 16)).logsumexp(-1).mean()
    loss.backward()
    for p in net.arch_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    convs = [p for n, p in net.named_parameters() if "banks" in n and p.dim() == 4]
    assert convs and all(p.grad is not None for p in convs)
    assert net(torch.randn(2, 3, 16, 16), child=True).shape == (2, 10)


def test_bad_pcdarts_switches_are_refused():
    with pytest.raises(ValueError, match="partial_channels"):
        SuperNet(method="pcdarts", C=6, layers=5)  # 6 channels do not split in 4
    with pytest.raises(ValueError, match="top-2"):
        SuperNet(method="dst", C=8, layers=5, edge_normalization=True)


def test_preset_has_the_official_settings():
    c = load_config("cifar10-pcdarts")
    assert c.model.method == "pcdarts" and c.model.partial_channels == 4 and c.model.edge_normalization
    o = c.optim
    assert (o.epochs, o.batch_size, o.lr, o.arch_lr, o.warmup_epochs, o.momentum, o.weight_decay,
            o.arch_weight_decay, o.arch_betas) == (50, 256, 0.1, 6e-4, 15, 0.9, 3e-4, 1e-3, [0.5, 0.999])


def test_real_search_on_fashion_mnist_end_to_end(tmp_path, capsys):
    cfg = load_config("cifar10-pcdarts", [
        "data.dataset=fashion-mnist", "data.crop_pad=2", "data.limit=128", "data.eval_limit=64",
        "model.C=4", "model.layers=3", "optim.batch_size=32", "optim.epochs=2",
        "optim.warmup_epochs=0", "run.tensorboard=false"])
    out = tmp_path / "pc"
    result = run_search(cfg, out, quiet=True)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and (out / "cells.png").stat().st_size > 0
    state = load_checkpoint(out / "checkpoint.pt")
    for t in ("normal", "reduce"):
        # The recorded edge weights are the normalised betas the checkpoint holds.
        w = torch.tensor(rows[-1]["edge_weights"][t])
        assert torch.allclose(w, edge_normalization(state["net"][f"edge_beta_{t}"]).float(), atol=1e-6)
        assert all(abs(float(w[node_edges(j).start:node_edges(j).stop].sum()) - 1) < 1e-5 for j in range(2, 6))
    # The edge betas were trained (architecture steps ran) and the genotype follows them.
    assert not torch.equal(torch.tensor(rows[0]["edge_weights"]["normal"]), torch.tensor(rows[1]["edge_weights"]["normal"]))
    net = SuperNet(method="pcdarts", C=4, layers=3, in_channels=1)
    net.load_state_dict(state["net"])
    assert net.genotype().to_dict()["normal"] == result.genotype.to_dict()["normal"] == rows[-1]["genotype"]["normal"]
    # `entrannas child` rebuilds it and runs the child-net.
    assert main(["child", str(out)]) == 0
    child = json.loads((out / "child.json").read_text())
    assert child["method"] == "pcdarts" and 0 <= child["child_acc"] <= 100

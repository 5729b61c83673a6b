"""Target networks: any genotype builds (DST topologies too), drop path, auxiliary head."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from entrannas.evalnet import (AuxiliaryHeadCIFAR, AuxiliaryHeadImageNet, NetworkCIFAR,
                               NetworkImageNet, TargetCell, build_target_net)
from entrannas.genotype import CellGenotype, Genotype
from entrannas.layers import drop_path
from entrannas.ops import DilConv, SepConv

# DST-style cell: node 2 has two ops on one edge (input 0), node 3 three inputs.
from helpers import DST


def _pairs(cell_genotype):
    return [pair for node in cell_genotype.nodes for pair in node]


def test_cell_ops_follow_genotype_order():
    cell = TargetCell(DST.normal, 16, 16, 8, reduction=False, reduction_prev=False)
    pairs = _pairs(DST.normal)
    assert len(cell.ops) == len(pairs) == 8
    assert isinstance(cell.ops[cell.op_index(2, "sep_conv_3x3", 0)], SepConv)
    assert isinstance(cell.ops[cell.op_index(2, "dil_conv_3x3", 0)], DilConv)
    positions = [cell.op_index(m + 2, op, inp)
                 for m, node in enumerate(DST.normal.nodes) for op, inp in node]
    assert positions == list(range(len(pairs)))
    with pytest.raises(KeyError):
        cell.op_index(5, "sep_conv_3x3", 0)


@pytest.mark.parametrize("name", ["DARTS_V2", "PC_DARTS", "PDARTS"])
def test_every_cell_has_one_module_per_pair(name):
    g = Genotype.builtin(name)
    net = build_target_net(g, "cifar10", C=8, layers=5)
    for cell in net.cells:
        assert len(cell.ops) == len(_pairs(g.reduce if cell.reduction else g.normal))


def test_reduction_cell_strides_inputs_0_and_1():
    cell = TargetCell(DST.reduce, 12, 12, 8, reduction=True, reduction_prev=False)
    out = cell(torch.randn(2, 12, 16, 16), torch.randn(2, 12, 16, 16))
    assert out.shape == (2, 32, 8, 8)
    # reduction_prev: s0 is at twice s1's resolution
    cell = TargetCell(DST.normal, 12, 12, 8, reduction=False, reduction_prev=True)
    assert cell(torch.randn(2, 12, 16, 16), torch.randn(2, 12, 8, 8)).shape == (2, 32, 8, 8)


@pytest.mark.parametrize("dataset,shape", [("cifar10", (3, 32, 32)), ("fashion-mnist", (1, 28, 28))])
def test_dst_genotype_trains_one_step(dataset, shape):
    torch.manual_seed(0)
    net = build_target_net(DST, dataset, C=8, layers=6, drop_path_prob=0.2)
    assert net.stem[0].in_channels == shape[0]
    x, y = torch.randn(4, *shape), torch.randint(0, 10, (4,))
    net.train()
    logits, logits_aux = net(x)
    assert logits.shape == logits_aux.shape == (4, 10)
    loss = F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(logits_aux, y)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    before = [p.detach().clone() for p in net.parameters()]
    opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(net.parameters(), 5.0)
    opt.step()
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert sum(not torch.equal(a, b) for a, b in zip(before, net.parameters())) > 0
    net.eval()
    logits, logits_aux = net(x)
    assert logits_aux is None and logits.shape == (4, 10)


def test_auxiliary_heads_take_small_maps():
    # CIFAR 8x8 and Fashion-MNIST 7x7 at 2/3 depth; ImageNet 7x7 (and larger inputs)
    for head, sizes in ((AuxiliaryHeadCIFAR(16, 10), (8, 7, 5, 12)),
                        (AuxiliaryHeadImageNet(16, 10), (7, 14, 3))):
        for n in sizes:
            assert head(torch.randn(2, 16, n, n)).shape == (2, 10)


def test_auxiliary_head_keeps_darts_pooling_on_8x8():
    head = AuxiliaryHeadCIFAR(4, 10)
    x = torch.randn(1, 4, 8, 8)
    expected = F.avg_pool2d(x, 5, stride=3)  # DARTS' overlapping windows, not adaptive
    assert torch.allclose(head._pool(x), expected)


def test_drop_path_train_random_eval_deterministic():
    net = build_target_net(Genotype.builtin("DARTS_V2"), "cifar10", C=8, layers=5,
                           auxiliary=False, drop_path_prob=0.3)
    x = torch.randn(4, 3, 16, 16)
    net.train()
    torch.manual_seed(1)
    a = net(x)[0]
    torch.manual_seed(2)
    b = net(x)[0]
    torch.manual_seed(1)
    c = net(x)[0]
    assert not torch.allclose(a, b)
    assert torch.allclose(a, c)
    net.eval()
    e1, e2 = net(x)[0], net(x)[0]
    net.drop_path_prob = 0.0
    assert torch.equal(e1, e2) and torch.allclose(e1, net(x)[0])


def test_identity_is_never_dropped():
    g = CellGenotype(((("skip_connect", 1),), (("sep_conv_3x3", 0),),
                      (("skip_connect", 2),), (("avg_pool_3x3", 0),)))
    cell = TargetCell(g, 8, 8, 4, reduction=False, reduction_prev=False).train()
    s0, s1 = torch.randn(32, 8, 6, 6), torch.randn(32, 8, 6, 6)
    torch.manual_seed(0)
    out = cell(s0, s1, drop_prob=0.5)
    kept = cell.preprocess1(s1)
    assert torch.allclose(out[:, 0:4], kept) and torch.allclose(out[:, 8:12], kept)
    # the sep conv and the pool are dropped per sample: some samples are all zero
    for block in (out[:, 4:8], out[:, 12:16]):
        zero = block.flatten(1).abs().sum(1) == 0
        assert 0 < zero.sum() < 32


def test_drop_path_function():
    x = torch.ones(1000, 3, 2, 2)
    assert drop_path(x, 0.5, training=False) is x
    torch.manual_seed(0)
    y = drop_path(x, 0.25)
    values = torch.unique(y)
    assert len(values) == 2 and values[0] == 0 and values[1].item() == pytest.approx(1 / 0.75)
    assert abs(y.mean().item() - 1.0) < 0.1  # expectation preserved


def test_build_target_net_variants():
    g = Genotype.builtin("DARTS_V2")
    assert isinstance(build_target_net(g, "imagenet", layers=3), NetworkImageNet)
    net = build_target_net(g, "cifar100", C=8, layers=3)
    assert isinstance(net, NetworkCIFAR) and net.classifier.out_features == 100
    net = build_target_net("DARTS_V2", "Fashion-MNIST", C=8, layers=3, auxiliary=False)
    assert net.stem[0].in_channels == 1 and net.auxiliary_head is None
    with pytest.raises(ValueError):
        build_target_net(g, "mnist")


def test_imagenet_forward_shapes():
    net = build_target_net(Genotype.builtin("DARTS_V2"), "imagenet", C=8, layers=5,
                           num_classes=7).train()
    logits, aux = net(torch.randn(2, 3, 224, 224))
    assert logits.shape == aux.shape == (2, 7)

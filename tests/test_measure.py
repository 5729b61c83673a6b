"""Params and multiply-adds as the DARTS family reports them."""
import pytest
import torch

from entrannas.evalnet import build_target_net
from entrannas.genotype import CellGenotype, Genotype
from entrannas.measure import count_macs, count_params, count_params_m, profile_genotype

from helpers import DST, DST_NODES  # noqa: E402
# the same cells without the second op on edge (0, 2)
DST_LESS = Genotype(CellGenotype(((DST_NODES[0][0],),) + DST_NODES[1:]),
                    CellGenotype(((DST_NODES[0][0],),) + DST_NODES[1:]))


def test_darts_v2_cifar_params_match_official_count():
    net = build_target_net(Genotype.builtin("DARTS_V2"), "cifar10")
    # DARTS' train.py logs "param size = 3.349342MB" for this setting (aux head excluded)
    assert count_params(net) == 3_349_342
    assert round(count_params_m(net), 1) == 3.3
    assert count_params(net, exclude_auxiliary=False) > count_params(net)


@pytest.mark.parametrize("name,cifar,imagenet", [
    ("DARTS_V2", 3_349_342, 4_718_752),   # papers: 3.3M / 4.7M
    ("PC_DARTS", 3_634_678, 5_270_560),   # papers: 3.6M / 5.3M
    ("PDARTS", 3_433_798, 4_944_352),     # papers: 3.4M / 4.9M
])
def test_published_cells_params(name, cifar, imagenet):
    g = Genotype.builtin(name)
    assert count_params(build_target_net(g, "cifar10")) == cifar
    assert count_params(build_target_net(g, "imagenet")) == imagenet


def test_darts_v2_imagenet_profile():
    p = profile_genotype(Genotype.builtin("DARTS_V2"), "imagenet")
    assert p["params"] == 4_718_752 and round(p["params_M"], 1) == 4.7
    # Convs + linear only (FlopCounterMode). DARTS reports 574M, which nobody reproduces
    # from conv/linear counts (quark0/darts issue #46: 523M-545M with other counters);
    # we pin our own count and keep it within 8% of the published figure.
    assert p["macs"] == pytest.approx(529_911_552, rel=0.01)
    assert abs(p["macs_M"] - 574) / 574 < 0.08
    assert p["input_shape"] == (3, 224, 224) and p["C"] == 48 and p["layers"] == 14


def test_count_macs_by_hand_and_restores_mode():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False),
                              torch.nn.BatchNorm2d(8), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 10))
    net.train()
    expected = 8 * 3 * 9 * 8 * 8 + 128 * 10  # conv + linear; BN and pooling not counted
    assert count_macs(net, (3, 8, 8)) == expected
    assert count_macs(net, (4, 3, 8, 8)) == expected  # per image
    assert net.training


def test_macs_exclude_auxiliary_head():
    g = Genotype.builtin("DARTS_V2")
    with torch.device("meta"):  # shapes only: counting needs no real compute
        with_aux = build_target_net(g, "cifar10")
        without = build_target_net(g, "cifar10", auxiliary=False)
    assert count_macs(with_aux, (3, 32, 32)) == count_macs(without, (3, 32, 32))


@pytest.mark.parametrize("dataset", ["cifar10", "fashion-mnist"])
def test_dst_profile_counts_the_extra_op(dataset):
    p = profile_genotype(DST, dataset)
    q = profile_genotype(DST_LESS, dataset)
    assert p["params"] > q["params"] > 0
    assert p["macs"] > q["macs"] > 0
    assert p["ops_normal"] == 8 and p["edges_normal"] == 7
    assert q["ops_normal"] == 7 and q["edges_normal"] == 7


def test_profile_settings_and_overrides():
    p = profile_genotype("DARTS_V2", "fashion-mnist", C=16, layers=8)
    assert (p["C"], p["layers"], p["input_shape"], p["num_classes"]) == (16, 8, (1, 28, 28), 10)
    assert p["params"] == count_params(build_target_net("DARTS_V2", "fashion-mnist", C=16, layers=8))
    full = profile_genotype("DARTS_V2", "cifar10")
    assert (full["C"], full["layers"], full["input_shape"]) == (36, 20, (3, 32, 32))
    assert round(full["params_M"], 1) == 3.3 and full["macs_M"] > 500

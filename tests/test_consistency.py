"""A Transit-cell is the derived cell: with the bottleneck off, it computes exactly what the
target-net cell computes for the same genotype and weights (the paper's consistency claim)."""
import pytest
import torch

from entrannas import TransitCell
from entrannas.arch import edge_index
from entrannas.evalnet import TargetCell
from entrannas.genotype import CellGenotype, Genotype
from entrannas.ops import op_names

DST_CELL = CellGenotype(nodes=(
    (("sep_conv_3x3", 0), ("skip_connect", 1)),
    (("sep_conv_3x3", 0), ("dil_conv_3x3", 2), ("max_pool_3x3", 1)),
    (("sep_conv_5x5", 2), ("avg_pool_3x3", 3), ("dil_conv_5x5", 0)),
    (("sep_conv_3x3", 4), ("dil_conv_5x5", 4)),  # two ops on one edge
))


def _copy(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """Search ops have affine-free BN; the target's affine BN starts at weight 1, bias 0, so
    copying everything else gives the same function."""
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    modules = dict(dst.named_modules())
    assert not unexpected
    assert all(isinstance(modules[k.rsplit(".", 1)[0]], torch.nn.BatchNorm2d) for k in missing)


@pytest.mark.parametrize("sharing", [True, False])
@pytest.mark.parametrize("reduction,cell", [
    (False, DST_CELL), (True, Genotype.builtin("DARTS_V2").reduce), (False, Genotype.builtin("PDARTS").normal)])
def test_transit_cell_equals_target_cell(sharing, reduction, cell):
    torch.manual_seed(0)
    names = op_names("standard")
    transit = TransitCell(names, 12, 12, 8, reduction, False, feature_sharing=sharing, bottleneck=1)
    target = TargetCell(cell, 12, 12, 8, reduction, False)
    with torch.no_grad():  # random, non-trivial weights everywhere
        for p in transit.parameters():
            p.normal_(0, 0.3)
    _copy(transit.preprocess0, target.preprocess0)
    _copy(transit.preprocess1, target.preprocess1)
    for m, node in enumerate(cell.nodes):
        j = m + 2
        for op, i in node:
            unit = i if sharing else edge_index(i, j)
            _copy(transit.ops[unit][names.index(op)], target.ops[target.op_index(j, op, i)])
    selection = tuple(tuple((i, names.index(op)) for op, i in node) for node in cell.nodes)
    s0, s1 = torch.randn(4, 12, 8, 8), torch.randn(4, 12, 8, 8)
    out_t = transit(s0, s1, selection)
    out_g = target(s0, s1)
    assert out_t.shape == out_g.shape
    assert torch.allclose(out_t, out_g, atol=1e-5)
    transit.eval(), target.eval()  # running statistics were copied too
    assert torch.allclose(transit(s0, s1, selection), target(s0, s1), atol=1e-5)

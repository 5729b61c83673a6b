"""The segmentation network: an atrous backbone at output stride 16 whose weights are the
ImageNet target network's, a DeepLabV3 head of the right shape, and its profile."""
import json

import pytest
import torch
import torch.nn as nn

from entrannas.cli import main
from entrannas.evalnet import NetworkImageNet
from entrannas.genotype import Genotype
from entrannas.measure import count_macs, count_params
from entrannas.segnet import ASPP, AtrousBackbone, DeepLabV3Head, SegNet, profile_segmentation
from helpers import DST

DARTS = Genotype.builtin("DARTS_V2")


@pytest.mark.parametrize("genotype", [DARTS, DST], ids=["darts", "dst"])
@pytest.mark.parametrize("stride", [8, 16, 32])
def test_feature_map_is_one_over_the_output_stride(genotype, stride):
    net = AtrousBackbone(genotype, C=4, layers=5, output_stride=stride)
    for h, w in ((64, 64), (96, 128)):
        assert net(torch.randn(2, 3, h, w)).shape[-2:] == (h // stride, w // stride)


def test_cells_after_the_kept_reduction_are_dilated_and_the_rest_unchanged():
    plain = AtrousBackbone(DARTS, C=4, layers=8, output_stride=32)
    atrous = AtrousBackbone(DARTS, C=4, layers=8, output_stride=16)
    last_reduction = max(i for i, c in enumerate(atrous.cells) if c.reduction)  # 5 of 0..7
    for i, (a, p) in enumerate(zip(atrous.cells, plain.cells)):
        for ma, mp in zip(a.ops.modules(), p.ops.modules()):
            if isinstance(ma, nn.Conv2d) and ma.kernel_size[0] > 1:
                factor = 2 if i > last_reduction else 1
                assert ma.dilation == tuple(d * factor for d in mp.dilation), (i, ma)
                assert ma.padding == tuple(q * factor for q in mp.padding)
                assert ma.stride == ((1, 1) if i == last_reduction else mp.stride)
    # DARTS_V2's normal cell: sep_conv_3x3 at dilation 2 and dil_conv_3x3 at 4 after it
    dil = {m.dilation for m in atrous.cells[-1].ops.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1}
    assert dil == {(2, 2), (4, 4)}


def test_backbone_has_the_imagenet_networks_weights():
    """Same names and shapes as NetworkImageNet (so an ImageNet `train` run loads), and at
    output stride 32 the very same features."""
    torch.manual_seed(0)
    ref = NetworkImageNet(DARTS, C=8, layers=5, auxiliary=False).eval()
    weights = {k: v for k, v in ref.state_dict().items() if not k.startswith("classifier.")}
    x = torch.randn(2, 3, 64, 64)
    s0 = ref.stem0(x)
    s1 = ref.stem1(s0)
    for cell in ref.cells:
        s0, s1 = s1, cell(s0, s1)
    plain = AtrousBackbone(DARTS, C=8, layers=5, output_stride=32).eval()
    plain.load_state_dict(weights, strict=True)
    assert torch.equal(plain(x), s1)
    atrous = AtrousBackbone(DARTS, C=8, layers=5, output_stride=16).eval()
    atrous.load_state_dict(weights, strict=True)
    assert atrous(x).shape == (2, plain.out_channels, 4, 4)


def test_aspp_and_head_shapes():
    x = torch.randn(2, 32, 5, 7)
    aspp = ASPP(32, 16, rates=(6, 12, 18))
    assert len(aspp.branches) == 5  # 1x1, three atrous 3x3, image pooling
    assert [b[0].dilation for b in aspp.branches[1:4]] == [(6, 6), (12, 12), (18, 18)]
    assert aspp(x).shape == (2, 16, 5, 7)
    assert DeepLabV3Head(32, 21, channels=16)(x).shape == (2, 21, 5, 7)
    net = SegNet(DARTS, num_classes=21, C=4, layers=5, head_channels=8)
    assert net(torch.randn(2, 3, 65, 47)).shape == (2, 21, 65, 47)  # upsampled to the input


def test_voc_profile_is_the_imagenet_backbone_plus_deeplabv3_head(capsys):
    r = profile_segmentation("DARTS_V2")
    assert (r["C"], r["layers"], r["output_stride"], r["input_shape"]) == (48, 14, 16, (3, 513, 513))
    # DARTS_V2's ImageNet network has 4,718,752 params; the 768 -> 1000 classifier is dropped
    assert round(r["backbone_params_M"] * 1e6) == 4_718_752 - (768 * 1000 + 1000)
    # The head's multiply-adds on the 33x33 map of a 513x513 image (768 channels in):
    head = DeepLabV3Head(768, 21, 256, (6, 12, 18))
    hw = 33 * 33
    expected = (768 * 256 * hw + 3 * 9 * 768 * 256 * hw + 768 * 256  # 1x1, atrous 3x3s, pooling
                + 5 * 256 * 256 * hw + 9 * 256 * 256 * hw + 256 * 21 * hw)  # projection, 3x3, classifier
    assert count_macs(head, (768, 33, 33)) == expected
    assert round(r["head_params_M"] * 1e6) == count_params(head)
    with torch.device("meta"):
        backbone = AtrousBackbone(DARTS, 48, 14, 3, 16)
    assert r["macs_M"] * 1e6 == pytest.approx(count_macs(backbone, (3, 513, 513)) + expected)
    assert main(["profile", "DARTS_V2", "--task", "segmentation", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params_M"] == pytest.approx(r["params_M"])
    assert main(["profile", "DARTS_V2", "--task", "segmentation", "-d", "fmnist-scenes"]) == 0
    assert "1x64x64" in capsys.readouterr().out

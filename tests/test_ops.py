"""The op spaces and the DARTS op definitions."""
import pytest
import torch
import torch.nn.functional as F

from entrannas.ops import OPS, FactorizedReduce, build_op, op_names


def test_spaces():
    std, ext = op_names("standard"), op_names("extended")
    assert len(std) == 8 and std[0] == "none" and len(ext) == 13 and ext[:8] == std
    assert "none" not in op_names("standard", include_none=False)
    with pytest.raises(ValueError, match="standard"):
        op_names("huge")


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("stride,size", [(1, 8), (2, 8), (2, 7)])
def test_every_op_keeps_channels_and_strides(name, stride, size):
    op = build_op(name, 8, stride, affine=False)
    out = op(torch.randn(2, 8, size, size))
    assert out.shape == (2, 8, (size + 1) // 2 if stride == 2 else size, (size + 1) // 2 if stride == 2 else size)


def test_factorized_reduce_equals_the_strided_darts_definition():
    torch.manual_seed(0)
    fr = FactorizedReduce(6, 8)
    for size in (8, 7, 14):
        x = torch.randn(2, 6, size, size)
        r = F.relu(x)
        a = F.conv2d(r, fr.conv_1.weight, stride=2)
        b = F.conv2d(F.pad(r, (0, 1, 0, 1))[:, :, 1:, 1:], fr.conv_2.weight, stride=2)
        assert torch.allclose(fr(x), fr.bn(torch.cat([a, b], 1)), atol=1e-6)


@pytest.mark.parametrize("size", [8, 7])
def test_factorized_reduce_gradients_are_those_of_the_strided_darts_definition(size):
    """The two samplings run as one grouped convolution with a backward of its own
    (layers.offset_pair): input and weight gradients as DARTS' two strided convolutions give."""
    torch.manual_seed(0)
    fr = FactorizedReduce(6, 8, affine=False).double()
    x = torch.randn(2, 6, size, size, dtype=torch.float64)
    g = torch.randn(2, 8, (size + 1) // 2, (size + 1) // 2, dtype=torch.float64)

    def reference(x):
        r = F.relu(x)
        a = F.conv2d(r, fr.conv_1.weight, stride=2)
        b = F.conv2d(F.pad(r, (0, 1, 0, 1))[:, :, 1:, 1:], fr.conv_2.weight, stride=2)
        return F.batch_norm(torch.cat([a, b], 1), None, None, training=True)
    grads = []
    for f in (fr, reference):
        t = x.clone().requires_grad_()
        fr.zero_grad()
        f(t).backward(g)
        grads.append([t.grad, fr.conv_1.weight.grad.clone(), fr.conv_2.weight.grad.clone()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_darts_parameter_counts_per_op():
    n = {k: sum(p.numel() for p in build_op(k, 16, 1, affine=False).parameters()) for k in OPS}
    assert n["sep_conv_3x3"] == 2 * (16 * 9 + 16 * 16)
    assert n["dil_conv_5x5"] == 16 * 25 + 16 * 16
    assert n["conv_1x7_7x1"] == 2 * 16 * 16 * 7
    assert n["max_pool_3x3"] == n["skip_connect"] == n["none"] == 0

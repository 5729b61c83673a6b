"""cpuconv's CPU forms compute what the plain oneDNN calls compute: each op to float rounding
in float32 (outputs and input and weight gradients, 1e-5), whole super-nets and a target
network to 1e-12 in float64; and they are really used where they apply, and not elsewhere."""
import contextlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from entrannas import SuperNet, cpuconv
from entrannas.evalnet import NetworkCIFAR
from entrannas.genotype import BUILTINS

TOL = 1e-5


@contextlib.contextmanager
def forms(on: bool):
    before = cpuconv.ENABLED
    cpuconv.ENABLED = on
    try:
        yield
    finally:
        cpuconv.ENABLED = before


def _run(f, x, w, go):
    x = x.clone().requires_grad_()
    w = None if w is None else w.clone().requires_grad_()
    y = f(x, w)
    y.backward(go(y))
    return [y.detach(), x.grad] + ([] if w is None else [w.grad])


def _same(f, x, w=None, tol=TOL):
    g = torch.Generator().manual_seed(3)
    go = lambda y: torch.randn(y.shape, generator=g)  # noqa: E731 (one draw per run)
    with forms(False):
        ref = _run(f, x, w, go)
    g.manual_seed(3)
    with forms(True):
        new = _run(f, x, w, go)
    for a, b in zip(ref, new):
        assert a.shape == b.shape and a.is_contiguous() and b.is_contiguous()
        assert float((a - b).abs().max()) <= tol * max(1.0, float(a.abs().max()))


@pytest.mark.parametrize("groups,c_in,c_out,size", [(1, 4, 4, 32), (1, 64, 32, 16), (5, 4, 4, 14),
                                                    (2, 8, 16, 7), (14, 16, 16, 8)])
def test_pointwise_convolutions_match(groups, c_in, c_out, size):
    x = torch.randn(6, groups * c_in, size, size)
    w = torch.randn(groups * c_out, c_in, 1, 1)
    _same(lambda x, w: cpuconv.conv2d(x, w, groups=groups), x, w)


@pytest.mark.parametrize("k,dilation,stride", [(3, 1, 1), (5, 1, 1), (3, 2, 1), (5, 2, 1), (3, 1, 2), (5, 2, 2)])
def test_depthwise_convolutions_match(k, dilation, stride):
    x = torch.randn(6, 12, 15, 15)
    w = torch.randn(12, 1, k, k)
    pad = dilation * (k - 1) // 2
    _same(lambda x, w: cpuconv.conv2d(x, w, stride, pad, dilation, 12), x, w)


def test_other_convolutions_and_strided_views_match():
    x = torch.randn(4, 8, 12, 12)
    _same(lambda x, w: cpuconv.conv2d(x, w, 1, 1, 1, 2), x, torch.randn(8, 4, 3, 3))  # grouped 3x3
    _same(lambda x, w: cpuconv.conv2d(x, w, 2, 0, 1, 1), x, torch.randn(6, 8, 1, 1))  # strided 1x1
    # FactorizedReduce's subsampled (non-contiguous) input to a 1x1 convolution
    _same(lambda x, w: cpuconv.conv2d(x[:, :, 1::2, 1::2], w), x, torch.randn(6, 8, 1, 1))


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("batch,channels,stride", [(6, 4, 1), (6, 4, 2), (7, 3, 1), (6, 16, 1), (6, 16, 2), (5, 8, 2)])
def test_pools_match(kind, batch, channels, stride):
    # narrow maps pool with samples side by side as channels (a 4-channel map of 6 samples:
    # all 6, 24 channels; 7 samples of 3 channels: all 7, 21 channels)
    x = torch.randn(batch, channels, 15, 15)
    _same(lambda x, w: cpuconv.pool_3x3(kind, x, stride), x)
    pool = cpuconv.MaxPool2d(3, stride, 1) if kind == "max" else cpuconv.AvgPool2d(3, stride, 1, count_include_pad=False)
    _same(lambda x, w: pool(x), x)


def _grads(net, x, y):
    net.zero_grad()
    out = net(x)
    out = out[0] if isinstance(out, tuple) else out
    F.cross_entropy(out, y).backward()
    return [out.detach()] + [p.grad.clone() for p in net.parameters() if p.grad is not None]


@pytest.mark.parametrize("method", ["entrannas", "dst", "darts", "pcdarts"])
def test_whole_super_nets_match_in_float64(method):
    # float32 whole-net gradients can differ more than a single op's: a rounding-level change
    # flips a max pool's argmax here and there, routing that pixel's gradient elsewhere. In
    # float64 no flip happens, so the two forms must agree to the last digits.
    torch.manual_seed(0)
    net = SuperNet(method=method, C=8, layers=5, num_classes=10).double()
    x, y = torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (4,))
    with forms(False):
        ref = _grads(net, x, y)
    with forms(True):
        new = _grads(net, x, y)
    assert len(ref) == len(new) > 50
    for a, b in zip(ref, new):
        assert float((a - b).abs().max()) <= 1e-12 * max(1.0, float(a.abs().max()))


def test_a_target_network_matches_in_float64():
    torch.manual_seed(0)
    net = NetworkCIFAR(C=8, num_classes=10, layers=5, auxiliary=False, genotype=BUILTINS["DARTS_V2"]).double()
    net.drop_path_prob = 0.0
    x, y = torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (4,))
    with forms(False):
        ref = _grads(net, x, y)
    with forms(True):
        new = _grads(net, x, y)
    for a, b in zip(ref, new):
        assert float((a - b).abs().max()) <= 1e-12 * max(1.0, float(a.abs().max()))


def _ops(f) -> dict[str, int]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        f()
    counts: dict[str, int] = {}
    for e in prof.events():
        counts[e.name] = counts.get(e.name, 0) + 1
    return counts


def test_the_forms_are_used_on_nchw_cpu_maps_only():
    x, w1, wd = torch.randn(2, 8, 8, 8), torch.randn(8, 8, 1, 1), torch.randn(8, 1, 3, 3)
    on = _ops(lambda: cpuconv.conv2d(x, w1))
    assert "aten::bmm" in on and "aten::convolution" not in on
    with forms(False):
        assert "aten::convolution" in _ops(lambda: cpuconv.conv2d(x, w1))
    # a map the run keeps channels_last goes to the plain call and stays channels_last
    xl = x.contiguous(memory_format=torch.channels_last)
    assert "aten::convolution" in _ops(lambda: cpuconv.conv2d(xl, w1))
    assert cpuconv.conv2d(xl, wd, 1, 1, 1, 8).is_contiguous(memory_format=torch.channels_last)
    # the depthwise form convolves the batch-folded map and hands back an NCHW map
    y = cpuconv.conv2d(x, wd, 1, 1, 1, 8)
    assert y.is_contiguous() and torch.equal(y, F.conv2d(x, wd, None, 1, 1, 1, 8))


def test_traced_models_keep_their_convolutions():
    conv = cpuconv.Conv2d(8, 4, 1, bias=False)
    x = torch.randn(2, 8, 6, 6)
    traced = torch.jit.trace(conv, x)
    assert "aten::_convolution" in str(traced.graph) and "matmul" not in str(traced.graph)
    assert traced(torch.randn(3, 8, 6, 6)).shape == (3, 4, 6, 6)
    assert torch.allclose(traced(x), conv(x), atol=1e-6)
    # the state dict is nn.Conv2d's, so checkpoints of either load into the other
    assert list(conv.state_dict()) == list(torch.nn.Conv2d(8, 4, 1, bias=False).state_dict()) == ["weight"]


def _form_cases():
    x, w1, wd = torch.randn(4, 8, 12, 12), torch.randn(8, 8, 1, 1), torch.randn(8, 1, 5, 5)
    return [(lambda t: cpuconv.conv2d(t, w1), x), (lambda t: cpuconv.conv2d(t, wd, 1, 4, 2, 8), x),
            (lambda t: cpuconv.pool_3x3("max", t, 1), x), (lambda t: cpuconv.pool_3x3("avg", t, 1), x),
            (lambda t: cpuconv.pool_3x3("max", t, 2), x[:, :4]), (lambda t: cpuconv.pool_3x3("avg", t, 2), x[:, :4])]


@pytest.mark.parametrize("case", range(6))
def test_the_forms_hand_nchw_gradients_back(case):
    # The op before a form (a ReLU) gets an NCHW gradient: a channels_last one beside its NCHW
    # saved output makes its backward mix layouts, which is slower.
    f, x = _form_cases()[case]
    seen = []
    x = x.clone().requires_grad_()
    h = torch.relu(x)
    h.register_hook(lambda g: seen.append(g.is_contiguous()))
    f(h).sum().backward()
    assert seen == [True]


@pytest.mark.parametrize("case", range(6))
def test_the_forms_save_no_more_for_the_backward_than_the_plain_calls(case):
    # Their channels_last copies are made again in the backward, not kept: at batch 64 the
    # kept copies had raised the EnTranNAS step's peak memory from 1.02 to 1.22 GiB.
    f, x = _form_cases()[case]

    def saved_bytes() -> int:
        h = torch.relu(x.clone().requires_grad_())
        own = {h.untyped_storage().data_ptr()}  # the ReLU keeps its output anyway
        sizes = {}

        def pack(t):
            p = t.untyped_storage().data_ptr()
            if p not in own:
                sizes[p] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            f(h)
        return sum(sizes.values())
    with forms(False):
        plain = saved_bytes()
    assert saved_bytes() <= plain


def test_cpu_autocast_takes_the_plain_calls():
    x, w1 = torch.randn(2, 8, 8, 8), torch.randn(8, 8, 1, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = cpuconv.conv2d(x.requires_grad_(), w1.requires_grad_())
        assert "aten::convolution" in _ops(lambda: cpuconv.conv2d(x, w1))
        assert torch.equal(y, F.conv2d(x, w1))
    y.float().sum().backward()
    assert x.grad.dtype == w1.grad.dtype == torch.float32


@pytest.mark.parametrize("keep_output", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, TOL)])
@pytest.mark.parametrize("hw", [5, 40])  # 40: over _VECTOR_STATS_MIN, the vectorised statistics
def test_batch_norm_matches_and_backs_a_channel_block_of_a_gradient_contiguously(keep_output, dtype, tol, hw):
    """cpuconv.batch_norm is affine-free F.batch_norm (output, running statistics, input
    gradient), for a gradient that is a channel block of a larger one (a concatenation's), and
    whether it keeps its input or its output for the backward, on a small map (ATen's kernel)
    and on one whose statistics are vectorised reductions. Its backward hands ATen's kernel
    a contiguous gradient (the strided one took a serial loop, 3.3-4.4x slower)."""
    assert cpuconv._vectorised_statistics(torch.empty(8, 6, hw, hw)) == (hw == 40)
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(8, 6, hw, hw, generator=g) * 3 + 1).to(dtype)
    grad = torch.randn(8, 12, hw, hw, generator=g).to(dtype)[:, 3:9]
    results = []
    for f in (lambda t, m, v: F.batch_norm(t, m, v, None, None, True, 0.1, 1e-5),
              lambda t, m, v: cpuconv.batch_norm(t, m, v, True, 0.1, 1e-5, keep_output)):
        t = x.clone().requires_grad_()
        m, v = torch.zeros(6, dtype=dtype), torch.ones(6, dtype=dtype)
        y = f(t, m, v)
        y.backward(grad)
        results.append((y.detach(), t.grad, m, v))
    for a, b in zip(*results):
        assert float((a - b).abs().max()) <= tol * max(1.0, float(a.abs().max()))
    from torch.utils._python_dispatch import TorchDispatchMode

    class Backwards(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.native_batch_norm_backward.default:
                seen.append(args[0].is_contiguous())
            return func(*args, **(kwargs or {}))
    seen = []
    with Backwards():
        cpuconv.batch_norm(x.clone().requires_grad_(), None, None, True, keep_output=keep_output).backward(grad)
    assert seen == [True]


def test_batch_norm_statistics_of_a_large_map_skip_atens_scalar_loops():
    """A map of _VECTOR_STATS_MIN elements or more, with 16 pixels a channel or more, gets its
    statistics from vectorised sums (ATen's CPU forward gathers them in serial float64 loops,
    about 4x slower in a step), with or without a gradient, and with the affine transform; a smaller
    map, or one of few pixels, keeps ATen's single call (faster there)."""
    big = torch.randn(16, 4, 32, 32, requires_grad=True)
    small = torch.randn(4, 4, 8, 8, requires_grad=True)
    few_pixels = torch.randn(64, 256, 2, 2, requires_grad=True)
    assert big.numel() == few_pixels.numel() == cpuconv._VECTOR_STATS_MIN

    def run(t):
        return cpuconv.batch_norm(t, torch.zeros(t.shape[1]), torch.ones(t.shape[1]), True)
    assert "aten::native_batch_norm" not in _ops(lambda: run(big))
    assert "aten::native_batch_norm" not in _ops(lambda: run(big.detach()))
    assert "aten::native_batch_norm" not in _ops(lambda: cpuconv.BatchNorm2d(4)(big))
    assert "aten::native_batch_norm" in _ops(lambda: run(small))
    assert "aten::native_batch_norm" in _ops(lambda: run(few_pixels))


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, TOL)])
@pytest.mark.parametrize("hw", [5, 40])
def test_batchnorm2d_module_is_nn_batchnorm2d(momentum, dtype, tol, hw):
    """cpuconv.BatchNorm2d (the target networks' and stems' affine BatchNorm) computes what
    nn.BatchNorm2d computes in training over two steps: output, running statistics and their
    count, and the gradients of the input, weight and bias; in eval mode it is nn's call, and
    the state dicts are the same."""
    g = torch.Generator().manual_seed(0)
    mods = [nn.BatchNorm2d(6, momentum=momentum).to(dtype), cpuconv.BatchNorm2d(6, momentum=momentum).to(dtype)]
    with torch.no_grad():
        for m in mods:
            m.weight.copy_(torch.linspace(0.5, 2, 6))
            m.bias.copy_(torch.linspace(-1, 1, 6))
    xs = [(torch.randn(8, 6, hw, hw, generator=g) * 3 + 1).to(dtype) for _ in range(2)]
    grad = torch.randn(8, 6, hw, hw, generator=g).to(dtype)
    results = []
    for m in mods:
        out = []
        for x in xs:
            t = x.clone().requires_grad_()
            y = m(t)
            y.backward(grad)
            out += [y.detach(), t.grad]
        out += [m.weight.grad, m.bias.grad, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()]
        m.eval()
        out.append(m(xs[0]).detach())
        results.append(out)
    for a, b in zip(*results):
        assert float((a - b).abs().max()) <= tol * max(1.0, float(a.abs().max()))
    assert mods[0].state_dict().keys() == mods[1].state_dict().keys()


def test_batch_norm_keeping_its_output_frees_its_input():
    x = torch.randn(8, 6, 5, 5, requires_grad=True)
    h = x * 2  # the BatchNorm's input, kept by nothing else

    def kept(keep_output):
        sizes = {}

        def pack(t):
            sizes[t.untyped_storage().data_ptr()] = t
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = cpuconv.batch_norm(h, None, None, True, keep_output=keep_output)
        return y, sizes
    y, saved = kept(True)
    assert h.untyped_storage().data_ptr() not in saved and y.untyped_storage().data_ptr() in saved
    y, saved = kept(False)
    assert h.untyped_storage().data_ptr() in saved

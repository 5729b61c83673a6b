"""run.narrow_bn=var_mean: the narrow BatchNorm as reductions over N*H*W computes what
F.batch_norm computes (outputs, input gradients, running statistics), whole super-nets agree
with it in float64, and the super-net really routes its narrow maps, and only those, to it."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

from entrannas import SuperNet, accel, cpuconv, narrowbn
from entrannas.config import ConfigError, load_config


@contextlib.contextmanager
def form(name: str, cpu_forms: bool = False):
    """The narrow form, with the CPU forms off (they take the BatchNorms first on a CPU)."""
    before = cpuconv.ENABLED
    cpuconv.ENABLED = cpu_forms
    narrowbn.set_form(name)
    try:
        yield
    finally:
        narrowbn.set_form("native")
        cpuconv.ENABLED = before


def _bn(fn, x, g, momentum=0.1):
    x = x.clone().requires_grad_()
    C = x.shape[1]  # running statistics from an earlier step, the same for both forms
    rm, rv = torch.linspace(-1, 1, C, dtype=x.dtype), torch.linspace(0.5, 2, C, dtype=x.dtype)
    y = fn(x, rm, rv, momentum)
    (gx,) = torch.autograd.grad(y, x, g)
    return y.detach(), gx, rm, rv


def _native(x, rm, rv, momentum):
    return F.batch_norm(x, rm, rv, None, None, True, momentum, 1e-5)


def _var_mean(x, rm, rv, momentum):
    return narrowbn.var_mean_batch_norm(x, rm, rv, momentum, 1e-5)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("shape,momentum", [((8, 4, 6, 6), 0.1), ((3, 8, 5, 7), 1.0)])
def test_the_form_computes_what_batch_norm_computes(layout, shape, momentum):
    torch.manual_seed(0)
    x = (3 * torch.randn(shape) + 1).contiguous(memory_format=layout)
    g = torch.randn(shape).contiguous(memory_format=layout)
    ref, new = _bn(_native, x, g, momentum), _bn(_var_mean, x, g, momentum)
    for a, b in zip(ref, new):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), float((a - b).abs().max())
    assert new[0].is_contiguous(memory_format=layout)  # the map keeps its layout


def test_bfloat16_maps_are_normalised_in_float32():
    torch.manual_seed(0)
    x = 3 * torch.randn(8, 4, 6, 6) + 1
    y = narrowbn.var_mean_batch_norm(x.bfloat16(), None, None)
    assert y.dtype == torch.bfloat16
    ref = F.batch_norm(x.bfloat16().float(), None, None, training=True)
    assert float((y.float() - ref).abs().max()) < 2e-2  # bf16 rounding of the output only


def test_one_value_per_channel_is_refused_as_batch_norm_refuses_it():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        narrowbn.var_mean_batch_norm(torch.randn(1, 4, 1, 1), None, None)


def _grads(net, x, y):
    net.zero_grad()
    out = net(x)
    F.cross_entropy(out, y).backward()
    return [out.detach()] + [p.grad.clone() for p in net.parameters() if p.grad is not None] + \
        [b.clone() for b in net.buffers() if b.is_floating_point()]


@pytest.mark.parametrize("method", ["entrannas", "dst"])
def test_whole_super_nets_match_in_float64(method):
    torch.manual_seed(0)
    net = SuperNet(method=method, C=16, layers=3, num_classes=10).double()
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (4,))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with form("native"):
        ref = _grads(net, x, y)
    net.load_state_dict(state)  # the running statistics start over
    with form("var_mean"):
        new = _grads(net, x, y)
    assert len(ref) == len(new) > 50
    for a, b in zip(ref, new):
        assert float((a - b).abs().max()) <= 1e-10 * max(1.0, float(a.abs().max()))


@pytest.mark.parametrize("name", ["native", "var_mean"])
def test_the_super_net_sends_its_narrow_maps_and_only_those_to_the_form(monkeypatch, name):
    widths = {"native": [], "var_mean": []}
    plain, reductions = F.batch_norm, narrowbn.var_mean_batch_norm

    def native(x, *args, **kwargs):
        widths["native"].append(x.shape[1])
        return plain(x, *args, **kwargs)

    def var_mean(x, *args, **kwargs):
        widths["var_mean"].append(x.shape[1])
        return reductions(x, *args, **kwargs)
    monkeypatch.setattr(F, "batch_norm", native)
    monkeypatch.setattr(narrowbn, "var_mean_batch_norm", var_mean)
    torch.manual_seed(0)
    net = SuperNet(method="entrannas", C=16, layers=3, num_classes=10)  # bottleneck: 4-channel maps
    with form(name):
        net(torch.randn(4, 3, 8, 8)).sum().backward()
    if name == "native":
        assert widths["var_mean"] == [] and min(widths["native"]) == 4
    else:
        assert len(widths["var_mean"]) > 10 and set(widths["var_mean"]) <= set(range(1, 16))
        assert min(widths["native"]) >= 16  # every narrow map went to the form


def test_the_setting_is_checked_and_prepare_applies_it():
    with pytest.raises(ConfigError, match="native, var_mean"):
        load_config("fmnist-quick", ["run.narrow_bn=sums"])
    cfg = load_config("fmnist-quick", ["run.narrow_bn=var_mean"])
    # A GPU form for the super-net: refused on a CPU and in target-network training.
    with pytest.raises(ConfigError, match="GPU form"):
        accel.check(cfg.run, torch.device("cpu"), search=True)
    with pytest.raises(ConfigError, match="target network"):
        accel.check(cfg.run, torch.device("cuda"))
    accel.check(cfg.run, torch.device("cuda"), search=True)
    accel.check(load_config("fmnist-quick").run, torch.device("cpu"), search=True)
    try:
        accel.prepare(torch.nn.Identity(), cfg.run, torch.device("cpu"))
        assert narrowbn.wanted(torch.zeros(2, 4, 3, 3), training=True)
        assert not narrowbn.wanted(torch.zeros(2, 16, 3, 3), training=True)
        assert not narrowbn.wanted(torch.zeros(2, 4, 3, 3), training=False)  # eval: running stats
    finally:
        narrowbn.set_form("native")
    assert load_config("fmnist-quick").run.narrow_bn == "native"  # until measured on a GPU

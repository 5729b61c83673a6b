"""BatchNorm recalibration: a super-net validated on statistics of the architecture it runs."""
import pytest
import torch

from entrannas.bnstats import batchnorm_statistics, recalibrate_batchnorm
from entrannas.supernet import SuperNet


class _Batches:
    """The loader interface recalibration uses: set_epoch, then iteration."""

    def __init__(self, batches):
        self.batches, self.epochs = batches, []

    def set_epoch(self, epoch, batch=0):
        self.epochs.append(epoch)

    def __iter__(self):
        return iter(self.batches)


def _net(**kw):
    torch.manual_seed(0)
    return SuperNet(method="entrannas", C=4, layers=5, num_classes=10, in_channels=1,
                    engine_cells="first", **kw)


def _batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 1, 16, 16, generator=g) * 3 + 1, torch.randint(0, 10, (16,), generator=g))
            for _ in range(n)]


@pytest.mark.parametrize("batched", [True, False])
def test_eval_mode_then_matches_the_batch_statistics(batched):
    """Fresh statistics (mean 0, var 1) are far from these inputs'; after recalibrating on the
    batch itself, eval mode computes what training mode computes on it (up to the unbiased
    variance the running statistics keep)."""
    net = _net(batched=batched)
    x, _ = batch = _batches(1)[0]
    with torch.no_grad():
        net.train()
        train_out = net(x)
        before = net.state_dict()
        net.load_state_dict({k: (torch.zeros_like(v) if "mean" in k else torch.ones_like(v))
                             if ("mean" in k or "var" in k) and v.is_floating_point() else v
                             for k, v in before.items()})
        net.eval()
        stale = net(x)
        assert recalibrate_batchnorm(net, _Batches([batch]), 1) == 1
        net.eval()
        fresh = net(x)
    assert not torch.allclose(stale, train_out, atol=1e-2)
    torch.testing.assert_close(fresh, train_out, atol=0.05, rtol=0.05)
    assert not net.training  # the mode it was called in
    net.train()
    recalibrate_batchnorm(net, _Batches([batch]), 1)
    assert net.training


def test_average_over_batches_and_unused_statistics_untouched():
    """Several batches give the mean of the per-batch statistics; an op the derived cell does
    not run keeps its statistics; momenta are restored."""
    net = _net()
    batches = _batches(3)
    stats = batchnorm_statistics(net)
    assert len(stats) > 10 and any(not hasattr(m, "momentum") for m, _ in stats)  # banks too
    for _, b in stats:
        b.fill_(7.0)  # a value no batch gives
    singles = []
    for batch in batches:
        recalibrate_batchnorm(net, _Batches([batch]), 1)
        singles.append([b.clone() for _, b in stats])
        for _, b in stats:
            b.fill_(7.0)
    loader = _Batches(batches)
    assert recalibrate_batchnorm(net, loader, 3, epoch=4) == 3
    assert loader.epochs == [4]
    changed = unchanged = 0
    for i, (_, b) in enumerate(stats):
        mean = sum(s[i] for s in singles) / 3
        torch.testing.assert_close(b, mean)
        changed += int((b != 7.0).any())
        unchanged += int((b == 7.0).any())
    assert changed and unchanged  # the Transit-cells' unselected ops kept theirs
    for m, _ in stats:
        assert getattr(m, "momentum", getattr(m, "bn_momentum", None)) == 0.1


def test_zero_batches_changes_nothing():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert recalibrate_batchnorm(net, _Batches(_batches(2)), 0) == 0
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k

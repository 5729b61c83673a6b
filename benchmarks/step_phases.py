"""Top-level aten ops of one first-order search step, phase by phase: the architecture forward
and backward, Adam, the weight forward and backward, gradient clipping and SGD. The phases are
those of `entrannas.search.search_step`, run one at a time under torch.profiler (the counter
of search_step.py --ops), after two warm-up steps.

    python benchmarks/step_phases.py                          # EnTranNAS (bottleneck), CPU forms
    python benchmarks/step_phases.py --plain-convs            # oneDNN's plain calls (the GPU's ops)
    python benchmarks/step_phases.py --config dst --batch 16
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from search_step import CONFIGS, count_top_level_ops
from entrannas import SuperNet, cpuconv
from entrannas import search as S
from entrannas.optim import clip_grad_norm_, optimizer_options
from entrannas.supernet import frozen


def phases(config: str, batch: int, plain: bool) -> dict:
    cpuconv.ENABLED = not plain
    torch.manual_seed(0)
    net = SuperNet(C=16, layers=8, num_classes=10, **CONFIGS[config])
    opts = optimizer_options(torch.device("cpu"))
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4, **opts)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3, **opts)
    g = torch.Generator().manual_seed(1)
    (xt, yt), (xv, yv) = [(torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g))
                          for _ in range(2)]
    for _ in range(2):
        S.search_step(net, w_opt, a_opt, (xt, yt), (xv, yv))
    weights, kept = net.weight_parameters(), {}

    def arch_forward():
        with frozen(weights):
            kept["loss"] = F.cross_entropy(net(xv), yv) + net.dst_regulariser()

    def weight_forward():
        with frozen(net.arch_parameters()):
            kept["loss"] = F.cross_entropy(net(xt), yt)

    def weight_backward():  # as search_step hands the gradients over
        grads = torch.autograd.grad(kept["loss"], weights, allow_unused=True)
        for p, grad in zip(weights, S._writable(grads)):
            p.grad = grad
        S._zero_unused_grads(weights)

    row = {"architecture forward": count_top_level_ops(arch_forward),
           "architecture backward": count_top_level_ops(
               lambda: kept["loss"].backward(inputs=net.arch_parameters())),
           "Adam": count_top_level_ops(a_opt.step),
           "weight forward": count_top_level_ops(weight_forward),
           "weight backward": count_top_level_ops(weight_backward),
           "clip + SGD": count_top_level_ops(lambda: (clip_grad_norm_(weights, 5.0), w_opt.step()))}
    row["step"] = sum(row.values())
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="bottleneck", choices=list(CONFIGS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--plain-convs", action="store_true", help="no cpuconv forms")
    ap.add_argument("--json-line", action="store_true")
    args = ap.parse_args(argv)
    row = phases(args.config, args.batch, args.plain_convs)
    if args.json_line:
        print(json.dumps(row))
        return
    print(f"| phase | top-level ops ({args.config}, batch {args.batch}, "
          f"{'plain calls' if args.plain_convs else 'CPU forms'}) |\n|---|---|")
    for name, n in row.items():
        print(f"| {name} | {n:,} |")


if __name__ == "__main__":
    main()

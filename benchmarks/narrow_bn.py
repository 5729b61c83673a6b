"""Affine-free training-mode BatchNorm on narrow maps, forward + backward, in three forms:

    native    F.batch_norm (cuDNN on a GPU): what the op banks call
    var_mean  torch.var_mean over (N, H, W), then (x - mean) * rsqrt(var + eps): the
              library's form (entrannas.narrowbn, run.narrow_bn=var_mean)
    sums      per-channel sums of x and x^2 over (N, H, W) as one reduction each

On one H200 the native BatchNorm backward on the 4-channel maps behind EnTranNAS' bottleneck
(batch 512, 32x32) took 232 us a call, 32% of the search step's GPU time: one channel is too
little work for a GPU. The other two forms reduce over N*H*W with all of the GPU. This script
times each form (CUDA events on a GPU, wall time on a CPU) and checks that each gives the
native outputs, input gradients and running statistics (float32, printed as max differences).

    python benchmarks/narrow_bn.py                          # the shapes of the CIFAR search
    python benchmarks/narrow_bn.py --shape 512 4 32 32 --repeat 200
    python benchmarks/narrow_bn.py --bf16-channels-last     # the maps of a search on a GPU
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

SHAPES = [(512, 4, 32, 32), (512, 8, 16, 16), (512, 16, 8, 8), (512, 16, 32, 32)]


def native(x, rm, rv, momentum=0.1, eps=1e-5):
    return F.batch_norm(x, rm, rv, None, None, True, momentum, eps)


def _update(rm, rv, mean, var, n, momentum):
    with torch.no_grad():
        rm.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
        rv.mul_(1 - momentum).add_(var.detach() * (n / (n - 1)), alpha=momentum)


def var_mean(x, rm, rv, momentum=0.1, eps=1e-5):
    # The library's form, what run.narrow_bn=var_mean runs in the super-net.
    from entrannas.narrowbn import var_mean_batch_norm
    return var_mean_batch_norm(x, rm, rv, momentum, eps)


def sums(x, rm, rv, momentum=0.1, eps=1e-5):
    n = x.numel() // x.shape[1]
    mean = x.sum(dim=(0, 2, 3), keepdim=True) / n
    var = (x * x).sum(dim=(0, 2, 3), keepdim=True) / n - mean * mean
    _update(rm, rv, mean.flatten(), var.flatten(), n, momentum)
    return (x - mean) * torch.rsqrt(var + eps)


FORMS = {"native": native, "var_mean": var_mean, "sums": sums}


def timed(fn, x, g, repeat: int, device) -> float:
    C = x.shape[1]
    rm, rv = torch.zeros(C, device=device), torch.ones(C, device=device)

    def once():
        y = fn(x, rm, rv)
        torch.autograd.grad(y, x, g)
    for _ in range(3):
        once()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(repeat):
            once()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) * 1e3 / repeat
    t = time.perf_counter()
    for _ in range(repeat):
        once()
    return (time.perf_counter() - t) * 1e6 / repeat


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=4, action="append", help="N C H W (repeatable)")
    ap.add_argument("--repeat", type=int, default=100)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16-channels-last", action="store_true",
                    help="bfloat16 channels_last maps, as a search on a GPU runs them (default: float32 NCHW)")
    args = ap.parse_args(argv)
    dtype = torch.bfloat16 if args.bf16_channels_last else torch.float32
    layout = torch.channels_last if args.bf16_channels_last else torch.contiguous_format
    device = torch.device(args.device)
    rows = []
    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"{'bfloat16 channels_last' if args.bf16_channels_last else 'float32 NCHW'} maps")
    print("| shape | form | forward + backward (us) | max |dy| | max |dx grad| | max |d running var| |")
    print("|---|---|---|---|---|---|")
    for shape in [tuple(s) for s in args.shape] if args.shape else SHAPES:
        torch.manual_seed(0)
        x = (3 * torch.randn(shape, device=device) + 1).to(dtype).contiguous(memory_format=layout).requires_grad_()
        g = torch.randn(shape, device=device).to(dtype).contiguous(memory_format=layout)
        ref = None
        for name, fn in FORMS.items():
            rm, rv = torch.zeros(shape[1], device=device), torch.ones(shape[1], device=device)
            y = fn(x, rm, rv)
            (gx,) = torch.autograd.grad(y, x, g)
            if ref is None:
                ref = (y.detach(), gx, rv)
            diffs = [float((a.float() - b.float()).abs().max()) for a, b in zip((y.detach(), gx, rv), ref)]
            us = timed(fn, x, g, args.repeat, device)
            rows.append({"shape": shape, "form": name, "us": us, "max_diff": diffs})
            print(f"| {list(shape)} | {name} | {us:.1f} | {diffs[0]:.1e} | {diffs[1]:.1e} | {diffs[2]:.1e} |",
                  flush=True)
    return rows


if __name__ == "__main__":
    main()

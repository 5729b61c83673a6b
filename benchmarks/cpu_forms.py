"""Time the CPU forms of `entrannas.cpuconv` against the plain ATen calls, op by op, at the
sizes of the CIFAR-shape super-net at batch 64 (C=16, bottleneck 4: 4-channel 32x32 maps behind
the bottleneck, 16 and 32 channels around it). Each figure is the median of --repeat calls
after two warm-up calls, in milliseconds, with the heap keeping freed memory as the search does.

    python benchmarks/cpu_forms.py                 # all four tables
    python benchmarks/cpu_forms.py --only bn pool  # some of them

* bn: BatchNorm's backward with a contiguous gradient, with a gradient that is a channel block
  of a 4x wider one (a concatenation's: ATen loops serially per channel then), and with that
  block copied first (what cpuconv.batch_norm does).
* bn-forward: a training-mode BatchNorm's forward (statistics, normalisation, running
  statistics) as ATen's call against cpuconv's vectorised statistics (`cpuconv._normalise`),
  affine-free and affine.
* pool: a 3x3 max and average pool, forward and backward, on the NCHW map against a
  channels_last copy with samples side by side as channels (cpuconv's form, copies included).
* depthwise: a stride-1 depthwise convolution's forward and backward (input and kernel
  gradients) as oneDNN's NCHW call, on channels_last copies (copies included), and as
  cpuconv's form: the batch folded into channels, the input gradient as the forward of the
  output's gradient with flipped kernels.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from entrannas import accel, cpuconv

CL = torch.channels_last


def timed(f, repeat: int) -> float:
    f()
    f()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def bn_table(repeat: int) -> None:
    print("\n| map | contiguous gradient | channel block of a gradient | block copied first |")
    print("|---|---|---|---|")
    for shape in [(64, 16, 32, 32), (64, 4, 32, 32), (64, 32, 16, 16), (64, 64, 8, 8)]:
        B, C, H, W = shape
        x = torch.randn(shape)
        rm, rv = torch.zeros(C), torch.ones(C)
        _, mean, invstd = torch.ops.aten.native_batch_norm(x, None, None, rm, rv, True, 0.1, 1e-5)
        block = torch.randn(B, 4 * C, H, W)[:, C:2 * C]

        def back(g):
            return lambda: torch.ops.aten.native_batch_norm_backward(g, x, None, rm, rv, mean, invstd, True,
                                                                     1e-5, [True, False, False])
        print(f"| {list(shape)} | {timed(back(block.contiguous()), repeat):.3f} | "
              f"{timed(back(block), repeat):.3f} | "
              f"{timed(lambda: back(block.contiguous())(), repeat):.3f} |")


def bn_forward_table(repeat: int) -> None:
    print("\n| map | ATen | vectorised statistics | ATen, affine | vectorised, affine |")
    print("|---|---|---|---|---|")
    for shape in [(64, 4, 32, 32), (64, 16, 32, 32), (64, 32, 16, 16), (64, 64, 8, 8), (64, 48, 32, 32)]:
        C = shape[1]
        x = torch.randn(shape)
        rm, rv = torch.zeros(C), torch.ones(C)
        w, b = torch.rand(C) + 0.5, torch.randn(C)
        cells = []
        for weight, bias in ((None, None), (w, b)):
            cells.append(timed(lambda: torch.ops.aten.native_batch_norm(x, weight, bias, rm, rv, True, 0.1, 1e-5),
                               repeat))
            cells.append(timed(lambda: cpuconv._normalise(x, weight, bias, rm, rv, 0.1, 1e-5), repeat))
        print(f"| {list(shape)} | " + " | ".join(f"{t:.3f}" for t in cells) + " |")


def pool_table(repeat: int) -> None:
    print("\n| map | stride | max NCHW | max form | average NCHW | average form |")
    print("|---|---|---|---|---|---|")
    for shape in [(64, 4, 32, 32), (64, 8, 32, 32), (64, 16, 16, 16), (64, 64, 8, 8)]:
        for stride in (1, 2):
            x = torch.randn(shape)
            row = []
            for kind in ("max", "avg"):
                def plain(t):
                    if kind == "max":
                        return F.max_pool2d(t, 3, stride, 1)
                    return F.avg_pool2d(t, 3, stride, 1, count_include_pad=False)

                t = x.clone().requires_grad_()

                def run(f):
                    def go():
                        t.grad = None
                        y = f(t)
                        y.backward(torch.ones_like(y))
                    return go
                with_forms(False)
                row.append(timed(run(plain), repeat))
                with_forms(True)
                row.append(timed(run(lambda t: cpuconv.pool_3x3(kind, t, stride)), repeat))
            print(f"| {list(shape)} | {stride} | " + " | ".join(f"{v:.2f}" for v in row) + " |")


def depthwise_table(repeat: int) -> None:
    print("\n| map | kernel | forward NCHW | forward form | backward NCHW | backward channels_last "
          "| backward form | of which input gradient |")
    print("|---|---|---|---|---|---|---|---|")
    for shape, k, d in [((64, 4, 32, 32), 3, 1), ((64, 4, 32, 32), 5, 1), ((64, 4, 32, 32), 3, 2),
                        ((64, 4, 32, 32), 5, 2), ((64, 8, 16, 16), 5, 1), ((64, 16, 8, 8), 5, 2)]:
        B, C, H, W = shape
        x, w, gy = torch.randn(shape), torch.randn(C, 1, k, k), torch.randn(shape)
        pad = d * (k // 2)
        mask = (True, True, False)
        nchw_f = timed(lambda: F.conv2d(x, w, None, 1, pad, d, C), repeat)
        with_forms(True)
        form_f = timed(lambda: cpuconv.conv2d(x, w, 1, pad, d, C), repeat)
        nchw_b = timed(lambda: torch.ops.aten.convolution_backward(gy, x, w, None, (1, 1), (pad, pad), (d, d), False,
                                                                   (0, 0), C, mask), repeat)
        cl_b = timed(lambda: [t.contiguous() for t in torch.ops.aten.convolution_backward(
            gy.contiguous(memory_format=CL), x.contiguous(memory_format=CL), w, None, (1, 1), (pad, pad), (d, d),
            False, (0, 0), C, mask)[:2]], repeat)

        t = x.clone().requires_grad_()

        def form_backward(need_w=True):
            kw = w.clone().requires_grad_(need_w)

            def go():
                t.grad = kw.grad = None
                cpuconv.conv2d(t, kw, 1, pad, d, C).backward(gy)
            return go
        t_all = timed(form_backward(True), repeat) - form_f
        t_input = timed(form_backward(False), repeat) - form_f
        print(f"| {list(shape)} | {k}x{k}, dilation {d} | {nchw_f:.2f} | {form_f:.2f} | {nchw_b:.2f} | {cl_b:.2f} | "
              f"{t_all:.2f} | {t_input:.2f} |")


def with_forms(on: bool) -> None:
    cpuconv.ENABLED = on


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=["bn", "bn-forward", "pool", "depthwise"],
                    default=["bn", "bn-forward", "pool", "depthwise"])
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args(argv)
    accel.retain_freed_memory()
    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads; milliseconds, "
          f"median of {args.repeat}")
    tables = {"bn": bn_table, "bn-forward": bn_forward_table, "pool": pool_table, "depthwise": depthwise_table}
    for name in args.only:
        tables[name](args.repeat)


if __name__ == "__main__":
    main()

"""Table 4 (flexibility): EnTranNAS-DST with lambda 0.2 / 0.1 / 0.05. A larger lambda pushes
the thresholds up and prunes more connections, so the searched cells (and their target
networks) shrink: the topology is searched, not fixed at two inputs per node."""
from __future__ import annotations

from ..animate import animate_search, connection_series, plot_connections
from ..genotype import Genotype
from ..measure import profile_genotype
from .common import Context, markdown_table, run_jobs, search_job, write_summary

# The paper's Table 4 (searched on ImageNet): lambda -> (edges N, edges R, params M, FLOPs M).
PAPER = {0.2: (9, 8, 5.07, 580), 0.1: (11, 6, 5.88, 673), 0.05: (13, 14, 6.99, 779)}


def run(ctx: Context) -> dict:
    s = ctx.settings
    jobs = [search_job(ctx, f"DST lambda {lam}", s["search"], f"lambda-{lam}",
                       [f"model.dst_lambda={lam}"], dst_lambda=lam) for lam in s["lambdas"]]
    rows = run_jobs(ctx, jobs)
    series = {}
    for r in rows:
        g = Genotype.from_dict(r["genotype"])
        cifar, imagenet = profile_genotype(g, "cifar10"), profile_genotype(g, "imagenet")
        r.update(edges_normal=cifar["edges_normal"], edges_reduce=cifar["edges_reduce"],
                 ops_normal=cifar["ops_normal"], ops_reduce=cifar["ops_reduce"],
                 cifar_params_M=cifar["params_M"], cifar_macs_M=cifar["macs_M"],
                 imagenet_params_M=imagenet["params_M"], imagenet_macs_M=imagenet["macs_M"])
        r["edges"] = f"{r['ops_normal']} / {r['ops_reduce']}"  # (op, input) arrows: the paper's count
        r["inputs"] = f"{r['edges_normal']} / {r['edges_reduce']}"
        paper = PAPER.get(r["dst_lambda"])
        if paper:
            r["paper_edges"] = f"{paper[0]} / {paper[1]}"
            r["paper_params_M"], r["paper_macs_M"] = paper[2], paper[3]
        lam = r["dst_lambda"]
        animate_search(r["run_dir"], ctx.out / f"cells-lambda-{lam}.gif", title=f"DST lambda {lam}")
        series[f"lambda {lam}"] = connection_series(r["run_dir"])
        r["connections_per_epoch"] = series[f"lambda {lam}"]
        r["tau_final_epoch"] = r["epochs"][-1]["tau"] if r["epochs"] else float("nan")
        if series[f"lambda {lam}"]:  # the sparsest epoch: a cell can fill up again at a small tau
            e, n, red = min(series[f"lambda {lam}"], key=lambda p: (p[1] + p[2], p[0]))
            r["fewest_edges"] = f"{n} / {red} (epoch {e})"  # epochs counted from 1, as in the log
    plot_connections(series, ctx.out / "connections.png")
    table = markdown_table(
        [("dst_lambda", "lambda"), ("edges", "edges N / R"), ("inputs", "distinct inputs N / R"),
         ("imagenet_params_M", "params M (ImageNet net)"),
         ("imagenet_macs_M", "FLOPs M (ImageNet net)"), ("cifar_params_M", "params M (CIFAR net)"),
         ("cifar_macs_M", "FLOPs M (CIFAR net)"), ("val_acc", "super-net val acc %"),
         ("tau_final_epoch", "tau (final epoch)", 4), ("fewest_edges", "fewest edges N / R (epoch)"),
         ("paper_edges", "paper edges"), ("paper_params_M", "paper params M"),
         ("paper_macs_M", "paper FLOPs M")], rows)
    note = ("Edges count (op, input) arrows into the intermediate nodes, as the paper's cell "
            "pictures and Table 4 do (a DARTS cell has 8); distinct inputs count (input, node) "
            "pairs, several ops may share one. Params "
            "and FLOPs (multiply-adds, as the paper counts them) are of the target network each "
            "genotype builds in the ImageNet setting (C=48, 14 cells, 224x224) and the CIFAR "
            "setting (C=36, 20 cells, 32x32), without auxiliary head. Fewest edges: the sparsest "
            "epoch's cells; where that is not the last epoch at a small final tau, the cells filled "
            "up again (docs/design.md, \"DST at a small temperature\"). Pictures: "
            "cells-lambda-*.gif (one frame per epoch), connections.png.")
    write_summary(ctx, "Table 4: EnTranNAS-DST with different lambda", [table], {"rows": rows}, note)
    return {"rows": rows}

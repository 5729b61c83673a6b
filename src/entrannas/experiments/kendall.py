"""Table 2 (consistency): for each method, N searches with different seeds, each found genotype
retrained from scratch, and the Kendall rank correlation between the super-net's validation
accuracy and the retrained accuracy. The paper: DARTS < EnTranNAS < EnTranNAS-DST."""
from __future__ import annotations

import math

from scipy.stats import kendalltau

from .common import Context, markdown_table, run_jobs, search_job, train_job, write_summary

PAPER = {"darts": -0.47, "entrannas": 0.33, "dst": 0.60}
NAMES = {"darts": "DARTS", "entrannas": "EnTranNAS", "dst": "EnTranNAS-DST"}


def run(ctx: Context) -> dict:
    s = ctx.settings
    seeds = list(range(int(ctx.options.get("seeds") or s["seeds"])))
    methods = [m for m in s["methods"] if m in (ctx.options.get("methods") or s["methods"])]
    searches = [search_job(ctx, f"{NAMES[m]} seed {seed}", s["methods"][m], f"{m}-s{seed}",
                           [*s.get("common", []), f"run.seed={seed}"], method=m, seed=seed)
                for m in methods for seed in seeds]
    found = run_jobs(ctx, searches)
    # Every retraining uses the same seed: only the architecture differs between them.
    trainings = [train_job(ctx, f"retrain {NAMES[f['method']]} seed {f['seed']}", s["train"],
                           f"retrain-{f['method']}-s{f['seed']}", f["genotype"], ["run.seed=0"],
                           method=f["method"], seed=f["seed"]) for f in found]
    retrained = run_jobs(ctx, trainings)
    pairs = [{"method": NAMES[f["method"]], "seed": f["seed"], "supernet_acc": f["val_acc"],
              "retrained_acc": t["test_acc"], "params_M": t["params_M"],
              "search_s": f["search_wall_time"], "train_s": t["wall_time"]}
             for f, t in zip(found, retrained)]
    rows = []
    for m in methods:
        ps = [p for p in pairs if p["method"] == NAMES[m]]
        tau, p_value = kendalltau([p["supernet_acc"] for p in ps], [p["retrained_acc"] for p in ps])
        rows.append({"method": NAMES[m], "kendall_tau": float(tau), "p_value": float(p_value),
                     "n": len(ps), "paper_tau": PAPER.get(m, math.nan),
                     "mean_retrained": sum(p["retrained_acc"] for p in ps) / len(ps)})
    _plot(ctx, pairs, rows)
    table = markdown_table([("method", "method"), ("kendall_tau", "Kendall tau"),
                            ("p_value", "p-value"), ("n", "searches"),
                            ("mean_retrained", "mean retrained acc %"),
                            ("paper_tau", "paper tau (CIFAR-10)")], rows)
    detail = markdown_table([("method", "method"), ("seed", "seed"),
                             ("supernet_acc", "super-net val acc %"),
                             ("retrained_acc", "retrained test acc %"), ("params_M", "params M")],
                            pairs)
    note = (f"Kendall tau (scipy.stats.kendalltau, tau-b) over {len(seeds)} seeds per method. With "
            f"so few pairs a tau needs |tau| >= 0.87 (6 pairs) to reach p < 0.05: read the "
            f"p-values before the ranking. Plot: kendall.png.")
    write_summary(ctx, "Table 2: Kendall tau between super-net and retrained accuracy",
                  [table, "", "Every search:", "", detail], {"rows": rows, "pairs": pairs}, note)
    return {"rows": rows, "pairs": pairs}


def _plot(ctx: Context, pairs: list[dict], rows: list[dict]) -> None:
    from matplotlib.figure import Figure

    from ..plot import save_figure
    fig = Figure(figsize=(4 * len(rows), 3.6))
    axes = fig.subplots(1, len(rows), squeeze=False)[0]
    for ax, row in zip(axes, rows):
        ps = [p for p in pairs if p["method"] == row["method"]]
        ax.scatter([p["supernet_acc"] for p in ps], [p["retrained_acc"] for p in ps])
        for p in ps:
            ax.annotate(str(p["seed"]), (p["supernet_acc"], p["retrained_acc"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_title(f"{row['method']}: tau {row['kendall_tau']:.2f}")
        ax.set_xlabel("super-net val acc (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("retrained test acc (%)")
    save_figure(fig, ctx.out / "kendall.png")

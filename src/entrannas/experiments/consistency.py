"""Table 1 (consistency): super-net and child-net accuracy with the Engine-cells at all / half /
last / first cells. The paper: the drop from super-net to child-net is largest with all
Engine-cells (that is DARTS) and small with one, best with the first.

Each row also gives the temperature of the search's final epoch (from its metrics.jsonl): an
Engine-cell that still mixes its ops almost uniformly (high tau) is far from the derived cell
whatever its placement, so a drop only means something next to the tau it was measured at."""
from __future__ import annotations

from .common import Context, markdown_table, run_jobs, search_job, write_summary

# The paper's Table 1 (CIFAR-10): engine cells -> (super-net, child-net) accuracy, %.
PAPER = {"all": (88.29, 63.97), "half": (87.45, 65.51), "last": (84.02, 83.35), "first": (86.68, 86.24)}


def run(ctx: Context) -> dict:
    s = ctx.settings
    jobs = [search_job(ctx, f"engine cells {v}", s["search"], f"engine-{v}",
                       [f"model.engine_cells={v}"], child=True, engine_cells=v)
            for v in s["variants"]]
    rows = run_jobs(ctx, jobs)
    for r in rows:
        r["drop"] = r["supernet_acc"] - r["child_acc"]
        r["tau_final_epoch"] = r["epochs"][-1]["tau"] if r["epochs"] else float("nan")
        paper = PAPER.get(r["engine_cells"])
        if paper:
            r["paper_supernet"], r["paper_child"] = paper
            r["paper_drop"] = paper[0] - paper[1]
    _plot(ctx, rows)
    table = markdown_table([("engine_cells", "Engine-cells"), ("supernet_acc", "super-net acc %"),
                            ("child_acc", "child-net acc %"), ("drop", "drop (pp)"),
                            ("child_acc_inherited_bn", "child-net acc, inherited BN %"),
                            ("tau_final_epoch", "tau (final epoch)", 4),
                            ("paper_supernet", "paper super-net %"), ("paper_child", "paper child-net %"),
                            ("paper_drop", "paper drop (pp, CIFAR-10)")], rows)
    order = sorted(rows, key=lambda r: -r["drop"])
    finding = ("Largest drop: " + ", ".join(f"{r['engine_cells']} {r['drop']:.2f}" for r in order)
               + " (percentage points, largest first).")
    write_summary(ctx, "Table 1: super-net versus child-net accuracy", [table, "", finding],
                  {"rows": rows})
    return {"rows": rows}


def _plot(ctx: Context, rows: list[dict]) -> None:
    from matplotlib.figure import Figure

    from ..plot import save_figure
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["supernet_acc"] for r in rows], 0.4, label="super-net")
    ax.bar([x + 0.2 for x in xs], [r["child_acc"] for r in rows], 0.4, label="child-net")
    ax.set_xticks(list(xs), [r["engine_cells"] for r in rows])
    ax.set_xlabel("Engine-cells")
    ax.set_ylabel("validation accuracy (%)")
    ax.legend(loc="lower right")
    ax.set_title(f"Consistency ({ctx.scale} scale)")
    save_figure(fig, ctx.out / "consistency.png")

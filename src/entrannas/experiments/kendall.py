"""Table 2 (consistency): for each method, N searches with different seeds, each found genotype
retrained from scratch, and the Kendall rank correlation between the super-net's validation
accuracy and the retrained accuracy. The paper: DARTS < PC-DARTS < EnTranNAS < EnTranNAS-DST.

What a tau can support is reported beside it: a seeded bootstrap 95% interval and a p-value
(stats.py), and the retraining noise: one architecture (the first method's seed-0 genotype)
retrained with `noise_seeds` training seeds, against the spread between the architectures of
each method. Two architectures whose retrained accuracies differ by less than that noise
cannot be ranked by one retraining each.
"""
from __future__ import annotations

import math

from .common import Context, markdown_table, run_jobs, search_job, train_job, write_summary
from .stats import kendall_critical_tau, kendall_summary, spread

PAPER = {"darts": -0.47, "pcdarts": -0.07, "entrannas": 0.33, "dst": 0.60}
NAMES = {"darts": "DARTS", "pcdarts": "PC-DARTS", "entrannas": "EnTranNAS", "dst": "EnTranNAS-DST"}
BOOTSTRAP = {"resamples": 10_000, "seed": 0}


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
    # The noise: the first search's genotype again with training seeds 1.. (seed 0 is above).
    ref = found[0]
    noise_jobs = [train_job(ctx, f"retrain {NAMES[ref['method']]} seed {ref['seed']}, training seed {t}",
                            s["train"], f"noise-{ref['method']}-s{ref['seed']}-t{t}", ref["genotype"],
                            [f"run.seed={t}"], method=ref["method"], seed=ref["seed"], train_seed=t)
                  for t in range(1, int(s.get("noise_seeds", 3)))]
    done = run_jobs(ctx, trainings + noise_jobs)
    retrained, noise_runs = done[:len(trainings)], done[len(trainings):]
    pairs = [{"method": NAMES[f["method"]], "seed": f["seed"], "supernet_acc": f["val_acc"],
              "retrained_acc": t["test_acc"], "params_M": t["params_M"],
              "search_s": f["search_wall_time"], "train_s": t["wall_time"]}
             for f, t in zip(found, retrained)]
    rows = [_method_row(m, [p for p in pairs if p["method"] == NAMES[m]]) for m in methods]
    noise = _noise(ref, retrained[0], noise_runs)
    critical = kendall_critical_tau(len(seeds))
    _plot(ctx, pairs, rows)
    table = markdown_table([("method", "method"), ("kendall_tau", "Kendall tau"),
                            ("ci", "bootstrap 95% interval"), ("p_value", "p-value"),
                            ("n", "searches"), ("mean_retrained", "mean retrained acc %"),
                            ("std_retrained", "std between architectures (pp)"),
                            ("range_retrained", "range between architectures (pp)"),
                            ("paper_tau", "paper tau (CIFAR-10)")], rows)
    noise_rows = [{"what": noise["label"], **noise["spread"]}] + [
        {"what": f"{r['method']}: {r['n']} architectures, training seed 0", **r["retrained_spread"]}
        for r in rows]
    noise_table = markdown_table([("what", "retrained"), ("n", "runs"), ("mean", "mean acc %"),
                                  ("std", "std (pp)"), ("range", "range (pp)")], noise_rows)
    detail = markdown_table([("method", "method"), ("seed", "seed"),
                             ("supernet_acc", "super-net val acc %"),
                             ("retrained_acc", "retrained test acc %"), ("params_M", "params M")],
                            pairs)
    need = (f"with {len(seeds)} pairs a tau needs |tau| >= {critical:.2f} to reach p < 0.05"
            if not math.isnan(critical) else f"{len(seeds)} pairs cannot reach p < 0.05 at all")
    note = (f"Kendall tau-b (scipy.stats.kendalltau) over {len(seeds)} seeds per method; p-value: "
            f"scipy's exact test when there are no ties (else the asymptotic one, see p_method in "
            f"results.json); {need}. The interval is the 2.5-97.5% percentile of tau over "
            f"{BOOTSTRAP['resamples']:,} bootstrap resamples of the pairs (numpy seed "
            f"{BOOTSTRAP['seed']}); resamples with all super-net or all retrained values equal have no "
            f"tau and are left out (counted in results.json as `degenerate`). Retraining noise: one "
            f"architecture retrained with {noise['spread']['n']} training seeds, beside the spread of "
            f"each method's retrained accuracies; differences between architectures smaller than "
            f"that noise are not a ranking. Plot: kendall.png.")
    write_summary(ctx, "Table 2: Kendall tau between super-net and retrained accuracy",
                  [table, "", "Retraining noise against the spread between architectures:", "",
                   noise_table, "", "Every search:", "", detail],
                  {"rows": rows, "pairs": pairs, "noise": noise, "noise_rows": noise_rows,
                   "critical_tau_p05": critical, "bootstrap": BOOTSTRAP}, note)
    return {"rows": rows, "pairs": pairs, "noise": noise}


def _method_row(m: str, ps: list[dict]) -> dict:
    k = kendall_summary([p["supernet_acc"] for p in ps], [p["retrained_acc"] for p in ps], **BOOTSTRAP)
    acc = spread(p["retrained_acc"] for p in ps)
    return {"method": NAMES[m], "kendall_tau": k["tau"], "p_value": k["p_value"],
            "p_method": k["p_method"], "ci_low": k["ci_low"], "ci_high": k["ci_high"],
            "ci": "n/a" if math.isnan(k["ci_low"]) else f"[{k['ci_low']:.2f}, {k['ci_high']:.2f}]",
            "degenerate": k["degenerate"],
            "n": len(ps), "paper_tau": PAPER.get(m, math.nan), "mean_retrained": acc["mean"],
            "std_retrained": acc["std"], "range_retrained": acc["range"], "retrained_spread": acc,
            "supernet_spread": spread(p["supernet_acc"] for p in ps)}


def _noise(ref: dict, first: dict, others: list[dict]) -> dict:
    runs = [{"train_seed": 0, "test_acc": first["test_acc"], "run_dir": first["run_dir"]}] + \
        [{"train_seed": r["train_seed"], "test_acc": r["test_acc"], "run_dir": r["run_dir"]} for r in others]
    seeds = ", ".join(str(r["train_seed"]) for r in runs)
    return {"method": NAMES[ref["method"]], "search_seed": ref["seed"], "runs": runs,
            "label": f"one architecture ({NAMES[ref['method']]} seed {ref['seed']}), training seeds {seeds}",
            "spread": spread(r["test_acc"] for r in runs)}


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
        ax.set_title(f"{row['method']}: tau {row['kendall_tau']:.2f} {row['ci']}")
        ax.set_xlabel("super-net val acc (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("retrained test acc (%)")
    save_figure(fig, ctx.out / "kendall.png")

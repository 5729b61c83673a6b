"""Appendix B's video: the derived cells at every epoch of an EnTranNAS-DST search as a GIF,
with the active connections per epoch. `--run RUN_DIR` animates an existing search instead of
running one."""
from __future__ import annotations

from pathlib import Path

from ..animate import animate_search, connection_series, plot_connections
from .common import Context, markdown_table, run_jobs, search_job, write_summary


def run(ctx: Context) -> dict:
    run_dir = ctx.options.get("run")
    if run_dir is None:
        result = run_jobs(ctx, [search_job(ctx, "DST search", ctx.settings["search"], "dst")])[0]
        run_dir = result["run_dir"]
    run_dir = Path(run_dir)
    gif = animate_search(run_dir, ctx.out / "cells.gif", title=run_dir.name)
    series = connection_series(run_dir)
    plot_connections({run_dir.name: series}, ctx.out / "connections.png")
    rows = [{"epoch": e, "normal": n, "reduce": r} for e, n, r in series]
    table = markdown_table([("epoch", "epoch"), ("normal", "normal edges"),
                            ("reduce", "reduction edges")], rows)
    write_summary(ctx, "The derived cells per epoch of a DST search",
                  [f"Search: `{run_dir}`. Animation: `cells.gif`; plot: `connections.png`.", "", table],
                  {"run_dir": str(run_dir), "gif": gif, "rows": rows})
    return {"rows": rows}

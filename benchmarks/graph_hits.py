"""How often a search's CUDA graphs would replay. The CUDA-graph step (graphstep.py) replays a
phase only when its derived cell was seen before in the same epoch, so its benefit rests on
the selection settling. This runs a real search on a CPU through the stand-in backend
(graphstep.Eager: the same cache and keys as on CUDA, each phase computed eagerly), records
every key the cache is asked for, and replays that sequence through the cache under other
policies to see what they would make of it:

    current      what run.cuda_graphs does: graphs keyed by the derived cell and the batch
                 shape, 8 kept, all dropped at each epoch start (lr and tau are constants in
                 the recorded kernels)
    no-flush     the same, kept across epochs (lr and tau as device tensors instead)
    no-flush-64  the same with room for 64 graphs
    shape        hypothetical: graphs keyed only by what the bank calls' shapes depend on
                 (per cell type and ready point, how many rows of each op type run), the
                 selected rows and node sums being data (index and 0/1 tensors copied into
                 the graph before a replay); kept across epochs, 8 of them

The default is the paper's CIFAR-10 search schedule (50 epochs of 48 steps at batch 512, arch
lr 6e-4, tau 5.0 x 0.923 per epoch) as a CPU-scale proxy: Fashion-MNIST at 14x14, 25,000 +
25,000 training images, C=4 with a bottleneck of 1 (4 channels an op, as C=16 with the paper's
4), 8 cells. About 40 minutes for EnTranNAS on 2 cores. DST needs a bottleneck of 2 (without
one its Transit sums start out unnormalised and it barely learns: docs/design.md); about 53
minutes.

    python benchmarks/graph_hits.py --method entrannas --out /tmp/hits-entrannas
    python benchmarks/graph_hits.py --method dst --set model.bottleneck=2 --out /tmp/hits-dst
    python benchmarks/graph_hits.py --keys /tmp/hits-dst/keys.json.gz  # policies only, no search
    python benchmarks/graph_hits.py --method entrannas --epochs 2 --set data.limit=1024 \\
        --set data.eval_limit=256 --out /tmp/hits-quick                # a dry run

Not resumable: an interrupted run starts again (the key sequence would have a gap).
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import Counter
from pathlib import Path

from entrannas.config import load_config
from entrannas.graphstep import Eager, GraphCache
from entrannas.opplan import point_of
from entrannas.loop import make_run_folder
from entrannas.search import _drive, _Search

PRESETS = {"entrannas": "cifar10-entrannas", "dst": "cifar10-dst"}
PROXY = ["data.dataset=fashion-mnist", "data.limit=25000", "data.image_size=14", "data.crop_pad=1",
         "data.eval_limit=2000", "model.C=4", "model.bottleneck=1", "run.plots=false",
         "run.tensorboard=false"]


def record(method: str, epochs: int | None, sets: list[str], out: Path) -> dict:
    over = PROXY + ([f"optim.epochs={epochs}"] if epochs else []) + sets
    cfg = load_config(PRESETS[method], over)
    search = _Search(cfg, graph_backend=Eager())
    cache, events = search.graphs.cache, []
    run, flush = cache.run, cache.flush

    def recording_run(key, fn, *tensors):
        events.append(json.loads(json.dumps(key)))  # tuples as lists
        return run(key, fn, *tensors)

    def recording_flush():
        events.append(None)
        flush()

    cache.run, cache.flush = recording_run, recording_flush
    result = _drive(search, make_run_folder(cfg, out / "run", quiet=True))
    sharing = bool(cfg.model.feature_sharing)
    keys = {"method": method, "overrides": over, "feature_sharing": sharing, "events": events,
            "in_run": [m["cuda_graphs"] for m in result.metrics],
            "selection_changes": [m["selection_changes"] for m in result.metrics],
            "steps_per_epoch": len(search.data.train)}
    with gzip.open(out / "keys.json.gz", "wt") as f:  # 1 MB of repetitive JSON, 50x smaller
        json.dump(keys, f)
    return keys


def shape_key(key: list, sharing: bool) -> str:
    """What the bank calls' shapes depend on: per cell type and ready point, the number of
    rows of each op type (a row is a source with feature sharing, an edge without) and of
    sources squeezed by the bottleneck."""
    if key[0] == "adam" or key[1] is None:
        return json.dumps(key)
    phase, selection, batch_shape = key
    shape = []
    for cell_type, nodes in selection:
        units = {(i, k_op, None if sharing else m) for m, pairs in enumerate(nodes) for i, k_op in pairs}
        per_point = Counter((point_of(i), k_op) for i, k_op, _ in units)
        sources = Counter(point_of(i) for i in {u[0] for u in units})
        shape.append((cell_type, tuple(sorted(per_point.items())), tuple(sorted(sources.items()))))
    return json.dumps([phase, shape, batch_shape])


def simulate(keys: dict, capacity: int, flush: bool, by_shape: bool) -> tuple[list[dict], list[Counter]]:
    """The recorded key sequence through a GraphCache with this policy: its counts per epoch,
    and per epoch what became of the cell phases alone (arch and weight: the costly ones; the
    Adam phase is one key that replays all epoch)."""
    cache, epochs, cells = GraphCache(capacity, Eager()), [], [Counter()]  # fn does nothing
    events = keys["events"]
    for e in events[1:] if events[:1] == [None] else events:  # the first epoch's flush
        if e is None:
            epochs.append(cache.take_counts())
            cells.append(Counter())
            if flush:
                cache.flush()
            continue
        before = dict(cache.counts)
        cache.run(shape_key(e, keys["feature_sharing"]) if by_shape else json.dumps(e), lambda: ())
        if e[0] != "adam":
            cells[-1].update({k: cache.counts[k] - before[k] for k in before})
    epochs.append(cache.take_counts())
    return epochs, cells


def _rate(counts: list[Counter]) -> float:
    total = sum(counts, Counter())
    return total["replayed"] / max(1, sum(total.values()))


POLICIES = {"current": (8, True, False), "no-flush": (8, False, False),
            "no-flush-64": (64, False, False), "shape": (8, False, True)}


def report(keys: dict) -> dict:
    events = [e for e in keys["events"] if e is not None and e[0] != "adam"]
    distinct = {"cells": len({json.dumps(e) for e in events}),
                "shapes": len({shape_key(e, keys["feature_sharing"]) for e in events})}
    rows = {}
    for name, (cap, flush, by_shape) in POLICIES.items():
        per_epoch, cells = simulate(keys, cap, flush, by_shape)
        if name == "current":  # the simulation must be what the search's own cache counted
            ours = [{k: c[k] for k in ("eager", "captured", "replayed")} for c in per_epoch]
            theirs = [{k: c[k] for k in ("eager", "captured", "replayed")} for c in keys["in_run"]]
            if ours != theirs:
                sys.exit(f"the simulated cache disagrees with the search's own counts: {ours} vs {theirs}")
        tot = Counter()
        for c in per_epoch:
            tot.update({k: c[k] for k in ("eager", "captured", "replayed")})
        last = per_epoch[-10:]
        last_hits = sum(c["replayed"] for c in last) / max(1, sum(c["eager"] + c["captured"] + c["replayed"]
                                                                   for c in last))
        rows[name] = {"eager": tot["eager"], "captured": tot["captured"], "replayed": tot["replayed"],
                      "hit_rate": tot["replayed"] / max(1, sum(tot.values())),
                      "hit_rate_last_10_epochs": last_hits,
                      "cell_phases_hit_rate": _rate(cells), "cell_phases_hit_rate_last_10_epochs": _rate(cells[-10:]),
                      "per_epoch_hit_rate": [round(c["hit_rate"], 3) for c in per_epoch]}
    steps = keys["steps_per_epoch"]
    changes = keys["selection_changes"]
    print(f"{keys['method']}: {len(changes)} epochs of {steps} steps; distinct derived cells "
          f"{distinct['cells']}, distinct shapes {distinct['shapes']}; the derived cell changed at "
          f"{sum(changes)} of {steps * len(changes)} steps ({sum(changes[-10:])} of "
          f"{steps * len(changes[-10:])} in the last {len(changes[-10:])} epochs)")
    n = len(changes[-10:])
    print(f"| policy | eager phases | captures | replays | hit rate (last {n} epochs) | arch and weight "
          f"phases' hit rate (last {n} epochs) |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['eager']} | {r['captured']} | {r['replayed']} | {r['hit_rate']:.1%} "
              f"({r['hit_rate_last_10_epochs']:.1%}) | {r['cell_phases_hit_rate']:.1%} "
              f"({r['cell_phases_hit_rate_last_10_epochs']:.1%}) |")
    return {"method": keys["method"], "distinct": distinct, "selection_changes": changes, "policies": rows}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=list(PRESETS), default="entrannas")
    ap.add_argument("--epochs", type=int, help="default: the preset's 50")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more overrides")
    ap.add_argument("--out", type=Path, help="run folder, keys.json.gz and report.json go here")
    ap.add_argument("--keys", type=Path, help="the keys.json.gz of an earlier run: report only")
    args = ap.parse_args(argv)
    if args.keys:
        with gzip.open(args.keys, "rt") as f:
            keys = json.load(f)
    else:
        if args.out is None:
            ap.error("--out is needed to run a search")
        args.out.mkdir(parents=True, exist_ok=True)
        keys = record(args.method, args.epochs, args.set, args.out)
    result = report(keys)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

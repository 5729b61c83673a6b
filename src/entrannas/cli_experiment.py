"""`entrannas experiment` (the paper's Tables 1-5 and the appendix animation) and
`entrannas animate` (a GIF of any search's cells per epoch)."""
from __future__ import annotations

__all__ = ["add_commands"]


def add_commands(sub, add_data_dir_arg) -> None:
    from .experiments import EXPERIMENTS, SCALES
    e = sub.add_parser("experiment", help="reproduce one of the paper's measurements (Tables 1-5, animation)",
                       description="Runs the sub-runs (resuming unfinished ones, reusing finished "
                       "ones) and writes OUT/table.md, OUT/results.json and plots. Experiments: "
                       + "; ".join(f"{k}: {v}" for k, v in EXPERIMENTS.items()))
    e.add_argument("name", choices=list(EXPERIMENTS), metavar="NAME", help=", ".join(EXPERIMENTS))
    e.add_argument("--scale", choices=SCALES, default="cpu",
                   help="cpu: Fashion-MNIST proxy sized for a 2-core machine; paper: the paper's "
                        "settings (CIFAR-10/ImageNet, a GPU)")
    e.add_argument("--out", "-o", help="output folder (default: results/NAME-SCALE)")
    e.add_argument("--jobs", "-j", type=int, default=1,
                   help="independent sub-runs in parallel processes (threads are split between them)")
    e.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override every sub-run's config, e.g. --set optim.epochs=10")
    add_data_dir_arg(e, "the data set of every sub-run (--scale paper: CIFAR-10 or ImageNet)")
    e.add_argument("--seeds", type=int, help="kendall: searches per method (default: cpu 8, paper 6)")
    e.add_argument("--methods", nargs="+", choices=["darts", "pcdarts", "entrannas", "dst"],
                   help="kendall: which methods (default all four)")
    e.add_argument("--budget-gib", type=float,
                   help="efficiency: the memory budget for the largest batch (cpu 4, paper 11 = GTX 1080 Ti)")
    e.add_argument("--device", help="efficiency: cpu, cuda, cuda:N (default: a GPU if present)")
    e.add_argument("--run", help="animation: animate this finished search run folder instead of searching")
    e.add_argument("--quiet", "-q", action="store_true", help="print only the final table's path")
    e.set_defaults(handler=cmd_experiment)

    a = sub.add_parser("animate", help="GIF of a search's derived cells at every epoch")
    a.add_argument("run_dir", metavar="RUN_DIR", help="a search run folder (holds genotypes/epoch_*.json)")
    a.add_argument("-o", "--output", required=True, help="the .gif file to write")
    a.add_argument("--seconds-per-frame", type=float, default=0.8)
    a.set_defaults(handler=cmd_animate)


def cmd_experiment(args) -> int:
    from .cli import config_overrides
    from .experiments import run_experiment
    if args.jobs < 1:
        from .config import ConfigError
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    run_experiment(args.name, args.scale, args.out, jobs=args.jobs, overrides=config_overrides(args),
                   quiet=args.quiet, seeds=args.seeds, methods=args.methods,
                   budget_gib=args.budget_gib, device=args.device, run=args.run)
    return 0


def cmd_animate(args) -> int:
    from .animate import animate_search
    from .genotype import GenotypeError
    if not args.output.lower().endswith(".gif"):
        raise GenotypeError(f"the animation is a GIF: name the output *.gif, not {args.output}")
    print(animate_search(args.run_dir, args.output, seconds_per_frame=args.seconds_per_frame))
    return 0

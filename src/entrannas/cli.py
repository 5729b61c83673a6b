"""`entrannas` command line: parses arguments and calls the Python API, nothing more.

Bad input (missing data, unknown preset or key, malformed genotype, corrupt checkpoint) ends
with one line on stderr and exit code 2; Ctrl-C saves a checkpoint and exits with 130.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _add_config_args(p: argparse.ArgumentParser, kind: str) -> None:
    p.add_argument("--config", "-c", help="a preset name (see `entrannas presets`) or a YAML file")
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.epochs=10 (repeatable)")
    add_data_dir_arg(p)
    p.add_argument("--out", "-o", help="the run folder (default: runs/<preset>-s<seed>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help=f"continue a stopped {kind} run from its checkpoint")
    p.add_argument("--quiet", "-q", action="store_true", help="log to RUN/log.txt only")


def add_data_dir_arg(p: argparse.ArgumentParser, what: str = "the data set") -> None:
    p.add_argument("--data-dir", metavar="DIR",
                   help=f"the folder that holds {what} (short for --set data.data_dir=DIR)")


def config_overrides(args) -> list[str]:
    """--set values, then --data-dir as the override it stands for (quoted: any path is a string)."""
    import json
    extra = [f"data.data_dir={json.dumps(str(args.data_dir))}"] if getattr(args, "data_dir", None) else []
    return [*args.overrides, *extra]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="entrannas", description="Differentiable NAS: EnTranNAS, "
                                 "EnTranNAS-DST and DARTS. Search a cell, look at it, retrain and measure it.")
    ap.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = ap.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="search a cell (bi-level, first order)")
    _add_config_args(s, "search")
    s.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                   help="run one search per seed and keep the best by validation accuracy")
    s.add_argument("--jobs", "-j", type=int, metavar="N",
                   help="with --seeds: run N searches at once, each in its own process (CPU threads "
                        "are split between them; on a GPU they share it)")

    p = sub.add_parser("plot", help="draw the normal and reduction cells of a genotype")
    from .cli_train import add_genotype_arg
    add_genotype_arg(p)
    p.add_argument("-o", "--output", required=True, help="image file (.png, .pdf, .svg)")
    p.add_argument("--title")

    sub.add_parser("presets", help="list the built-in config presets")
    sc = sub.add_parser("show-config", help="print a resolved config as YAML")
    sc.add_argument("config", help="a preset name or a YAML file")
    sc.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    _add_later_commands(sub)
    return ap


def _add_later_commands(sub) -> None:
    """train, profile and child live in cli_train.py (the target-net side), segment in
    cli_segment.py; experiment and animate in cli_experiment.py; eval and export in cli_model.py."""
    from . import cli_experiment, cli_model, cli_segment, cli_train
    cli_train.add_commands(sub, _add_config_args, add_data_dir_arg)
    cli_segment.add_commands(sub, _add_config_args)
    cli_experiment.add_commands(sub, add_data_dir_arg)
    cli_model.add_commands(sub)


def _version() -> str:
    from . import __version__
    return __version__


def _user_errors() -> tuple[type[BaseException], ...]:
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data import DataError
    from .export import ExportError
    from .distributed import PeerError
    from .fsutil import WriteError
    from .genotype import GenotypeError
    from .rundir import RunError
    return (ConfigError, DataError, GenotypeError, CheckpointError, RunError, FloatingPointError,
            WriteError, ExportError, PeerError)


def cmd_search(args) -> int:
    from .config import load_config
    from .search import resume_search, run_search, run_search_seeds
    if args.jobs is not None and not args.seeds:
        raise _usage(f"--jobs {args.jobs} runs several --seeds at once: add --seeds S1 S2 ... "
                     f"(a single search uses every thread on its own)")
    if args.resume:
        if args.config:
            raise _usage("--resume continues a run with its own config: drop --config "
                         "(--set optim.epochs=N continues it for longer)")
        result = resume_search(args.resume, quiet=args.quiet, overrides=config_overrides(args))
    else:
        if not args.config:
            raise _usage("give --config PRESET_OR_YAML (see `entrannas presets`) or --resume RUN_DIR")
        cfg = load_config(args.config, config_overrides(args), kind="search")
        preset = Path(args.config).stem
        if args.seeds:
            result = run_search_seeds(cfg, args.seeds, args.out, quiet=args.quiet, preset=preset,
                                      jobs=1 if args.jobs is None else args.jobs)
        else:
            result = run_search(cfg, args.out, quiet=args.quiet, preset=preset)
    from .distributed import is_main
    if not is_main():  # under torchrun, one summary (from rank 0) is enough
        return 0
    print(f"genotype: {result.run_dir / 'genotype.json'}")
    if result.metrics:
        print(f"super-net validation accuracy: {result.val_acc:.2f}%")
    hint = train_hint(result.run_dir, result.config)
    if hint:
        print(f"next, train the cell: {hint}")
    return 0


# The train preset that goes with a search's data set (the paper's evaluation settings).
EVAL_PRESETS = {"fashion-mnist": "fmnist-eval", "cifar10": "cifar10-eval", "imagenet": "imagenet-eval",
                "cifar100": "cifar10-eval --set data.dataset=cifar100", "folder": "folder-eval"}


def train_hint(run_dir, cfg) -> str | None:
    """The `entrannas train` command that retrains a finished search's cell on its data set
    (None for synthetic data, which has nothing to retrain on)."""
    import shlex
    preset = EVAL_PRESETS.get(cfg.data.dataset) if cfg is not None else None
    if preset is None:
        return None
    cmd = f"entrannas train -g {shlex.quote(str(run_dir))} -c {preset}"
    if cfg.data.data_dir:
        cmd += f" --data-dir {shlex.quote(str(cfg.data.data_dir))}"
    return cmd


def cmd_plot(args) -> int:
    from .genotype import load_genotype
    from .plot import plot_genotype
    if Path(args.output).suffix.lower() not in (".png", ".pdf", ".svg"):
        raise _usage(f"cannot tell the picture format of {args.output}: use a .png, .pdf or .svg name")
    from .cli_train import genotype_arg
    g = load_genotype(genotype_arg(args))
    print(plot_genotype(g, args.output, title=args.title))
    return 0


def cmd_presets(args) -> int:
    from .config import presets
    for kind in ("search", "train", "segment"):
        names = presets(kind)
        if names:
            print(f"{kind}: {', '.join(names)}")
    return 0


def cmd_show_config(args) -> int:
    import yaml

    from .config import load_config, to_dict
    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump({"kind": cfg.kind, **{k: v for k, v in to_dict(cfg).items() if k != "kind"}},
                         sort_keys=False), end="")
    return 0


class _UsageError(Exception):
    pass


def _usage(msg: str) -> _UsageError:
    return _UsageError(msg)


COMMANDS = {"search": cmd_search, "plot": cmd_plot, "presets": cmd_presets,
            "show-config": cmd_show_config}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    handler = COMMANDS.get(args.command) or getattr(args, "handler", None)
    from .loop import Interrupted
    try:
        return handler(args)
    except Interrupted as e:
        print(f"entrannas: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (_UsageError, *_user_errors()) as e:
        print(f"entrannas {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if "torch.distributed" in sys.modules:  # under torchrun: leave the process group before
            from .distributed import shutdown   # the interpreter's teardown, or gloo may abort it
            shutdown()


def run(argv=None) -> int:
    """The `entrannas` command: `main`, then, in a process that was one of a multi-process run,
    an exit that skips the interpreter's teardown (distributed.exit_after_group: the gloo
    group's C++ threads can abort a finished process there)."""
    code = main(argv)
    if "torch.distributed" in sys.modules:
        from .distributed import exit_after_group
        exit_after_group(0 if code is None else code if isinstance(code, int) else 1)  # as sys.exit
    return code


def _one_line(err: BaseException) -> str:
    # The promise is one line; a message quoting a third-party error may hold line breaks.
    return " ".join(part.strip() for part in str(err).splitlines() if part.strip())


if __name__ == "__main__":
    sys.exit(run())

"""`entrannas train`, `profile` and `child`: parse arguments, call the Python API, print.

cli.py registers these through `add_commands`; its `main` turns the library's user errors
(bad genotype, config, checkpoint, data) into one line on stderr and exit code 2.
"""
from __future__ import annotations

import json
from pathlib import Path

from .config import ConfigError

__all__ = ["add_commands", "add_genotype_arg", "genotype_arg"]

DATASETS = ("cifar10", "cifar100", "imagenet", "fashion-mnist")
SEG_DATASETS = ("voc", "fmnist-scenes")


def add_commands(sub, add_config_args, add_data_dir_arg) -> None:
    t = sub.add_parser("train", help="train a genotype from scratch and measure it (paper section 4)")
    t.add_argument("--genotype", "-g", metavar="GENOTYPE", help=GENOTYPE_HELP)
    add_config_args(t, "train")
    t.set_defaults(handler=cmd_train)

    p = sub.add_parser("profile", help="params (M) and multiply-adds (M) of a genotype's target network")
    add_genotype_arg(p)
    p.add_argument("--task", choices=("classification", "segmentation"), default="classification",
                   help="segmentation: the DeepLabV3 network with the genotype's atrous backbone")
    p.add_argument("--dataset", "-d", choices=DATASETS + SEG_DATASETS,
                   help="sets the defaults: cifar10 (the default) C=36 20 cells 32x32; imagenet C=48 14 cells "
                        "224x224; fashion-mnist C=36 20 cells 28x28x1; segmentation: voc (the default) its "
                        "preset voc-deeplabv3, C=48 14 cells 513x513; fmnist-scenes its preset")
    p.add_argument("--C", type=_positive, help="initial channels (default: the dataset's)")
    p.add_argument("--layers", type=_layers, help="number of cells (default: the dataset's)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=cmd_profile)

    c = sub.add_parser("child", help="super-net versus child-net accuracy of a search (Table 1)")
    c.add_argument("run_dir", metavar="RUN_DIR", help="a search run folder (holds checkpoint.pt)")
    c.add_argument("--limit", type=_positive, help="evaluate at most N validation images")
    c.add_argument("--device", help="cpu, cuda, cuda:N (default: the search's run.device)")
    add_data_dir_arg(c, "the search's data set, if it has moved")
    c.add_argument("--macs", action="store_true", help="also count multiply-adds per image of each (slow)")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    c.set_defaults(handler=cmd_child)


GENOTYPE_HELP = ("a genotype JSON file, a search run folder, a builtin name (DARTS_V2, ...) "
                 "or a DARTS-style string")


def add_genotype_arg(p) -> None:
    """The genotype of `plot` and `profile`: positional, or -g/--genotype as `train` and
    `segment` take it, so either spelling works everywhere."""
    p.add_argument("genotype", nargs="?", help=GENOTYPE_HELP)
    p.add_argument("--genotype", "-g", dest="genotype_flag", metavar="GENOTYPE",
                   help="the same, as a flag (as `train` takes it)")


def genotype_arg(args) -> str:
    """The one genotype given (positional or -g); a usage error if none or two."""
    given = [g for g in (args.genotype, args.genotype_flag) if g is not None]
    if len(given) != 1:
        raise ConfigError(f"give one genotype, as GENOTYPE or -g GENOTYPE ({GENOTYPE_HELP})"
                          if not given else
                          f"two genotypes given ({given[0]!r} and -g {given[1]!r}): give one")
    return given[0]


def _positive(text: str) -> int:
    import argparse
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def _layers(text: str) -> int:
    import argparse
    n = _positive(text)
    if n < 3:
        raise argparse.ArgumentTypeError(f"a network needs at least 3 cells (two are reduction cells), got {n}")
    return n


def cmd_train(args) -> int:
    from .cli import config_overrides
    from .config import load_config
    from .train import resume_training, run_training
    if args.resume:
        if args.config or args.genotype:
            raise ConfigError("--resume continues a run with its own config and genotype: "
                              "drop --config/--genotype (--set optim.epochs=N continues it for longer)")
        result = resume_training(args.resume, quiet=args.quiet, overrides=config_overrides(args))
    else:
        if not args.genotype:
            raise ConfigError("give --genotype FILE_OR_NAME_OR_RUN_DIR (e.g. DARTS_V2), or --resume RUN_DIR")
        if not args.config:
            raise ConfigError("give --config PRESET_OR_YAML (train presets: cifar10-eval, imagenet-eval, "
                              "fmnist-eval; see `entrannas presets`) or --resume RUN_DIR")
        cfg = load_config(args.config, config_overrides(args), kind="train")
        result = run_training(cfg, args.genotype, args.out, quiet=args.quiet, preset=Path(args.config).stem)
    from .distributed import is_main
    if not is_main():  # under torchrun, one summary (from rank 0) is enough
        return 0
    s = result.summary
    print(f"test accuracy: {s['test_acc']:.2f}% (best {s['best_test_acc']:.2f}%) on "
          f"{s['test_images']} test images after {s['epochs']} epochs")
    print(f"params: {s['params_M']:.2f}M  multiply-adds: {s['macs_M']:.1f}M")
    print(f"run folder: {result.run_dir}")
    return 0


def cmd_profile(args) -> int:
    from .genotype import load_genotype
    from .measure import profile_genotype
    g = load_genotype(genotype_arg(args))
    if args.task == "segmentation":
        return _profile_segmentation(g, args)
    if args.dataset in SEG_DATASETS:
        raise ConfigError(f"{args.dataset} is a segmentation data set: add --task segmentation")
    r = profile_genotype(g, args.dataset or "cifar10", C=args.C, layers=args.layers)
    if args.json:
        print(json.dumps({**r, "input_shape": list(r["input_shape"])}, indent=1))
        return 0
    rows = [("dataset", r["dataset"]), ("channels C", r["C"]), ("cells", r["layers"]),
            ("input", "x".join(map(str, r["input_shape"]))),
            ("params (M)", f"{r['params_M']:.2f}"), ("multiply-adds (M)", f"{r['macs_M']:.0f}"),
            ("ops normal / reduce", f"{r['ops_normal']} / {r['ops_reduce']}"),
            ("edges normal / reduce", f"{r['edges_normal']} / {r['edges_reduce']}")]
    _print_rows(rows)
    return 0


def _profile_segmentation(g, args) -> int:
    from .segnet import profile_segmentation
    if args.dataset not in (None, *SEG_DATASETS):
        raise ConfigError(f"--task segmentation takes --dataset {' or '.join(SEG_DATASETS)}, not {args.dataset}")
    r = profile_segmentation(g, args.dataset or "voc", C=args.C, layers=args.layers)
    if args.json:
        print(json.dumps({**r, "input_shape": list(r["input_shape"])}, indent=1))
        return 0
    _print_rows([("task", f"segmentation (DeepLabV3, preset {r['preset']})"), ("dataset", r["dataset"]),
                 ("channels C", r["C"]), ("cells", r["layers"]), ("output stride", r["output_stride"]),
                 ("ASPP rates", "/".join(map(str, r["aspp_rates"]))), ("classes", r["num_classes"]),
                 ("input", "x".join(map(str, r["input_shape"]))), ("params (M)", f"{r['params_M']:.2f}"),
                 ("  backbone / head", f"{r['backbone_params_M']:.2f} / {r['head_params_M']:.2f}"),
                 ("multiply-adds (M)", f"{r['macs_M']:.0f}")])
    return 0


def _print_rows(rows) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def cmd_child(args) -> int:
    from .child import child_accuracy
    r = child_accuracy(args.run_dir, limit=args.limit, device=args.device, macs=args.macs,
                       data_dir=args.data_dir)
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    print(f"{r['method']} search, engine cells {r['engine_cells']}, epoch {r['epoch'] + 1}, "
          f"{r['images']} validation images")
    for name, key in (("super-net", "supernet"), ("child-net", "child")):
        cost = f"  ({r[key + '_macs_M']:.1f}M multiply-adds/image)" if args.macs else ""
        print(f"{name} accuracy: {r[key + '_acc']:.2f}%{cost}")
    print(f"written to {Path(args.run_dir) / 'child.json'}")
    return 0

"""`entrannas segment`: train a genotype as a DeepLabV3 backbone and score it by mIoU.

cli.py registers it through `add_commands`; its `main` turns the library's user errors into
one line on stderr and exit code 2.
"""
from __future__ import annotations

from pathlib import Path

from .config import ConfigError

__all__ = ["add_commands"]


def add_commands(sub, add_config_args) -> None:
    s = sub.add_parser("segment", help="train a genotype as a segmentation backbone (DeepLabV3, mIoU; Table 5)")
    s.add_argument("--genotype", "-g", metavar="GENOTYPE",
                   help="a genotype JSON file, a run folder, a builtin name (DARTS_V2, ...) or a DARTS-style "
                        "string (default: the genotype of --backbone)")
    s.add_argument("--backbone", metavar="RUN",
                   help="start the backbone from the weights of this ImageNet `train` run (sets "
                        "model.backbone); without it the backbone trains from scratch")
    add_config_args(s, "segment")
    s.set_defaults(handler=cmd_segment)


def cmd_segment(args) -> int:
    from .config import load_config
    from .cli import config_overrides
    from .segment import resume_segmentation, run_segmentation
    if args.resume:
        if args.config or config_overrides(args) or args.genotype or args.backbone:
            raise ConfigError("--resume continues a run with its own config and genotype: "
                              "drop --config/--set/--data-dir/--genotype/--backbone")
        result = resume_segmentation(args.resume, quiet=args.quiet)
    else:
        if not args.genotype and not args.backbone:
            raise ConfigError("give --genotype FILE_OR_NAME_OR_RUN_DIR (e.g. DARTS_V2) or --backbone RUN, "
                              "or --resume RUN_DIR")
        if not args.config:
            raise ConfigError("give --config PRESET_OR_YAML (segment presets: voc-deeplabv3, fmnist-scenes; "
                              "see `entrannas presets`) or --resume RUN_DIR")
        cfg = load_config(args.config, config_overrides(args), kind="segment")
        if args.backbone:  # not through --set: a path must stay a string whatever it looks like
            cfg.model.backbone = args.backbone
        result = run_segmentation(cfg, args.genotype, args.out, quiet=args.quiet, preset=Path(args.config).stem)
    s = result.summary
    print(f"val mIoU: {s['miou']:.2f}% (best {s['best_miou']:.2f}%), pixel accuracy {s['pixel_acc']:.2f}% on "
          f"{s['val_images']} images after {s['epochs']} epochs")
    print(f"params: {s['params_M']:.2f}M  multiply-adds: {s['macs_M']:.1f}M")
    print(f"run folder: {result.run_dir}")
    return 0

"""One config system for search, training and segmentation: dataclasses, YAML presets, `key=value` overrides.

A config is built from (1) the dataclass defaults, (2) a preset name or YAML file, (3) dotted
overrides such as `optim.lr=0.1`. Every step validates names, types and ranges and raises
`ConfigError` with one line that says what is wrong and what is allowed.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

__all__ = ["ConfigError", "DataConfig", "SearchModelConfig", "SearchOptimConfig", "RunConfig",
           "SearchConfig", "TargetModelConfig", "TrainOptimConfig", "TrainConfig", "SegDataConfig",
           "SegModelConfig", "SegOptimConfig", "SegmentConfig", "presets",
           "load_config", "read_yaml_text", "apply_overrides", "resume_config", "to_dict", "from_dict"]


class ConfigError(ValueError):
    """A bad preset, file, key or value; the message is one line for the user."""


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader reading `1e-3` as a number, as YAML 1.2 and Python do (YAML 1.1
    wants `1.0e-3` and would make `--set optim.arch_lr=1e-3` the string "1e-3")."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def read_yaml_text(text: str):
    """Parse YAML text with `YamlLoader` (every config, experiment and run folder is read so)."""
    return yaml.load(text, Loader=YamlLoader)


@dataclass
class DataConfig:
    dataset: Literal["fashion-mnist", "cifar10", "cifar100", "imagenet", "folder", "synthetic"] = "cifar10"
    data_dir: str | None = None
    download: bool = True
    # Search: fraction of the training set for the weights (the architecture gets as much).
    split: float = 0.5
    # Cap on images per half (CPU-scale runs); null = all.
    limit: int | None = None
    # Images evaluated at each epoch end (search: from the architecture half, as DARTS
    # validates; training: from the test set); null = all.
    eval_limit: int | None = None
    crop_pad: int = 4
    flip: bool = True
    cutout: int = 0
    # Training images' colour jitter, [brightness, contrast, saturation, hue] as torchvision's
    # ColorJitter takes them (DARTS' and PC-DARTS' ImageNet training: [0.4, 0.4, 0.4, 0.2]);
    # null = none.
    color_jitter: list[float] | None = None
    # Side of the square images the network sees: imagenet (null = 224) and folder (null = the
    # images' most common short side); the in-memory ones (null = their own size) are resized
    # once when loaded (area averages when smaller), e.g. 14 for a quarter of the arithmetic.
    image_size: int | None = None
    workers: int = 4  # decoding processes (imagenet, folder)
    # folder (docs/design.md, "Your own data"): channels null = what the images are (1 if all
    # are grayscale); the share of every class held out as the test set when there is no
    # DIR/test/; strict refuses a file that is not an image instead of skipping it; in_memory
    # auto decodes into memory when half the free memory holds it, else streams; cache_dir
    # null = $ENTRANNAS_CACHE or ~/.cache/entrannas/folders.
    channels: int | None = None
    test_fraction: float = 0.2
    strict: bool = False
    in_memory: bool | Literal["auto"] = "auto"
    cache_dir: str | None = None
    synthetic_shape: list[int] = field(default_factory=lambda: [3, 32, 32])
    synthetic_size: int = 1024


@dataclass
class SearchModelConfig:
    method: Literal["darts", "entrannas", "dst", "pcdarts"] = "entrannas"
    C: int = 16
    layers: int = 8
    space: Literal["standard", "extended"] = "standard"
    stem: Literal["cifar", "imagenet"] = "cifar"
    # null = the method's default (see SuperNet); engine_cells: all/first/last/half or indices.
    engine_cells: str | list[int] | None = None
    feature_sharing: bool | None = None
    bottleneck: int | None = None
    tau0: float | None = None
    tau_decay: float | None = None
    # Instead of tau_decay: the temperature of the last epoch; the decay follows from
    # optim.epochs (tau0 * decay ** (epochs - 1) = tau_final), so a shorter run anneals as far.
    tau_final: float | None = None
    derivation: Literal["top2", "dst"] | None = None
    dst_lambda: float = 0.1
    # PC-DARTS' switches (null = the method's default): 1/k of the channels through the mixed
    # op (1 = all), and per-edge betas normalised over each node's inputs.
    partial_channels: int | None = None
    edge_normalization: bool | None = None


@dataclass
class SearchOptimConfig:
    epochs: int = 50
    batch_size: int = 512
    lr: float = 0.2
    lr_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 6e-4
    arch_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    arch_weight_decay: float = 1e-3
    # Epochs that train only the weights before architecture steps start; or, instead, the
    # fraction of optim.epochs that does (PC-DARTS' 15 of 50 is 0.3), rounded half up and
    # leaving at least one architecture epoch.
    warmup_epochs: int = 0
    warmup_fraction: float | None = None
    # Not the same thing: epochs over which the weights' learning rate ramps up, (e + 1) / n of
    # the cosine's rate in epoch e < n, as PC-DARTS' ImageNet search does at batch 1024 (our
    # presets leave it at 0: the paper does not say it ramps).
    lr_warmup_epochs: int = 0
    # Training batches run forward before each validation to measure the BatchNorm running
    # statistics on the current architecture (bnstats.py; 0: validate with the statistics
    # training left, which a Transit-cell updates only on the steps that select an op). Every
    # search preset sets 8; the default 0 is what a run folder from before this key did.
    bn_recalibration: int = 0


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    out: str = "runs"  # parent folder of run folders
    name: str | None = None  # run folder name; null = <preset>-<seed>-<time>
    log_every: int = 20  # steps between log lines
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0: only at epoch ends)
    tensorboard: bool = True
    plots: bool = True
    # GPU fast path (accel.py): auto = on for CUDA, off on a CPU (CPU results stay float32).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool = False  # torch.compile the target network (training only)
    # Search only, CUDA only: replay each derived cell's step as CUDA graphs (graphstep.py),
    # keeping at most graph_cache of them. Off until measured on a GPU (docs/design.md).
    cuda_graphs: bool = False
    graph_cache: int = 8
    # The super-net's BatchNorms of maps under 16 channels (narrowbn.py): native F.batch_norm,
    # or var_mean (reductions over N*H*W). var_mean: search only, GPU only (accel.check).
    narrow_bn: Literal["native", "var_mean"] = "native"


@dataclass
class SearchConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: SearchModelConfig = field(default_factory=SearchModelConfig)
    optim: SearchOptimConfig = field(default_factory=SearchOptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    kind: Literal["search"] = "search"


@dataclass
class TargetModelConfig:
    C: int = 36
    layers: int = 20
    auxiliary: bool = True
    aux_weight: float = 0.4
    drop_path: float = 0.2


@dataclass
class TrainOptimConfig:
    epochs: int = 600
    batch_size: int = 96
    lr: float = 0.025
    lr_min: float = 0.0
    schedule: Literal["cosine", "linear"] = "cosine"
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    label_smoothing: float = 0.0
    # Epochs over which the learning rate ramps up: epoch e < n trains at (e + 1) / n of the
    # schedule's rate. PC-DARTS' ImageNet training, which the paper follows, ramps for 5
    # epochs at batch 1024 and lr 0.5 (imagenet-eval).
    lr_warmup_epochs: int = 0


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=lambda: DataConfig(cutout=16))
    model: TargetModelConfig = field(default_factory=TargetModelConfig)
    optim: TrainOptimConfig = field(default_factory=TrainOptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    kind: Literal["train"] = "train"


@dataclass
class SegDataConfig:
    # voc: Pascal VOC 2012 in data_dir; fmnist-scenes: scenes of Fashion-MNIST items
    # (data/scenes.py), data_dir holding Fashion-MNIST (default: the system copy).
    dataset: Literal["voc", "fmnist-scenes"] = "voc"
    data_dir: str | None = None
    download: bool = True  # fmnist-scenes: fetch Fashion-MNIST when it is missing
    # voc: the lists ImageSets/Segmentation/<name>.txt (train_aug: the SBD-augmented list)
    train_split: str = "train"
    val_split: str = "val"
    crop_size: int = 513  # training crop; evaluation pads whole images to it (ignored)
    scale: list[float] = field(default_factory=lambda: [0.5, 2.0])  # random scale range
    flip: bool = True
    limit: int | None = None  # training images used; null = all
    eval_limit: int | None = None  # validation images scored; null = all
    workers: int = 4  # voc decoding processes
    scenes_train: int = 10000
    scenes_val: int = 2000
    scene_seed: int = 0  # the scenes depend on it alone (not on run.seed)
    scene_canvas: int = 64
    scene_items: list[int] = field(default_factory=lambda: [2, 4])  # items per scene, min and max
    scene_threshold: float = 0.2  # ink (fraction of 255) above which a pixel is the item's


@dataclass
class SegModelConfig:
    C: int = 48  # the backbone: the ImageNet-setting target network of the genotype
    layers: int = 14
    output_stride: int = 16
    aspp_rates: list[int] = field(default_factory=lambda: [6, 12, 18])
    head_channels: int = 256
    dropout: float = 0.1  # after the ASPP projection
    # an ImageNet `train` run whose weights start the backbone; null = from scratch
    backbone: str | None = None


@dataclass
class SegOptimConfig:
    epochs: int = 46
    batch_size: int = 16
    lr: float = 0.007
    power: float = 0.9  # poly: lr * (1 - step / steps) ** power, set every step
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 5.0


@dataclass
class SegmentConfig:
    data: SegDataConfig = field(default_factory=SegDataConfig)
    model: SegModelConfig = field(default_factory=SegModelConfig)
    optim: SegOptimConfig = field(default_factory=SegOptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    kind: Literal["segment"] = "segment"


KINDS = {"search": SearchConfig, "train": TrainConfig, "segment": SegmentConfig}

# Range checks that types cannot express: key -> (predicate, what is allowed).
_POSITIVE = (lambda v: v > 0, "a positive number")
_NONNEG = (lambda v: v >= 0, "zero or more")
_CHECKS: dict[str, tuple] = {
    "data.split": (lambda v: 0 < v < 1, "a fraction strictly between 0 and 1"),
    "data.limit": (lambda v: v is None or v > 0, "null or a positive integer"),
    "data.eval_limit": (lambda v: v is None or v > 0, "null or a positive integer"),
    "data.crop_pad": _NONNEG, "data.cutout": _NONNEG, "data.workers": _NONNEG,
    "data.color_jitter": (lambda v: v is None or (len(v) == 4 and all(a >= 0 for a in v) and v[3] <= 0.5),
                          "null or [brightness, contrast, saturation, hue]: numbers >= 0, hue at most 0.5"),
    "data.image_size": (lambda v: v is None or v > 0, "null or a positive integer"),
    "data.synthetic_size": _POSITIVE,
    "data.channels": (lambda v: v is None or v in (1, 3), "null, 1 (grayscale) or 3 (RGB)"),
    "data.test_fraction": (lambda v: 0 < v < 1, "a fraction strictly between 0 and 1"),
    "model.C": _POSITIVE, "model.layers": (lambda v: v >= 3, "at least 3"),
    "model.bottleneck": (lambda v: v is None or v >= 1, "null or at least 1"),
    "model.tau0": (lambda v: v is None or v > 0, "null or a positive number"),
    "model.tau_decay": (lambda v: v is None or v > 0, "null or a positive number"),
    "model.tau_final": (lambda v: v is None or v > 0, "null or a positive number"),
    "model.partial_channels": (lambda v: v is None or v >= 1, "null or at least 1"),
    "optim.warmup_fraction": (lambda v: v is None or 0 <= v < 1, "null or a fraction in [0, 1)"),
    "optim.bn_recalibration": (lambda v: v >= 0, "a number of batches, 0 or more"),
    "model.dst_lambda": _NONNEG, "model.aux_weight": _NONNEG,
    "model.drop_path": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.epochs": _POSITIVE, "optim.batch_size": _POSITIVE, "optim.lr": _POSITIVE,
    "optim.lr_min": _NONNEG, "optim.momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.weight_decay": _NONNEG, "optim.grad_clip": _POSITIVE, "optim.arch_lr": _POSITIVE,
    "optim.arch_weight_decay": _NONNEG, "optim.warmup_epochs": _NONNEG,
    "optim.lr_warmup_epochs": _NONNEG,
    "optim.label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.arch_betas": (lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    "run.log_every": _POSITIVE, "run.checkpoint_every": _NONNEG, "run.graph_cache": _POSITIVE,
    "data.crop_size": _POSITIVE, "data.scenes_train": _POSITIVE, "data.scenes_val": _POSITIVE,
    "data.scale": (lambda v: len(v) == 2 and 0 < v[0] <= v[1], "two numbers 0 < min <= max"),
    "data.scene_canvas": (lambda v: v >= 28, "at least 28 (one Fashion-MNIST item)"),
    "data.scene_items": (lambda v: len(v) == 2 and 1 <= v[0] <= v[1], "two integers 1 <= min <= max"),
    "data.scene_threshold": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "model.output_stride": (lambda v: v in (8, 16, 32), "8, 16 or 32"),
    "model.aspp_rates": (lambda v: all(r > 0 for r in v), "a list of positive integers"),
    "model.head_channels": _POSITIVE, "model.dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.power": _POSITIVE,
}


def _check_combinations(cfg) -> None:
    """Keys that exclude each other (each alone is checked by _CHECKS)."""
    model, optim = getattr(cfg, "model", None), cfg.optim
    if getattr(model, "tau_final", None) is not None and model.tau_decay is not None:
        raise ConfigError(f"model.tau_final = {model.tau_final} and model.tau_decay = "
                          f"{model.tau_decay} both set the annealing: set model.tau_decay=null "
                          f"to use tau_final, or drop tau_final")
    if getattr(optim, "warmup_fraction", None) is not None and optim.warmup_epochs:
        raise ConfigError(f"optim.warmup_fraction = {optim.warmup_fraction} and "
                          f"optim.warmup_epochs = {optim.warmup_epochs} both set the warm-up: "
                          f"set optim.warmup_epochs=0 to use the fraction, or drop it")


def presets(kind: str | None = None) -> list[str]:
    """Names of the built-in presets (optionally only those of one kind)."""
    names = sorted(p.name[:-5] for p in resources.files("entrannas.configs").iterdir()
                   if p.name.endswith(".yaml"))
    if kind is None:
        return names
    return [n for n in names if _read_yaml(_preset_path(n), n).get("kind", "search") == kind]


def _preset_path(name: str):
    return resources.files("entrannas.configs").joinpath(f"{name}.yaml")


def _read_yaml(path, label: str) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8") if not hasattr(path, "read_text") else path.read_text(encoding="utf-8")
        data = read_yaml_text(text)
    except OSError as e:
        raise ConfigError(f"config {label}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {label}: not a UTF-8 text file") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(f"config {label}: invalid YAML (nested too deeply)") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        why = " ".join(str(getattr(e, "problem", None) or e).split())  # PyYAML's may span lines
        raise ConfigError(f"config {label}: invalid YAML{at} ({why})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {label}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def load_config(spec: str | Path | None = None, overrides: list[str] | tuple = (), kind: str | None = None):
    """Build a config from a preset name or YAML path plus `section.key=value` overrides."""
    raw: dict = {}
    if spec is not None:
        spec_s = str(spec)
        if spec_s in presets():
            raw = _read_yaml(_preset_path(spec_s), f"preset {spec_s}")
        elif Path(spec_s).is_file():
            raw = _read_yaml(Path(spec_s), spec_s)
        else:
            raise ConfigError(f"config {spec_s!r} is neither a preset nor a file; presets: "
                              f"{', '.join(presets(kind))}")
    file_kind = raw.pop("kind", None)
    if file_kind is not None and not (isinstance(file_kind, str) and file_kind in KINDS):
        raise ConfigError(f"config {spec}: unknown kind {file_kind!r}; choose one of {sorted(KINDS)}")
    kind = kind or file_kind or "search"
    if file_kind is not None and file_kind != kind:
        raise ConfigError(f"config {spec} is a {file_kind} config, not a {kind} config; "
                          f"{kind} presets: {', '.join(presets(kind))}")
    if kind not in KINDS:
        raise ConfigError(f"unknown config kind {kind!r}; choose one of {sorted(KINDS)}")
    cfg = KINDS[kind]()
    try:
        _merge(cfg, raw, "")
    except ConfigError as e:  # name the file: the message is all the user sees
        raise ConfigError(f"config {spec}: {e}") from None
    apply_overrides(cfg, overrides)
    _check_combinations(cfg)
    return cfg


def apply_overrides(cfg, overrides) -> None:
    """Apply `section.key=value` overrides (values are YAML) to `cfg` in place, validated."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. optim.lr=0.1)")
        key, value = item.split("=", 1)
        try:
            parsed = read_yaml_text(value) if value.strip() else None
        except yaml.YAMLError:
            parsed = value
        path = key.strip().split(".")
        nested: Any = parsed
        for part in reversed(path):
            nested = {part: nested}
        _merge(cfg, nested, "")


# What `--resume RUN --set ...` may change: the length of the run (docs/design.md, "Continuing
# a finished run"). Anything else would make the checkpoint's run another one.
RESUMABLE_KEYS = ("optim.epochs",)


def resume_config(cfg, overrides, epochs_done: int):
    """The config a resumed run continues with: `cfg` (the checkpoint's) with `overrides`,
    of which only optim.epochs may change anything, and never below the epochs done."""
    import copy
    new = copy.deepcopy(cfg)
    apply_overrides(new, overrides)
    flat = lambda c: {f"{sec}.{k}": v for sec, keys in to_dict(c).items() if isinstance(keys, dict)
                      for k, v in keys.items()}
    before, after = flat(cfg), flat(new)
    changed = [k for k in after if after[k] != before.get(k) and k not in RESUMABLE_KEYS]
    if changed:
        raise ConfigError(f"--resume can only extend a run (--set optim.epochs=N); {changed[0]} would "
                          f"change what it computes: start a new run with --config RUN/config.yaml "
                          f"--set {changed[0]}=...")
    if new.optim.epochs < epochs_done:
        raise ConfigError(f"optim.epochs={new.optim.epochs} is fewer than the {epochs_done} epochs this run "
                          f"has already done: a resumed run can only be made longer")
    _check_combinations(new)
    return new


def _merge(obj, raw: dict, prefix: str) -> None:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(obj) if f.name != "kind"}
    hints = typing.get_type_hints(type(obj))
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"unknown config key {name!r}; valid keys here: "
                              f"{', '.join(prefix + k for k in fields)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, f"{name}.")
            continue
        value = _coerce(value, hints[key], name)
        check = _CHECKS.get(name)
        if check and not check[0](value):
            raise ConfigError(f"{name} = {value!r} is out of range: it must be {check[1]}")
        setattr(obj, key, value)


def _coerce(value, hint, name: str):
    """Check `value` against a type hint (int, float, bool, str, Literal, list, Optional)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for a in args:
            if a is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, a, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{name} = {value!r} has the wrong type: expected {_describe(hint)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name} = {value!r} is not allowed; choose one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{name} = {value!r} has the wrong type: expected a list")
        return [_coerce(v, args[0], name) for v in value]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} = {value!r} has the wrong type: expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} = {value!r} has the wrong type: expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} = {value!r} has the wrong type: expected a number")
        # YAML reads .inf and .nan as floats; no setting means either, and an infinite
        # learning rate would only fail once the run has started.
        if not math.isfinite(float(value)):
            raise ConfigError(f"{name} = {value!r} is not allowed: expected a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} = {value!r} has the wrong type: expected a string")
        return value
    raise ConfigError(f"{name}: unsupported type {hint}")


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is list:
        return f"a list of {_describe(args[0])}"
    return {type(None): "null", bool: "true/false", int: "an integer", float: "a number",
            str: "a string"}.get(hint, str(hint))


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(raw: dict, kind: str):
    """A config of `kind` from a dict such as a checkpoint's copy of `to_dict(cfg)`, validated
    like a YAML file."""
    cfg = KINDS[kind]()
    _merge(cfg, {k: v for k, v in raw.items() if k != "kind"}, "")
    _check_combinations(cfg)
    return cfg

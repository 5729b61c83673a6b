"""A trained target network you can take away: load it, export it, evaluate it.

    model = entrannas.load_model("runs/my-train")     # eval mode, trained weights
    logits = model(images)                            # float [N, C, H, W] in [0, 1] -> [N, classes]
    export_model("runs/my-train", "model.onnx")       # .pt TorchScript, .pt2 torch.export, .onnx, .safetensors
    evaluate_run("runs/my-train")                     # top-1/top-5, per class, cost, latency

The model carries its input normalisation (the training images' mean and std), so every
exported file takes plain pixels in [0, 1] and returns logits; see docs/design.md, "Taking
a model away".
"""
from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import platform
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import CheckpointError, load_checkpoint, mismatch
from .config import ConfigError, from_dict, to_dict
from .fsutil import atomic_path, atomic_write_text
from .genotype import Genotype, GenotypeError

__all__ = ["TrainedModel", "ExportError", "load_model", "export_model", "evaluate_run", "throughput",
           "MODEL_FORMAT", "FORMATS"]

MODEL_FORMAT = "entrannas-model/1"
FORMATS = {".pt": "torchscript", ".pth": "torchscript", ".pt2": "torch.export", ".onnx": "onnx",
           ".safetensors": "safetensors"}


class ExportError(RuntimeError):
    """An export that cannot be made (unknown format, a missing optional package)."""


class TrainedModel(nn.Module):
    """The target network with its input normalisation: images in [0, 1] in, logits out.

    ``network`` is the target network itself (its forward takes normalised images and returns
    ``(logits, None)`` in eval mode); ``classes``, ``genotype``, ``config`` and ``data_info``
    say what it was trained on."""

    def __init__(self, network: nn.Module, data_info: dict, genotype: Genotype, config, epochs_done: int):
        super().__init__()
        self.network = network
        c = data_info["channels"]
        self.register_buffer("mean", torch.tensor(data_info["mean"], dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(data_info["std"], dtype=torch.float32).view(1, c, 1, 1))
        self.data_info, self.genotype, self.config = dict(data_info), genotype, config
        self.classes = tuple(data_info["classes"] or (str(i) for i in range(data_info["num_classes"])))
        self.epochs_done = int(epochs_done)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.data_info["channels"], *self.data_info["image_size"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network((images - self.mean) / self.std)[0]


# ----------------------------------------------------------------------------- loading

def _build(cfg, genotype: Genotype, data_info: dict, weights: dict, source: Path, epochs_done: int) -> TrainedModel:
    from .evalnet import build_target_net
    m = cfg.model
    variant = "imagenet" if cfg.data.dataset == "imagenet" else "cifar10"  # as train.build_net
    net = build_target_net(genotype, variant, C=m.C, layers=m.layers, auxiliary=False,
                           num_classes=data_info["num_classes"], in_channels=data_info["channels"])
    try:  # the auxiliary head only trains: the model leaves it out
        net.load_state_dict({k: v for k, v in weights.items() if not k.startswith("auxiliary_head.")})
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise mismatch(source, e) from None
    return TrainedModel(net, data_info, genotype, cfg, epochs_done).eval()


def _data_info_of(cfg) -> dict:
    # Checkpoints written before they carried it: the data set says (it must be there).
    from .loop import load_datasets
    from .train import info_dict
    return info_dict(load_datasets(cfg)[0].info)


def load_model(source: str | os.PathLike, device: str | torch.device = "cpu") -> TrainedModel:
    """The trained target network of a ``train`` run folder (its latest checkpoint), or of a
    ``.safetensors`` file written by :func:`export_model`, in eval mode on ``device``."""
    path = Path(source)
    if path.suffix == ".safetensors" and path.is_file():
        return _load_safetensors(path).to(device)
    ckpt = path / "checkpoint.pt"
    if not path.is_dir() or not ckpt.is_file():
        raise CheckpointError(f"{path} is neither a train run folder (with checkpoint.pt) nor a "
                              f".safetensors file written by `entrannas export`")
    state = load_checkpoint(ckpt)
    if state.get("kind") == "search":
        raise CheckpointError(f"{path} is a search run, which holds a super-net, not a trained model: "
                              f"train its cell first (`entrannas train --genotype {path} --config ...`) "
                              f"and load that run")
    if state.get("kind") != "train" or not isinstance(state.get("net"), dict):
        raise CheckpointError(f"checkpoint {ckpt} is not a training checkpoint; restore it from a "
                              f"backup or train again")
    try:
        cfg = from_dict(state["config"], "train")
        genotype = Genotype.from_dict(state["genotype"])
    except (ConfigError, GenotypeError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {ckpt} is corrupt: its config or genotype is invalid "
                              f"({e}); restore it from a backup or train again") from None
    info = state.get("data_info") or _data_info_of(cfg)
    return _build(cfg, genotype, info, state["net"], ckpt, state.get("epoch", 0)).to(device)


def _load_safetensors(path: Path) -> TrainedModel:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); export it again") from None
    if meta.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{path} is not an entrannas model (its metadata lacks format "
                              f"{MODEL_FORMAT}); export one with `entrannas export RUN -o model.safetensors`")
    try:
        cfg = from_dict(json.loads(meta["config"]), "train")
        genotype = Genotype.from_json(meta["genotype"])
        info = json.loads(meta["data_info"])
        epochs = int(meta.get("epochs_done", 0))
    except (ConfigError, GenotypeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt: its metadata is invalid ({e}); export it again") from None
    weights = {k[len("network."):]: v for k, v in tensors.items() if k.startswith("network.")}
    return _build(cfg, genotype, info, weights, path, epochs)


# ----------------------------------------------------------------------------- export

def _example(model: TrainedModel, n: int, seed: int) -> torch.Tensor:
    return torch.rand((n, *model.input_shape), generator=torch.Generator().manual_seed(seed))


def _write(model: TrainedModel, fmt: str, tmp: str, x: torch.Tensor) -> None:
    batch = torch.export.Dim("batch", min=1)
    if fmt == "torchscript":
        # torch marks tracing deprecated in favour of torch.export, yet TorchScript is what
        # libtorch (C++) and older torch versions load; the tracer's shape warnings are about
        # the spatial size, which the model fixes anyway.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.trace(model, x, check_trace=False), tmp)
    elif fmt == "torch.export":
        torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: batch},)), tmp)
    elif fmt == "onnx":
        if not all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript")):  # torch's exporter needs both
            raise ExportError("ONNX export needs the onnx extra: pip install 'entrannas[onnx]'")
        quiet = logging.getLogger("torch.onnx")  # it logs a line per torchvision op it lacks
        level = quiet.level
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quiet.setLevel(logging.ERROR)
            try:
                program = torch.onnx.export(model, (x,), None, dynamo=True, verbose=False,
                                            input_names=["images"], output_names=["logits"],
                                            dynamic_shapes=({0: batch},))
            finally:
                quiet.setLevel(level)
        program.save(tmp, external_data=False)  # one file, weights inside
    else:
        from safetensors.torch import save_file
        tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, tmp, metadata={
            "format": MODEL_FORMAT, "config": json.dumps(to_dict(model.config)),
            "genotype": model.genotype.to_json(), "data_info": json.dumps(model.data_info),
            "epochs_done": str(model.epochs_done)})


def _reload(fmt: str, path: Path):
    """The exported file as a callable, loaded the way a user without entrannas would."""
    if fmt == "torchscript":
        with warnings.catch_warnings():  # deprecated in torch, still what libtorch loads
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path))
    if fmt == "torch.export":
        return torch.export.load(str(path)).module()
    if fmt == "safetensors":
        return load_model(path)
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


def export_model(source, output, check: bool = True) -> dict:
    """Write the trained model of ``source`` (a train run folder or .safetensors file) to
    ``output``; the format follows the suffix (:data:`FORMATS`). With ``check``, the file is
    loaded back and run on a batch of another size than the one traced: ``max_abs_diff`` is
    the largest difference from the model's logits (None where onnxruntime is missing)."""
    output = Path(output)
    fmt = FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise ExportError(f"cannot tell the export format of {output}: use a .pt (TorchScript), .pt2 "
                          f"(torch.export), .onnx or .safetensors name")
    model = load_model(source)
    with torch.no_grad(), atomic_path(output, suffix=output.suffix) as tmp:
        _write(model, fmt, tmp, _example(model, 2, 0))
    result = {"path": str(output), "format": fmt, "input": ["N", *model.input_shape],
              "classes": list(model.classes), "max_abs_diff": None}
    if check:
        loaded = _reload(fmt, output)
        if loaded is not None:
            x = _example(model, 3, 1)
            with torch.no_grad():
                result["max_abs_diff"] = float((loaded(x) - model(x)).abs().max())
    return result


# ----------------------------------------------------------------------------- evaluation

def throughput(model: nn.Module, shape, batch: int, device: torch.device, min_time: float = 1.0,
               max_iters: int = 200) -> dict:
    """Images per second of ``model`` at ``batch`` on ``device`` (after warm-up), and ms per batch."""
    x = torch.rand((batch, *shape), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        sync()
        iters, t0 = 0, time.perf_counter()
        while iters < max_iters and (iters < 3 or time.perf_counter() - t0 < min_time):
            model(x)
            iters += 1
        sync()
        dt = time.perf_counter() - t0
    return {"batch": batch, "images_per_s": batch * iters / dt, "ms_per_batch": 1000 * dt / iters,
            "iterations": iters}


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), name)
    except OSError:
        pass
    return f"{name or 'CPU'}, {torch.get_num_threads()} threads"


def _test_loader(model: TrainedModel, data, device, batch_size: int):
    """The run's own test set (data=None) or another one; batches normalised with the
    model's training statistics, as the trained network saw them."""
    from .data import BatchLoader, TensorImageDataset, load_folder_eval
    from .loop import FolderLoader, load_datasets
    cfg, info = copy.deepcopy(model.config), model.data_info
    stats = dict(mean=info["mean"], std=info["std"])
    if data is not None and cfg.data.dataset == "folder":
        d = cfg.data
        images, labels, notes = load_folder_eval(data, list(model.classes), info["image_size"][0],
                                                 info["channels"], d.strict, d.cache_dir, d.workers)
        return BatchLoader(images, labels, None, batch_size, False, device=device, **stats), notes, str(data)
    if data is not None:
        cfg.data.data_dir = str(data)
    cfg.data.limit = cfg.data.eval_limit = None
    train, test = load_datasets(cfg, device)
    where = f"the test set of {cfg.data.dataset}" + (f" in {cfg.data.data_dir}" if cfg.data.data_dir else "")
    notes = getattr(train, "notes", [])
    if isinstance(test, TensorImageDataset):
        return BatchLoader(test.images, test.labels, None, batch_size, False, device=device, **stats), notes, where
    return (FolderLoader(test, range(len(test)), batch_size, False, device, 0, cfg.data.workers, False, **stats),
            notes, where)


def evaluate_run(run_dir, data=None, device: str | None = None, batch_size: int = 256,
                 latency: bool = True, write: bool = True) -> dict:
    """Test accuracy (top-1, top-5, per class), params, multiply-adds and measured throughput
    of a train run's model; written to RUN/eval.json unless ``write=False``. ``data``: another
    data set (a folder of class folders, or the data_dir of the run's dataset) instead of the
    run's own test set. Reads the run folder, writes nothing else."""
    from .loop import resolve_device
    from .measure import count_macs, count_params
    run_dir = Path(run_dir)
    model = load_model(run_dir)
    # Beside a .safetensors export, in a run folder otherwise.
    record = run_dir / "eval.json" if run_dir.is_dir() else run_dir.with_name(run_dir.stem + ".eval.json")
    dev = resolve_device(device or model.config.run.device)
    model = model.to(dev)
    loader, notes, where = _test_loader(model, data, dev, batch_size)
    k = min(5, len(model.classes))
    n_cls = len(model.classes)
    hits1 = torch.zeros(n_cls, dtype=torch.long)
    hits5 = torch.zeros((), dtype=torch.long)
    seen = torch.zeros(n_cls, dtype=torch.long)
    with torch.inference_mode():
        for x, y in loader:
            top = model.network(x)[0].topk(k, dim=1).indices
            y = y.to(top.device)
            hits1 += torch.bincount(y[top[:, 0] == y], minlength=n_cls).cpu()
            hits5 += (top == y[:, None]).any(1).sum().cpu()
            seen += torch.bincount(y, minlength=n_cls).cpu()
    total = int(seen.sum())
    result = {"run_dir": str(run_dir), "data": where, "images": total, "epochs_trained": model.epochs_done,
              "top1": 100.0 * int(hits1.sum()) / max(total, 1), "top5": 100.0 * int(hits5) / max(total, 1),
              "top5_k": k,  # top-5, or top-k with k = the number of classes when there are fewer
              "per_class": {c: {"images": int(s), "acc": (100.0 * int(h) / int(s)) if s else None}
                            for c, h, s in zip(model.classes, hits1.tolist(), seen.tolist())},
              "params_M": count_params(model.network) / 1e6,
              "macs_M": count_macs(model.network, model.input_shape) / 1e6,
              "input": list(model.input_shape), "device": str(dev), "machine": _machine(dev),
              "torch": torch.__version__, "notes": notes}
    if latency:
        result["latency"] = [throughput(model, model.input_shape, b, dev) for b in (1, 64)]
    if write:
        atomic_write_text(record, json.dumps(result, indent=1) + "\n")
        result["written_to"] = str(record)
    return result

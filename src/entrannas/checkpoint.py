"""Atomic writes and safe checkpoint loading.

Every file a run writes goes to a temporary file in the same folder first and is renamed over
the target, so a crash leaves either the old file or the new one, never half of one.
Checkpoints are loaded with `weights_only=True`: a file carrying pickled code is refused
instead of run. Before that, the archive's CRC-32s are checked (torch.load does not check
them, so a flipped bit in a tensor would load as a silently different weight), and after it
the fields a resume needs are checked, so a damaged file is refused with one line naming it
before anything in the run folder is touched.
"""
from __future__ import annotations

import hashlib
import io
import numbers
import os
import re
import zipfile
from pathlib import Path

import torch

from .fsutil import atomic_write_bytes, atomic_write_text

__all__ = ["CheckpointError", "load_run_checkpoint", "atomic_write_bytes", "atomic_write_text", "save_checkpoint",
           "load_checkpoint", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "entrannas-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message is one line for the user."""


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Serialise to memory first (so a full disk fails before the old file is touched), then
    write atomically."""
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buf)
    data = buf.getvalue()
    # A SHA-256 of the archive after it (zip readers ignore trailing bytes): the zip CRCs do
    # not cover the central directory, where a flipped bit can make torch read other bytes.
    atomic_write_bytes(path, data + _DIGEST_TAG + hashlib.sha256(data).hexdigest().encode())


_DIGEST_TAG = b"\nentrannas-sha256:"
_DIGEST_LEN = len(_DIGEST_TAG) + 64


def _verified_body(path: Path) -> bytes | None:
    """The archive of a checkpoint that ends with its digest, checked; None for one without
    (written before digests existed: the CRC check below is all there is for those)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"checkpoint {path}: cannot read it ({e.strerror or e})") from None
    if len(raw) <= _DIGEST_LEN or raw[-_DIGEST_LEN:-64] != _DIGEST_TAG:
        if _DIGEST_TAG in raw[-2 * _DIGEST_LEN:]:  # a digest cut short: the file was truncated
            raise _corrupt(path, "it is corrupt: truncated (its SHA-256 trailer is incomplete)")
        return None
    body = raw[:-_DIGEST_LEN]
    if hashlib.sha256(body).hexdigest().encode() != raw[-64:]:
        raise _corrupt(path, "it is corrupt (its content does not match its SHA-256)")
    return body


def _corrupt(path, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path}: {why}; restore it from a backup or start the "
                           f"run again")


def _check_archive(path: Path) -> None:
    """The zip archive torch.save writes, with every member's CRC-32 checked (one read)."""
    try:
        if path.stat().st_size == 0:
            raise _corrupt(path, "the file is empty")
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except CheckpointError:
        raise
    except zipfile.BadZipFile as e:
        raise _corrupt(path, f"it is corrupt or truncated, or not a checkpoint ({e})") from None
    except OSError as e:
        raise CheckpointError(f"checkpoint {path}: cannot read it ({e.strerror or e})") from None
    except Exception as e:  # zipfile raises several types for damaged headers
        raise _corrupt(path, f"it is corrupt or truncated ({type(e).__name__}: {str(e)[:120]})") from None
    if bad is not None:
        raise _corrupt(path, f"it is corrupt ({bad} fails its CRC check)")


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: pass a run folder that holds "
                              f"checkpoint.pt (written at the end of every epoch)")
    body = _verified_body(path)
    if body is None:
        _check_archive(path)
    try:
        state = torch.load(io.BytesIO(body) if body is not None else path, map_location="cpu",
                           weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        # torch wraps weights_only failures in a long explanation: keep the line saying why.
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        refusal = next((l for l in lines if "unsupported global" in l.lower()
                        or "unsupported class" in l.lower()), None)
        # Only an unsupported global (a reference to code) means a pickled object was refused:
        # "Unsupported global: GLOBAL builtins.exec ..." or, for a blocked module such as
        # os, "Trying to load unsupported GLOBAL posix.system whose module posix is blocked".
        if refusal is not None:
            name = re.search(r"GLOBAL ([\w.]+)", refusal)
            what = f" ({name.group(1)})" if name else ""
            why = f"it contains pickled Python objects that could run code{what}, so it was refused"
        else:
            msg = next((l for l in lines if l.startswith("Unsupported")), lines[0] if lines else type(e).__name__)
            why = f"it is corrupt or truncated ({msg[:160]})"
        raise _corrupt(path, why) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} is not an entrannas checkpoint "
                              f"(expected format {CHECKPOINT_FORMAT})")
    return state


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_optimizer(v) -> bool:
    return isinstance(v, dict) and isinstance(v.get("state"), dict) and isinstance(v.get("param_groups"), list)


def _is_rng(v) -> bool:
    return isinstance(v, dict) and isinstance(v.get("torch"), torch.Tensor) and v["torch"].dtype == torch.uint8


# What a resume reads from a checkpoint, and what each must be.
_COMMON = {
    "config": (lambda v: isinstance(v, dict), "a config mapping"),
    "epoch": (_is_count, "a count of epochs"),
    "step": (_is_count, "a count of steps"),
    "partial": (lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(map(_is_number, v)),
                "three running sums"),
    "elapsed": (_is_number, "seconds"),
    "net": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                                 for k, t in v.items()), "a state dict of tensors"),
    "genotype": (lambda v: isinstance(v, dict), "a genotype mapping"),
}
_FIELDS = {
    "search": {**_COMMON, "w_opt": (_is_optimizer, "an optimizer state"),
               "a_opt": (_is_optimizer, "an optimizer state")},
    "train": {**_COMMON, "opt": (_is_optimizer, "an optimizer state"),
              "rng": (_is_rng, "a random generator state")},
}
_FIELDS["segment"] = _FIELDS["train"]


def load_run_checkpoint(run_dir: str | os.PathLike, kind: str) -> dict:
    """RUN/checkpoint.pt of a `search`, `train` or `segment` run, refused with a hint if it is
    another kind, and with the field named if one that a resume needs is missing or of a wrong
    type."""
    path = Path(run_dir) / "checkpoint.pt"
    if not path.exists() and _config_kind(Path(run_dir) / "config.yaml") == kind:
        again = f"--config {Path(run_dir) / 'config.yaml'} --out {run_dir}"
        if kind in ("train", "segment"):
            again += f" --genotype {run_dir}"
        raise CheckpointError(f"{path} does not exist: the run stopped before its first checkpoint, "
                              f"so there is nothing to resume; start it again with `entrannas "
                              f"{kind} {again}`")
    state = load_checkpoint(path)
    found = state.get("kind")
    if found != kind:
        other = found if found in _FIELDS else ("search" if kind == "train" else "train")
        raise CheckpointError(f"{run_dir} holds a {found} checkpoint, not a {kind} run: "
                              f"use `entrannas {other} --resume {run_dir}`")
    for key, (ok, what) in _FIELDS[kind].items():
        if key not in state:
            raise _corrupt(path, f"the field {key!r} is missing")
        if not ok(state[key]):
            raise _corrupt(path, f"the field {key!r} is not {what}")
    from .config import ConfigError, from_dict
    from .genotype import Genotype, GenotypeError
    try:
        from_dict(state["config"], kind)
        if kind in ("train", "segment"):
            Genotype.from_dict(state["genotype"])
    except (ConfigError, GenotypeError) as e:
        raise _corrupt(path, f"its {'config' if isinstance(e, ConfigError) else 'genotype'} is "
                             f"invalid ({e})") from None
    return state


def _config_kind(path: Path):
    """The kind of the config.yaml a run folder starts with (None if there is none)."""
    import yaml
    try:
        from .config import read_yaml_text
        data = read_yaml_text(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError, RecursionError):
        return None
    return data.get("kind") if isinstance(data, dict) else None


def mismatch(path, err: Exception) -> CheckpointError:
    """A checkpoint whose tensors do not fit the network its own config builds."""
    why = " ".join(l.strip() for l in str(err).splitlines() if l.strip()) or type(err).__name__
    return _corrupt(path, f"its weights do not fit the network of its config ({why[:240]})")

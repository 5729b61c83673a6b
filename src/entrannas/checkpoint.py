"""Atomic writes and safe checkpoint loading.

Every file a run writes goes to a temporary file in the same folder first and is renamed over
the target, so a crash leaves either the old file or the new one, never half of one.
Checkpoints are loaded with `weights_only=True`: a file carrying pickled code is refused
instead of run.
"""
from __future__ import annotations

import io
import os
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
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: pass a run folder that holds "
                              f"checkpoint.pt (written at the end of every epoch)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        # torch wraps weights_only failures in a long explanation: keep the line saying why.
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        msg = next((l for l in lines if l.startswith("Unsupported")), lines[0] if lines else type(e).__name__)
        # Only an unsupported global (a reference to code) means a pickled object was refused.
        if msg.startswith(("Unsupported global", "Unsupported class")):
            why = "it contains pickled Python objects that could run code, so it was refused"
        else:
            why = f"it is corrupt or truncated ({msg[:160]})"
        raise CheckpointError(f"checkpoint {path}: {why}; restore it from a backup or start the "
                              f"run again") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} is not an entrannas checkpoint "
                              f"(expected format {CHECKPOINT_FORMAT})")
    return state


def load_run_checkpoint(run_dir: str | os.PathLike, kind: str) -> dict:
    """RUN/checkpoint.pt of a `search` or `train` run, refused with a hint if it is the other kind."""
    state = load_checkpoint(Path(run_dir) / "checkpoint.pt")
    if state.get("kind") != kind:
        other = "search" if kind == "train" else "train"
        raise CheckpointError(f"{run_dir} holds a {state.get('kind')} checkpoint, not a {kind} run: "
                              f"use `entrannas {other} --resume {run_dir}`")
    return state

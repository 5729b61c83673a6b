"""The run folder shared by search and training: resolved config, log, metrics, TensorBoard.

    RUN/config.yaml       the resolved config (what actually ran)
    RUN/log.txt           human-readable log
    RUN/metrics.jsonl     one JSON object per epoch
    RUN/tb/               TensorBoard events
    RUN/checkpoint.pt     the latest checkpoint (atomic)
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import yaml

from .fsutil import WriteError, atomic_write_text, remove_stale_temp_files
from .config import to_dict

__all__ = ["RunFolder", "NullRunFolder", "RunError", "check_writable", "format_eta", "read_metrics"]


class RunError(RuntimeError):
    """A run folder that cannot be used; one line for the user."""


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """RUN/metrics.jsonl's rows, up to a line cut by a crash (the rest is redone on resume)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


class _LogFile(logging.FileHandler):
    """log.txt. On a full disk logging would print a traceback for every line; say it once
    instead and go on: the writes that matter (checkpoint, metrics) stop the run with a clear
    message of their own."""

    failed = False

    def handleError(self, record):
        if not self.failed:
            self.failed = True
            err = sys.exc_info()[1]
            print(f"entrannas: warning: cannot write {self.baseFilename} "
                  f"({getattr(err, 'strerror', None) or err}); log lines are lost until it can be",
                  file=sys.stderr, flush=True)


def check_writable(path: str | os.PathLike, what: str = "run folder") -> None:
    """Make the folder (and its parents) and prove a file can be written and synced in it, so
    a folder that cannot be written is refused before any work. `what` names it for the user."""
    path = Path(path)
    probe = path / ".write-test"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
            f.flush()
            os.fsync(f.fileno())  # a full disk may only say so when the data goes out
        probe.unlink()
    except OSError as e:
        with contextlib.suppress(OSError):  # a full disk may have let it be created
            probe.unlink()
        raise _unwritable(path, what, e) from None


def _unwritable(path: Path, what: str, err: OSError) -> RunError:
    return RunError(f"cannot write to the {what} {path} ({err.strerror or err}): free some space "
                    f"or choose another folder with --out")


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class RunFolder:
    def __init__(self, path: str | os.PathLike, tensorboard: bool = True, quiet: bool = False):
        self.path = Path(path)
        check_writable(self.path)
        try:
            fh = _LogFile(self.path / "log.txt", encoding="utf-8")
        except OSError as e:
            raise _unwritable(self.path, "run folder", e) from None
        self.log = logging.getLogger(f"entrannas.run.{self.path.resolve()}")
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        if self.log.handlers:
            fh.close()
        else:
            fh.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
            self.log.addHandler(fh)
            if not quiet:
                sh = logging.StreamHandler()
                sh.setFormatter(logging.Formatter("%(message)s"))
                self.log.addHandler(sh)
        self._tb = None
        self._tb_enabled = tensorboard

    # -- files -------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    def write_config(self, cfg) -> None:
        atomic_write_text(self.file("config.yaml"), yaml.safe_dump(to_dict(cfg), sort_keys=False))

    def write_json(self, name: str, obj) -> None:
        atomic_write_text(self.file(name), json.dumps(obj, indent=1) + "\n")

    def append_metrics(self, row: dict) -> None:
        # A line cut by a crash or a full disk is dropped on resume (read_metrics).
        try:
            with open(self.file("metrics.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise WriteError(self.file("metrics.jsonl"), e) from None
        if self._tb_enabled:
            self._scalars(row)

    def read_metrics(self) -> list[dict]:
        return read_metrics(self.path)

    def keep_metrics_before(self, epoch: int) -> None:
        """On resume: drop metrics of epochs the checkpoint does not cover (they are redone)."""
        rows = [r for r in self.read_metrics() if r.get("epoch", 0) < epoch]
        atomic_write_text(self.file("metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))

    def remove_stale_temp_files(self) -> None:
        """On resume: the temporary files of writes a killed run left behind."""
        for folder in (self.path, self.path / "genotypes"):
            for p in remove_stale_temp_files(folder):
                self.log.info(f"removed {p.name}, left by an interrupted write")

    # -- TensorBoard -------------------------------------------------------------------------
    def _scalars(self, row: dict) -> None:
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a dependency, but never lose a run over it
                self._tb_enabled = False
                return
            self._tb = SummaryWriter(str(self.file("tb")))
        step = row.get("epoch", 0)
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tb.add_scalar(key, value, step)
            elif isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
                for i, v in enumerate(value):
                    self._tb.add_scalar(f"{key}/{i}", v, step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        for h in list(self.log.handlers):
            h.close()
            self.log.removeHandler(h)


class NullRunFolder:
    """RunFolder's interface for the ranks other than 0 of a multi-process run: nothing is
    created or written (the metrics rows are kept in memory so the API returns them)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.log = logging.getLogger("entrannas.run.null")
        self.log.propagate = False
        if not self.log.handlers:
            self.log.addHandler(logging.NullHandler())
        self._rows: list[dict] = []

    def file(self, name: str) -> Path:
        return self.path / name

    def write_config(self, cfg) -> None:
        pass

    def write_json(self, name: str, obj) -> None:
        pass

    def append_metrics(self, row: dict) -> None:
        self._rows.append(row)

    def read_metrics(self) -> list[dict]:
        return list(self._rows)

    def keep_metrics_before(self, epoch: int) -> None:
        self._rows = [r for r in self._rows if r.get("epoch", 0) < epoch]

    def remove_stale_temp_files(self) -> None:
        pass

    def close(self) -> None:
        pass


class Timer:
    """Wall time that survives a resume (the checkpoint carries the elapsed seconds)."""

    def __init__(self, elapsed: float = 0.0):
        self.start = time.perf_counter() - elapsed

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

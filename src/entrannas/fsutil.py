"""Atomic file writes: a temporary file in the target's folder, fsynced, then renamed over the
target. A crash leaves the old file or the new one, never half of one. Used for every file a
run writes (checkpoints, genotypes, pictures, configs).

A write that fails (a full disk, a folder that is not writable) raises `WriteError`, which
names the file: the caller can then say what was kept and how to go on.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

__all__ = ["WriteError", "NewFiles", "atomic_path", "atomic_write_bytes", "atomic_write_text",
           "remove_stale_temp_files"]


class WriteError(OSError):
    """A file that could not be written; one line for the user naming the file and why."""

    def __init__(self, path: str | os.PathLike, cause: OSError):
        super().__init__(cause.errno, cause.strerror or str(cause), os.fspath(path))
        self.path = Path(path)

    def __str__(self) -> str:
        return f"cannot write {self.path} ({self.strerror})"


# mkstemp's names: ".<target name>.<8 random characters><suffix>"; the suffix is ".tmp", or
# ".tmp.<ext>" for writers that pick a format by extension.
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path next to `path`; on success it replaces `path`, on error it is
    removed. `suffix` (e.g. ".png") is appended after ".tmp" so that writers that pick a
    format by extension (matplotlib) see it."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
        os.close(fd)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise WriteError(path, e) from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of atomic writes that a killed process left in `folder` (a
    checkpoint's is as large as the checkpoint). Only names `atomic_path` makes are touched.
    Call it when no other process writes there (resuming a run). Returns what was removed."""
    removed = []
    with contextlib.suppress(OSError):
        for p in Path(folder).iterdir():
            if _TEMP_NAME.match(p.name) and p.is_file():
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
    return removed


class NewFiles:
    """What a command adds under a folder, so that a command which fails before it has saved
    anything can take back what it made: a failed start leaves no new files.

    Made before the folder is created, it remembers the highest of the folder's missing
    parents (created by `mkdir(parents=True)` too) and what was already there; `remove()`
    deletes what was added since (files, then folders, deepest first) and never touches
    what was there before."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        root = self.folder.absolute()
        while not root.parent.exists() and root.parent != root:
            root = root.parent
        self.root = root
        self.before = self._listing()

    def _listing(self) -> dict[str, tuple[int, int]]:
        """Relative path -> (inode, mtime in ns) of everything under the root, root included."""
        out = {}
        if not self.root.exists():
            return out
        for folder, dirs, files in os.walk(self.root):
            for name in [".", *dirs, *files] if folder == str(self.root) else [*dirs, *files]:
                p = os.path.join(folder, name)
                with contextlib.suppress(OSError):
                    st = os.lstat(p)
                    out[os.path.normpath(os.path.relpath(p, self.root))] = (st.st_ino, st.st_mtime_ns)
        return out

    def saved(self, name: str = "checkpoint.pt") -> bool:
        """Whether a file called `name` was written (created or replaced) under the root since."""
        now = self._listing()
        return any(os.path.basename(k) == name and self.before.get(k) != v for k, v in now.items())

    def remove(self, keep: tuple[str, ...] = (), files: bool = True) -> None:
        """Delete what was added: files (but those named in `keep`; `files=False`: none, for a
        folder another process may be writing in), then the added folders that are empty."""
        added = sorted((k for k in self._listing() if k not in self.before),
                       key=lambda k: k.count(os.sep) + (k != "."), reverse=True)
        for rel in added:
            p = self.root / rel
            with contextlib.suppress(OSError):
                if p.is_dir() and not p.is_symlink():
                    p.rmdir()
                elif files and p.name not in keep:
                    p.unlink()

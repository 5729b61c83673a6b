"""One writer per run folder, and a failed start that leaves nothing behind.

    with hold_run(run_dir, create=True):     # search, train, child, experiment, --resume
        ...

`run_lock(folder)` takes an exclusive `fcntl.flock` on FOLDER/.lock for as long as the block
runs. A second process is refused at once with one line naming the holder (PID, host, start
time, which the holder writes into the file) and touches nothing. The kernel drops a flock
when its process dies, even by SIGKILL, so a killed run can be resumed at once: the `.lock`
file a killed process leaves holds no lock, and the next command takes it over. A holder
removes the file when it ends, so `.lock` exists only while a command holds the folder.
Read-only commands (plot, animate, eval) never take it. On a network filesystem the lock is
as good as the server's lock support (docs/design.md, "Runs").

`hold_run` adds what every writing command needs around it: the folder is created only on
request (with a write test), the lock is taken on rank 0 of a torchrun job with every rank
told the outcome, and if the command fails before it has written a checkpoint, what it added
to the folder is removed again (a fault or bad input never leaves a half-made run).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from .fsutil import NewFiles
from .rundir import RunError, check_writable

__all__ = ["LOCK_NAME", "RunBusy", "run_lock", "hold_run"]

LOCK_NAME = ".lock"
_HELD: dict[str, int] = {}  # folders this process holds -> nesting depth (run_lock is re-entrant)


class RunBusy(RunError):
    """The folder is held by another process."""


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, what: str = "run folder"):
    """Hold `folder` (it must exist) exclusively while the block runs; raises RunBusy if
    another process holds it. Re-entrant: a process that holds a folder may enter again
    (an experiment's sub-run, `child` after a search in the same process)."""
    folder = Path(folder)
    key = os.path.realpath(folder)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield folder
        finally:
            _HELD[key] -= 1
        return
    fd = _acquire(folder, what)
    _HELD[key] = 1
    try:
        yield folder
    finally:
        del _HELD[key]
        _release(folder, fd)


def _acquire(folder: Path, what: str) -> int:
    path = folder / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise RunError(f"cannot write to the {what} {folder} ({e.strerror or e}): free some space "
                           f"or choose another folder with --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunBusy(f"{folder} is in use by another process ({holder}): a {what} has one "
                          f"writer at a time; wait for that one to end, or stop it first") from None
        except OSError as e:  # ENOLCK: a filesystem without locks
            os.close(fd)
            raise RunError(f"cannot lock the {what} {folder} ({e.strerror or e}): put it on a "
                           f"filesystem that supports file locks") from None
        # The holder before us removes the file as it ends: if it did so between our open and
        # our flock, we hold a file nobody else will open. Lock the one at the path instead.
        try:
            st, mine = os.stat(path), os.fstat(fd)
            if (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    with contextlib.suppress(OSError):  # who holds it is a courtesy for the refused; a full disk may refuse it
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return fd


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"PID {int(info['pid'])} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet written its PID"


def _release(folder: Path, fd: int) -> None:
    path = folder / LOCK_NAME
    with contextlib.suppress(OSError):
        st, mine = os.stat(path), os.fstat(fd)
        if (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev):
            path.unlink()  # while still locked: nobody can take it over half-removed
    os.close(fd)


@contextlib.contextmanager
def hold_run(folder: str | os.PathLike, create: bool = False, what: str = "run folder"):
    """Hold a run folder for a whole command (see the module doc). `create`: make the folder
    if needed, after a write test; without it a missing folder is neither made nor locked
    (the caller's own check reports it). Under torchrun rank 0 locks, and every rank raises if
    that failed. If the block fails before a checkpoint is written under the folder, what this
    command added there is removed, the folder too if it made it."""
    from . import distributed as ddp  # here: the lock alone needs no torch
    folder = Path(folder)
    added = None
    with contextlib.ExitStack() as lock:

        def take_back():
            added.remove(keep=(LOCK_NAME,))  # files first, while the folder is still held
            lock.close()
            added.remove(files=False)  # then the folders the lock file kept

        with ddp.together():
            if ddp.is_main() and create:
                added = NewFiles(folder)
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError:
                    check_writable(folder, what)  # raises, saying why in the folder's words
                try:
                    lock.enter_context(run_lock(folder, what))
                except BaseException:
                    added.remove(files=False)  # not ours to clean: only empty folders we made
                    raise
                try:
                    check_writable(folder, what)
                except BaseException:
                    take_back()
                    raise
            elif ddp.is_main() and folder.is_dir():
                lock.enter_context(run_lock(folder, what))
        try:
            yield folder
        except BaseException:
            if added is not None and not added.saved():
                take_back()
            raise

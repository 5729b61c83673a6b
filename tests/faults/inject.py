"""Run the `entrannas` command line with faults injected: test code only, never imported by
the library. The fault suite starts it as `python inject.py <entrannas arguments>`, with the
environment variable ENTRANNAS_FAULT holding a JSON object:

    trace          a file: append the label of every event below, one a line
    kill_at        SIGKILL this process at the first event with this label
    nan_loss_at    "E:S": report a NaN loss for the step taken at epoch E after S steps
    poison_at      "E:S": after that step's update, set one weight to inf (a diverging update)
    enospc_from    a label, or "start": from that event on, every write into a run file
                   fails with ENOSPC ("No space left on device"), as on a full disk
    stop_at        SIGSTOP this process at the first event with this label (it keeps its
                   locks; the test sends SIGCONT)
    sigterm_at     send this process SIGTERM at the first event with this label (Ctrl-C)
    kill_after     SIGKILL this process at its N-th event (in every process: the parent and
                   the workers of an experiment count their own events)
    kill_parent_after  at a worker's N-th event, SIGKILL the experiment process that
                   started it (once; never another process)
    flip_checkpoint_read  every read of a checkpoint.pt sees one bit flipped
    only_rank      apply the faults only in the process whose RANK (torchrun) is this

Events, with E the epoch (0-based) and S the steps done in it:

    step:E:S           a step has updated the weights and is about to be counted
    ckpt_half:E:S      half of the checkpoint at position (E, S) is in its temporary file
    ckpt_rename:E:S    the temporary file is complete, not yet renamed over checkpoint.pt
    metrics_half:E     half of epoch E's metrics line is written
    metrics:E          epoch E's metrics line is written (its checkpoint is not yet)

Labels are the same in every run of a config (runs are deterministic), so a test picks kill
points from the trace of an uninterrupted run. An experiment's worker processes (--jobs N)
get the same patches and report the same events.
"""
import json
import logging
import os
import signal
import sys

SPEC = json.loads(os.environ.get("ENTRANNAS_FAULT") or "{}")
if "only_rank" in SPEC and os.environ.get("RANK", "0") != str(SPEC["only_rank"]):
    SPEC = {k: v for k, v in SPEC.items() if k == "trace"}
FULL = SPEC.get("enospc_from") == "start"
_CKPT_LABEL = [None]   # position of the checkpoint being written
_COUNT = [0]           # events seen by this process
_PARENT = [None]       # in an experiment's worker: the experiment's process


def event(label: str) -> None:
    global FULL
    _COUNT[0] += 1
    if "trace" in SPEC:
        with open(SPEC["trace"], "a") as f:
            f.write(label + "\n")
    if SPEC.get("kill_at") == label or SPEC.get("kill_after") == _COUNT[0]:
        os.kill(os.getpid(), signal.SIGKILL)
    if SPEC.get("kill_parent_after") == _COUNT[0] and _PARENT[0] is not None and os.getppid() == _PARENT[0]:
        os.kill(_PARENT[0], signal.SIGKILL)
    if SPEC.get("stop_at") == label:
        os.kill(os.getpid(), signal.SIGSTOP)
    if SPEC.get("sigterm_at") == label:
        os.kill(os.getpid(), signal.SIGTERM)
    if SPEC.get("enospc_from") == label:
        FULL = True


def _enospc(path) -> OSError:
    return OSError(28, os.strerror(28), str(path))


class _File:
    """A file object whose writes fail once the disk is 'full'; for the checkpoint's temporary
    file, it reports the half-written and complete events."""

    def __init__(self, f, path):
        self._f, self._path = f, str(path)
        self._ckpt = os.path.basename(self._path).startswith(".checkpoint.pt.")

    def write(self, data):
        if self._ckpt and _CKPT_LABEL[0] is not None:
            half = len(data) // 2
            self._f.write(data[:half])
            self._f.flush()
            event(f"ckpt_half:{_CKPT_LABEL[0]}")
            if FULL:
                raise _enospc(self._path)
            return half + self._f.write(data[half:])
        if FULL:
            raise _enospc(self._path)
        return self._f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
        return False

    def __getattr__(self, name):
        return getattr(self._f, name)


def _open(file, mode="r", *args, **kwargs):
    f = open(file, mode, *args, **kwargs)
    return _File(f, file) if any(c in mode for c in "wax+") else f


def _in_worker(initializer, initargs, parent) -> None:
    """An experiment worker's start: the patches first, then the library's own initializer."""
    _PARENT[0] = parent
    install()
    if initializer is not None:
        initializer(*initargs)


def install() -> None:
    import pathlib
    from concurrent.futures import ProcessPoolExecutor

    import entrannas.experiments.common
    import entrannas.fsutil
    import entrannas.loop
    import entrannas.rundir
    import entrannas.search
    import entrannas.train
    import torch

    class Pool(ProcessPoolExecutor):
        def __init__(self, *args, initializer=None, initargs=(), **kwargs):
            super().__init__(*args, initializer=_in_worker, initargs=(initializer, initargs, os.getpid()),
                             **kwargs)
    entrannas.experiments.common.ProcessPoolExecutor = Pool

    if SPEC.get("flip_checkpoint_read"):
        real_read_bytes = pathlib.Path.read_bytes

        def read_bytes(self):
            data = real_read_bytes(self)
            if self.name == "checkpoint.pt" and data:
                data = bytearray(data)
                data[len(data) // 2] ^= 0x10
                data = bytes(data)
            return data
        pathlib.Path.read_bytes = read_bytes

    # Every write of a run file goes through these opens: atomic writes, metrics, the log.
    entrannas.fsutil.open = _open
    entrannas.rundir.open = _open
    logging.open = _open   # FileHandler opens log.txt with the logging module's `open`

    real_replace = os.replace

    def replace(src, dst, *a, **k):
        if os.path.basename(os.fspath(dst)) == "checkpoint.pt" and _CKPT_LABEL[0] is not None:
            event(f"ckpt_rename:{_CKPT_LABEL[0]}")
        return real_replace(src, dst, *a, **k)
    os.replace = replace

    for module in (entrannas.search, entrannas.train):
        def save(path, state, _real=module.save_checkpoint):
            _CKPT_LABEL[0] = f"{state['epoch']}:{state['step']}"
            try:
                _real(path, state)
            finally:
                _CKPT_LABEL[0] = None
        module.save_checkpoint = save

    real_append = entrannas.rundir.RunFolder.append_metrics

    def append_metrics(self, row):
        if not FULL:
            line = json.dumps(row) + "\n"
            with open(self.file("metrics.jsonl"), "a") as f:   # half a line, as a crash leaves it
                f.write(line[: len(line) // 2])
            event(f"metrics_half:{row['epoch']}")
            if not FULL:  # take the half back out and write the line the library's way
                with open(self.file("metrics.jsonl"), "rb+") as f:
                    f.seek(-len(line[: len(line) // 2].encode()), os.SEEK_END)
                    f.truncate()
        real_append(self, row)   # on a full disk: fails after the half line, as a real one may
        event(f"metrics:{row['epoch']}")
    entrannas.rundir.RunFolder.append_metrics = append_metrics

    real_account = entrannas.loop.StepAccounting.account_step

    def account_step(self, loss, *args, **kwargs):
        where = f"{self.epoch}:{self.step}"
        if SPEC.get("nan_loss_at") == where:
            loss = torch.full_like(loss, float("nan"))
        if SPEC.get("poison_at") == where:
            with torch.no_grad():
                next(self.net.parameters()).view(-1)[0] = float("inf")
        event(f"step:{where}")
        return real_account(self, loss, *args, **kwargs)
    entrannas.loop.StepAccounting.account_step = account_step


if __name__ == "__main__":
    install()
    from entrannas.cli import run
    sys.exit(run(sys.argv[1:]))

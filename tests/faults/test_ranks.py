"""Two processes of one multi-process search (gloo on the CPU), launched the way torchrun
launches them but without its agent (which would kill the survivors and hide a hang): a fault
on either rank (a full disk on rank 0, a damaged checkpoint on rank 1 only, a NaN loss on
rank 1 only, SIGTERM to rank 1) stops both within 60 s, each with a non-zero exit code and
one line, and the run resumes afterwards."""
import socket
import subprocess
import sys
import time

from .conftest import INJECT, SEARCH, child_env, one_line, position, snapshot

LIMIT = 60  # seconds a rank may outlive the other


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_ranks(args, fault=None, timeout=300):
    """Both ranks of `entrannas ARGS`; returns [(exit code, stderr, seconds to exit)] by rank."""
    port, procs, t0 = _port(), [], time.time()
    for rank in (0, 1):
        env = child_env(fault)
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), ENTRANNAS_DIST_TIMEOUT="120")
        procs.append(subprocess.Popen([sys.executable, str(INJECT), *map(str, args)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=timeout)
            out.append((p.returncode, err, time.time() - t0))
    finally:
        for p in procs:
            p.kill()
    return out


def both_stop(results, code, *needles):
    (rc0, err0, t0), (rc1, err1, t1) = results
    assert (rc0, rc1) == (code, code), (err0[-2000:], err1[-2000:])
    assert abs(t0 - t1) < LIMIT, (t0, t1)
    lines = [one_line(err, *needles) for err in (err0, err1)]
    return lines


def test_a_fault_on_one_rank_stops_both(tmp_path):
    out = tmp_path / "run"
    run = [*SEARCH, "--out", out]
    # 1. A full disk on rank 0 (the only writer) while it writes a checkpoint.
    r0, r1 = both_stop(two_ranks(run, {"only_rank": 0, "enospc_from": "ckpt_half:0:4"}), 2,
                       "No space left on device")
    assert r0.startswith(f"entrannas search: error: cannot write {out / 'checkpoint.pt'}")
    assert "stopped because process 0 of 2 failed: cannot write" in r1
    assert position(out) == (0, 2)
    resume = ["search", "-q", "--resume", out]
    # 2. Rank 1 alone reads a damaged checkpoint (another machine's copy of the folder).
    before = snapshot(out)
    r0, r1 = both_stop(two_ranks(resume, {"only_rank": 1, "flip_checkpoint_read": True}), 2, "corrupt")
    assert "stopped because process 1 of 2 failed: checkpoint" in r0 and "restore it" in r1
    assert snapshot(out) == before
    # 3. A NaN loss on rank 1 only: the summed loss stops both at the same step.
    r0, r1 = both_stop(two_ranks(resume, {"only_rank": 1, "nan_loss_at": "0:3"}), 2,
                       "the training loss became nan at epoch 1, step 4", "epoch 1, step 2")
    # 4. SIGTERM (Ctrl-C) to rank 1 only: both checkpoint at the same step and stop.
    results = two_ranks(resume, {"only_rank": 1, "sigterm_at": "step:0:3"})
    assert [r[0] for r in results] == [130, 130], results
    assert abs(results[0][2] - results[1][2]) < LIMIT
    for _, err, _ in results:
        one_line(err, f"stopped; a checkpoint was saved. Continue with --resume {out}")
    assert position(out) == (0, 4)
    # The run goes on to its end.
    results = two_ranks(resume)
    assert [r[0] for r in results] == [0, 0], results
    assert position(out) == (2, 0)

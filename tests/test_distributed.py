"""Two processes (torchrun, gloo, CPU) search and train exactly as one process does with the same
global batch: identical alpha/beta and genotypes on both ranks, weights within float tolerance of
the single-process run, and only rank 0 writes the run folder."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker  # noqa: E402

from entrannas import distributed as ddp  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={_free_port()}", str(Path(ddp_worker.__file__)), str(base / "two")]
    (base / "two").mkdir()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two = [torch.load(base / "two" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    with torch.random.fork_rng(devices=[]):
        # The reference trains the two-process run's genotype (near-ties may pick another).
        from entrannas.genotype import Genotype
        one = ddp_worker.run(base / "one" / "runs", Genotype.from_dict(two[0]["genotype"]))
    return base, two, one


def test_ranks_hold_identical_architecture(runs):
    _, (r0, r1), _ = runs
    assert r0["world_size"] == r1["world_size"] == 2
    for a, b in zip(r0["arch"], r1["arch"]):
        assert torch.equal(a, b)  # bit for bit
    assert r0["genotype"] == r1["genotype"]
    assert r0["genotypes"] == r1["genotypes"] and len(r0["genotypes"]) == 1
    for k in r0["search_net"]:
        assert torch.equal(r0["search_net"][k], r1["search_net"][k]), k
    for k in r0["train_net"]:
        assert torch.equal(r0["train_net"][k], r1["train_net"][k]), k
    assert r0["search_metrics"] == r1["search_metrics"]
    assert r0["test_acc"] == r1["test_acc"]


def test_two_processes_match_one_with_the_same_global_batch(runs):
    _, (r0, _), one = runs
    # One search step and two training steps: Adam's first steps move each coefficient by about
    # +-arch_lr whatever the gradient's size, and BatchNorm on near-constant channels amplifies
    # float noise, so longer runs drift apart chaotically even between two single-process runs
    # with different thread counts (measured); a few steps show the arithmetic is the same.
    for a, b in zip(r0["arch"], one["arch"]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
    assert r0["genotype"] == one["genotype"]
    assert r0["search_net"].keys() == one["search_net"].keys()  # checkpoints are interchangeable
    for key in ("search_net", "train_net"):
        for k, v in one[key].items():
            if k.startswith(("alpha_", "beta_")):
                continue  # compared above
            torch.testing.assert_close(r0[key][k].double(), v.double(), atol=1e-4, rtol=1e-3, msg=f"{key} {k}")
    for m0, m1 in zip(r0["search_metrics"], one["search_metrics"]):
        for k in m1:
            assert m0[k] == pytest.approx(m1[k], rel=1e-2, abs=1e-2), k
    assert r0["test_loss"] == pytest.approx(one["test_loss"], rel=1e-3, abs=1e-4)


def test_only_rank0_writes_the_run_folder(runs):
    base, _, _ = runs
    run = base / "two" / "runs" / "search"
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "genotype.json", "checkpoint.pt"):
        assert (run / name).exists(), name
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0]  # one writer: no duplicated rows
    log = (run / "log.txt").read_text()
    assert log.count("epoch 1 done") == 1 and "2 process(es)" in log
    assert sorted(p.name for p in (base / "two").iterdir()) == ["rank0.pt", "rank1.pt", "runs"]
    # The checkpoint of the two-process run resumes in one process: same state_dict keys.
    from entrannas.checkpoint import load_checkpoint
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["net"].keys() == runs[2]["search_net"].keys()


def test_single_process_helpers_are_no_ops():
    assert not ddp.active() and ddp.world_size() == 1 and ddp.rank() == 0 and ddp.is_main()
    assert ddp.init_from_env() is False or ddp.active()
    p = nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    ddp.allreduce_grads([p])
    assert torch.equal(p.grad, torch.full((3,), 2.0))
    assert ddp.allreduce_sum([1, 2.5]) == [1.0, 2.5]
    assert ddp.per_rank_batch(7) == 7


def test_sync_batchnorm_is_batchnorm_in_one_process():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4, affine=False)))
    ref = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4, affine=False)))
    ref.load_state_dict(net.state_dict())
    keys = list(net.state_dict())
    ddp.convert_sync_batchnorm(net)
    assert isinstance(net[1], ddp.SyncBatchNorm2d) and isinstance(net[2][0], ddp.SyncBatchNorm2d)
    assert not net[2][0].affine and list(net.state_dict()) == keys
    x = torch.randn(5, 3, 8, 8)
    torch.testing.assert_close(net(x), ref(x))
    torch.testing.assert_close(net.state_dict()["1.running_var"], ref.state_dict()["1.running_var"])


def test_the_cli_leaves_the_process_group_on_every_way_out(tmp_path):
    """A gloo group left to the interpreter's teardown can abort the process (exit -6 instead of
    the CLI's code), so every command leaves it, after success and after an error."""
    script = (
        "import sys, torch.distributed as dist\n"
        "from entrannas.cli import main\n"
        f"dist.init_process_group('gloo', init_method='file://{tmp_path / 'store'}', rank=0, world_size=1)\n"
        "rc = main(['presets'])\n"
        "assert rc == 0 and not dist.is_initialized(), rc\n"
        f"dist.init_process_group('gloo', init_method='file://{tmp_path / 'store2'}', rank=0, world_size=1)\n"
        f"rc = main(['plot', '{tmp_path / 'missing.json'}', '-o', '{tmp_path / 'x.png'}'])\n"
        "assert rc == 2 and not dist.is_initialized(), rc\n"
        "print('ok')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == "ok", proc.stderr[-2000:]


def test_the_command_of_a_process_that_was_in_a_group_exits_past_the_teardown(tmp_path):
    """Even after leaving the group, a gloo process now and then aborted in the interpreter's
    teardown (SIGABRT, "terminate called without an active exception": a finished rank's exit
    code became -6 in a CI run). So `entrannas` (cli.run) ends such a process with os._exit and
    the command's own code, its output flushed first; a process never in a group returns."""
    store = tmp_path / "store"
    script = (
        "import sys, torch.distributed as dist\n"
        "from entrannas.cli import run\n"
        "assert run(['presets']) == 0\n"  # never in a group: returns
        "print('returned', flush=True)\n"
        f"dist.init_process_group('gloo', init_method='file://{store}', rank=0, world_size=1)\n"
        f"run(['plot', '{tmp_path / 'missing.json'}', '-o', '{tmp_path / 'x.png'}'])\n"
        "print('after the exit')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "returned" in proc.stdout and "after the exit" not in proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith("entrannas plot: error:")

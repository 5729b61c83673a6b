"""A NaN or inf loss, or weights that stop being finite, stop the run with one clear line;
the checkpoint on disk is the last good one, and resuming from it works."""
import torch

from entrannas.checkpoint import load_checkpoint
from entrannas.cli import main

from .conftest import SEARCH, TRAIN, assert_same_run, cli, metrics, one_line, position


def assert_good_checkpoint(run, where):
    assert position(run) == where
    state = load_checkpoint(run / "checkpoint.pt")
    bad = [k for k, t in state["net"].items() if t.is_floating_point() and not torch.isfinite(t).all()]
    assert not bad, f"non-finite weights on disk: {bad}"


def stops(run, fault, args, *needles):
    p = cli(args, fault=fault)
    assert p.returncode == 2, p.stderr
    return one_line(p.stderr, *needles, "--resume", run / "checkpoint.pt")


def nonfinite_chain(tmp_path, kind, fresh, ref):
    """Two faults in a row, each resumed: a NaN loss (the step is not taken into account),
    then an update that leaves an inf weight behind a still-finite loss (without the check
    it would have been saved as the next checkpoint, and every resume would fail)."""
    out = tmp_path / "run"
    # Step 4 of epoch 1 reports a NaN loss: the checkpoint after step 2 is the last good one.
    stops(out, {"nan_loss_at": "0:3"}, [*fresh, "--out", out],
          "the training loss became nan at epoch 1, step 4", "epoch 1, step 2")
    assert_good_checkpoint(out, (0, 2))
    assert not (out / "metrics.jsonl").exists()
    # Step 2 of epoch 2 makes a weight inf; the checkpoint due after it is refused.
    stops(out, {"poison_at": "1:1"}, [kind, "-q", "--resume", out],
          "the weights became non-finite", "at epoch 2, step 2", "the end of epoch 1")
    assert_good_checkpoint(out, (1, 0))
    assert len(metrics(out)) == 1
    p = cli([kind, "-q", "--resume", out])
    assert p.returncode == 0, p.stderr
    assert_same_run(ref, out)


def test_search_nan_and_inf(tmp_path, search_ref):
    nonfinite_chain(tmp_path, "search", SEARCH, search_ref[0])


def test_training_nan_and_inf(tmp_path, train_ref, dst_genotype):
    nonfinite_chain(tmp_path, "train", [*TRAIN, "-g", dst_genotype], train_ref[0])


def test_a_real_divergence_stops_before_anything_is_saved(tmp_path, capsys):
    """No injection: a learning rate of 1e30 diverges within the first steps, before the first
    checkpoint. One line says so and what to change; nothing non-finite is on disk."""
    out = tmp_path / "run"
    assert main([*SEARCH, "--set", "optim.lr=1.0e+30", "--set", "run.checkpoint_every=3", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    one_line(err, "became", "lower optim.lr", "no checkpoint had been written yet")
    assert not (out / "checkpoint.pt").exists() and not (out / "metrics.jsonl").exists()


def test_a_real_divergence_in_training_keeps_a_finite_checkpoint(tmp_path, capsys):
    """With a checkpoint after every step, the diverging run saved step 1; what is on disk
    holds finite weights, and the message points at it."""
    out = tmp_path / "run"
    argv = [*TRAIN, "-g", "DARTS_V2", "--set", "optim.lr=1.0e+30", "--set", "run.checkpoint_every=1",
            "--out", str(out)]
    assert main(argv) == 2
    err = one_line(capsys.readouterr().err, "the training loss became", "lower optim.lr", "--resume")
    saved = position(out)
    assert saved is not None and f"epoch 1, step {saved[1]})" in err
    assert_good_checkpoint(out, saved)

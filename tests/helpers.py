"""Shared by several test files (tests/ is on sys.path under pytest)."""
from entrannas.cli import main
from entrannas.genotype import CellGenotype, Genotype

# A DST-style cell: a three-input node and two ops on one edge (0 -> 2).
DST_NODES = (
    (("sep_conv_3x3", 0), ("dil_conv_3x3", 0)),
    (("sep_conv_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 2)),
    (("avg_pool_3x3", 3),),
    (("sep_conv_5x5", 4), ("skip_connect", 2)),
)
DST = Genotype(CellGenotype(DST_NODES), CellGenotype(DST_NODES))


def fails_with_one_line(capsys, argv, *needles):
    """The CLI exits 2 with one stderr line (no traceback) that mentions every needle."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err

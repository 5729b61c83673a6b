"""entrannas: differentiable neural architecture search with EnTranNAS, EnTranNAS-DST and DARTS."""
from .arch import derive_dst, derive_top2, dst_coefficients, dst_regulariser
from .cells import EngineCell, TransitCell
from .ops import OPS, SPACES, op_names
from .supernet import SuperNet

__version__ = "0.1.0"

__all__ = ["SuperNet", "EngineCell", "TransitCell", "dst_coefficients", "dst_regulariser",
           "derive_top2", "derive_dst", "OPS", "SPACES", "op_names", "Genotype", "CellGenotype",
           "load_genotype", "load_model"]


def __getattr__(name):
    # genotype.py is imported lazily so `import entrannas` stays light for the CLI.
    if name in ("Genotype", "CellGenotype", "load_genotype", "GenotypeError"):
        from . import genotype
        return getattr(genotype, name)
    if name == "load_model":  # export.py: a trained target network from a run folder
        from .export import load_model
        return load_model
    raise AttributeError(name)

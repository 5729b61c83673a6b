"""Genotypes: the derived architecture of a normal and a reduction cell (docs/design.md, Genotype files).

The on-disk form is UTF-8 JSON (``entrannas-genotype/1``), never Python code. The published
DARTS-style strings (``Genotype(normal=[('sep_conv_3x3', 0), ...], ...)``) are read by walking
their syntax tree: only string/int literals, lists, tuples and ``range(a, b)`` are accepted,
so a hostile string cannot run anything.

A cell has 4 intermediate nodes (2..5); ``nodes[m]`` holds the (op, input) pairs of node
m+2. DARTS cells have exactly two pairs per node; EnTranNAS-DST cells may have any number,
including several ops on one edge (same input, different ops).
"""
from __future__ import annotations

import ast
import copy
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

from .fsutil import atomic_write_text
from .ops import SPACES

__all__ = ["GenotypeError", "CellGenotype", "Genotype", "BUILTINS", "FORMAT", "load_genotype"]

FORMAT = "entrannas-genotype/1"
NUM_NODES = 4          # intermediate nodes per cell (nodes 2..5)
_RESERVED = ("format", "space", "normal", "reduce")
_CELL_KEYS = ("nodes", "concat")


class GenotypeError(ValueError):
    """A genotype that cannot be read or is not a valid architecture; the message says what
    is wrong and how to fix it."""


def _tuplify(x: Any, depth: int) -> Any:
    # Derivation code naturally builds lists; the frozen dataclasses need tuples to hash.
    # Only the `depth` levels of the format are converted (hostile input may nest deeper);
    # anything else is left alone for validate() to report.
    if depth and isinstance(x, (list, tuple)):
        return tuple(_tuplify(v, depth - 1) for v in x)
    return x


def _copy_meta(meta: dict) -> dict:
    try:
        return copy.deepcopy(meta)
    except RecursionError:
        raise GenotypeError("genotype metadata is nested too deeply") from None


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)   # True is not an input index


@dataclass(frozen=True)
class CellGenotype:
    nodes: tuple[tuple[tuple[str, int], ...], ...]
    concat: tuple[int, ...] = (2, 3, 4, 5)

    def __post_init__(self):
        object.__setattr__(self, "nodes", _tuplify(self.nodes, 3))
        concat = list(self.concat) if isinstance(self.concat, range) else self.concat
        object.__setattr__(self, "concat", _tuplify(concat, 1))

    @property
    def num_ops(self) -> int:
        """Number of (op, input) pairs: the ops the target-net computes."""
        return sum(len(node) for node in self.nodes)

    @property
    def num_edges(self) -> int:
        """Number of distinct (input, node) connections (Table 4 counts these)."""
        return sum(len({inp for _, inp in node}) for node in self.nodes)

    def edges(self) -> list[tuple[int, int, str]]:
        """(input, node, op) triples, nodes numbered 2..5 like their inputs."""
        return [(inp, m + 2, op) for m, node in enumerate(self.nodes) for op, inp in node]

    def to_dict(self) -> dict:
        return {"nodes": [[[op, inp] for op, inp in node] for node in self.nodes],
                "concat": list(self.concat)}

    def validate(self, space: str | None = "standard", name: str = "cell") -> "CellGenotype":
        """Raise GenotypeError unless this is a valid cell; ``space=None`` skips the check of
        op names against an op space (drawing a cell needs only the structure)."""
        if space is not None and space not in SPACES:
            raise GenotypeError(f"unknown space {space!r}; choose one of {sorted(SPACES)}")
        valid_ops = None if space is None else set(SPACES[space]) - {"none"}
        if not isinstance(self.nodes, tuple):
            raise GenotypeError(f"{name}: 'nodes' must be a list of nodes, got {self.nodes!r}")
        if len(self.nodes) != NUM_NODES:
            raise GenotypeError(
                f"{name} has {len(self.nodes)} intermediate nodes; cells here have exactly "
                f"{NUM_NODES} (nodes 2..5), so 'nodes' must list {NUM_NODES} nodes")
        for m, node in enumerate(self.nodes):
            j = m + 2
            where = f"{name} node {j} (nodes[{m}])"
            if not isinstance(node, tuple):
                raise GenotypeError(f"{where}: must be a list of [op, input] pairs, got {node!r}")
            if not node:
                raise GenotypeError(f"{where} has no inputs; every intermediate node needs at "
                                    f"least one [op, input] pair")
            seen = set()
            for pair in node:
                if not (isinstance(pair, tuple) and len(pair) == 2):
                    raise GenotypeError(f"{where}: each entry must be an [op, input] pair, "
                                        f"got {pair!r}")
                op, inp = pair
                if not isinstance(op, str):
                    raise GenotypeError(f"{where}: op must be a string such as 'sep_conv_3x3', "
                                        f"got {op!r} ({type(op).__name__})")
                if not _is_int(inp):
                    raise GenotypeError(f"{where}: input of {op!r} must be an integer node "
                                        f"index, got {inp!r} ({type(inp).__name__})")
                if op == "none":
                    raise GenotypeError(
                        f"{where}: op 'none' cannot be a derived op (it means 'no connection'); "
                        f"remove the pair ('none', {inp})")
                if valid_ops is not None and op not in valid_ops:
                    hint = ""
                    others = [s for s in SPACES if op in SPACES[s]]
                    if others:
                        hint = f" (it belongs to space {others[0]!r}: set \"space\": \"{others[0]}\")"
                    raise GenotypeError(
                        f"{where}: unknown op {op!r} for space {space!r}{hint}; valid ops: "
                        f"{', '.join(sorted(valid_ops))}")
                if not 0 <= inp < j:
                    raise GenotypeError(
                        f"{where}: input {inp} of {op!r} is out of range; node {j} takes "
                        f"inputs 0..{j - 1} (0, 1: the two previous cells; 2..: earlier nodes)")
                if (op, inp) in seen:
                    raise GenotypeError(f"{where}: duplicate pair ({op!r}, {inp}); list each "
                                        f"(op, input) once")
                seen.add((op, inp))
        if not isinstance(self.concat, tuple) or not self.concat:
            raise GenotypeError(f"{name}: 'concat' must be a non-empty list of node indices "
                                f"in 2..{NUM_NODES + 1}, got {self.concat!r}")
        for c in self.concat:
            if not _is_int(c) or not 2 <= c <= NUM_NODES + 1:
                raise GenotypeError(
                    f"{name}: concat index {c!r} is out of range; the cell output concatenates "
                    f"intermediate nodes, numbered 2..{NUM_NODES + 1}")
        if len(set(self.concat)) != len(self.concat):
            raise GenotypeError(f"{name}: concat {list(self.concat)} repeats a node; list each once")
        return self


@dataclass(frozen=True)
class Genotype:
    normal: CellGenotype
    reduce: CellGenotype
    space: str = "standard"
    # Search metadata (seed, epoch, accuracy...): kept and written back, but two genotypes
    # with the same cells are the same architecture whatever their history.
    meta: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    # ---------------------------------------------------------------- validation
    def validate(self) -> "Genotype":
        if not isinstance(self.space, str) or self.space not in SPACES:
            raise GenotypeError(f"unknown space {self.space!r}; choose one of {sorted(SPACES)}")
        for name, cell in (("normal", self.normal), ("reduce", self.reduce)):
            if not isinstance(cell, CellGenotype):
                raise GenotypeError(f"{name} cell must be a CellGenotype, got {type(cell).__name__}")
            cell.validate(self.space, f"{name} cell")
        if not isinstance(self.meta, dict):
            raise GenotypeError(f"meta must be a dict, got {type(self.meta).__name__}")
        clash = [k for k in self.meta if k in _RESERVED]
        if clash:
            raise GenotypeError(f"meta may not use the reserved keys {clash}")
        return self

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        d = {"format": FORMAT, "space": self.space,
             "normal": self.normal.to_dict(), "reduce": self.reduce.to_dict()}
        for k, v in _copy_meta(self.meta).items():
            d.setdefault(k, v)
        return d

    def to_json(self, indent: int | None = None) -> str:
        try:
            return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError) as e:
            raise GenotypeError(f"genotype metadata is not JSON-serialisable: {e}") from None

    @classmethod
    def from_dict(cls, d: Any) -> "Genotype":
        if not isinstance(d, dict):
            raise GenotypeError(f"a genotype must be a JSON object, got {type(d).__name__}")
        fmt = d.get("format", FORMAT)
        if fmt != FORMAT:
            raise GenotypeError(f"unsupported format {fmt!r}; this version reads {FORMAT!r}")
        missing = [k for k in ("normal", "reduce") if k not in d]
        if missing:
            raise GenotypeError(f"genotype is missing the key(s) {missing}; it needs 'normal' "
                                f"and 'reduce', each {{\"nodes\": [...], \"concat\": [2, 3, 4, 5]}}")
        space = d.get("space", "standard")
        cells = [_cell_from_dict(d[k], k) for k in ("normal", "reduce")]
        meta = _copy_meta({k: v for k, v in d.items() if k not in _RESERVED})
        return cls(cells[0], cells[1], space, meta).validate()

    @classmethod
    def from_json(cls, text: str | bytes) -> "Genotype":
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as e:
                raise GenotypeError(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise GenotypeError(f"line {e.lineno}: invalid JSON ({e.msg})") from None
        except (RecursionError, TypeError, ValueError) as e:
            raise GenotypeError(f"invalid JSON ({type(e).__name__})") from None
        return cls.from_dict(d)

    def save(self, path: str | os.PathLike) -> None:
        """Write the JSON file atomically: a reader sees the old file or the new, never half."""
        atomic_write_text(path, self.validate().to_json(indent=2) + "\n")

    # ---------------------------------------------------------------- DARTS strings
    def to_darts_string(self) -> str:
        parts = []
        for name, cell in (("normal", self.normal), ("reduce", self.reduce)):
            for m, node in enumerate(cell.nodes):
                if len(node) != 2:
                    raise GenotypeError(
                        f"{name} cell node {m + 2} has {len(node)} inputs; the DARTS string "
                        f"format needs exactly 2 per node (save as JSON instead)")
            pairs = ", ".join(f"({op!r}, {inp})" for node in cell.nodes for op, inp in node)
            parts.append(f"{name}=[{pairs}], {name}_concat={list(cell.concat)}")
        return f"Genotype({', '.join(parts)})"

    @classmethod
    def from_darts_string(cls, text: str, space: str | None = None) -> "Genotype":
        """Parse a published DARTS-style string; ``space=None`` picks the smallest op space
        holding all of its ops."""
        fields = _parse_darts(text)
        cells = {}
        for name in ("normal", "reduce"):
            concat = fields.get(f"{name}_concat", [2, 3, 4, 5])
            cells[name] = CellGenotype(_group_pairs(fields[name], name), concat)
        if space is None:
            ops = {op for c in cells.values() for node in c.nodes for op, _ in node
                   if isinstance(op, str)}
            space = next((s for s in SPACES if ops <= set(SPACES[s])), "standard")
        return cls(cells["normal"], cells["reduce"], space).validate()

    # ---------------------------------------------------------------- builtins
    @classmethod
    def builtin(cls, name: str) -> "Genotype":
        key = _builtin_key(name)
        if key not in BUILTINS:
            raise GenotypeError(f"unknown builtin genotype {name!r}; builtins: "
                                f"{', '.join(sorted(BUILTINS))} (and alias DARTS = DARTS_V2)")
        return BUILTINS[key]


def _cell_from_dict(c: Any, name: str) -> CellGenotype:
    where = f"{name} cell"
    if not isinstance(c, dict):
        raise GenotypeError(f"{where} must be an object {{\"nodes\": [...], \"concat\": [...]}}, "
                            f"got {type(c).__name__}")
    unknown = [k for k in c if k not in _CELL_KEYS]
    if unknown:
        raise GenotypeError(f"{where}: unknown key(s) {unknown}; allowed: {list(_CELL_KEYS)}")
    if "nodes" not in c:
        raise GenotypeError(f"{where}: missing 'nodes' (a list of 4 lists of [op, input] pairs)")
    nodes, concat = c["nodes"], c.get("concat", [2, 3, 4, 5])
    for key, value in (("nodes", nodes), ("concat", concat)):
        if not isinstance(value, list):
            raise GenotypeError(f"{where}: {key!r} must be a list, got {type(value).__name__}")
    return CellGenotype(nodes, concat)    # element shapes and types: CellGenotype.validate


# -------------------------------------------------------------------- DARTS string parser
_DARTS_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
_MAX_RANGE = 64
_NOT_DARTS = ("not a DARTS genotype string: expected Genotype(normal=[('sep_conv_3x3', 0), ...], "
              "normal_concat=[2, 3, 4, 5], reduce=[...], reduce_concat=[2, 3, 4, 5])")


def _literal(node: ast.AST) -> Any:
    """Value of a literal syntax node; anything that would need evaluation is refused."""
    if isinstance(node, ast.Constant) and (isinstance(node.value, str) or _is_int(node.value)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) \
            and isinstance(node.operand, ast.Constant) and _is_int(node.operand.value):
        return -node.operand.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" \
            and not node.keywords and 1 <= len(node.args) <= 2:
        bounds = [_literal(a) for a in node.args]
        lo, hi = ([0] + bounds)[-2:]
        # Bound the size before building the list: range(0, 10**12) must not allocate.
        if _is_int(lo) and _is_int(hi) and hi - lo <= _MAX_RANGE:
            return list(range(lo, hi))
    where = f" at column {node.col_offset + 1}" if hasattr(node, "col_offset") else ""
    raise GenotypeError(f"DARTS string: unsupported expression{where}: only string and integer "
                        f"literals, lists, tuples and range(a, b) are allowed")


def _parse_darts(text: Any) -> dict:
    if not isinstance(text, str):
        raise GenotypeError(f"a DARTS string must be text, got {type(text).__name__}")
    src = text.strip()
    # Log lines ("... genotype = Genotype(...)") carry a prefix; the call is what counts.
    start = src.find("Genotype(")
    if start > 0:
        src = src[start:]
    elif start < 0 and re.match(r"[A-Za-z_]\w*\s*=[^=]", src):
        src = f"Genotype({src})"          # a bare "normal=[...], reduce=[...]" keyword list
    elif start < 0:
        raise GenotypeError(_NOT_DARTS)
    try:
        with warnings.catch_warnings():       # e.g. SyntaxWarning for odd escapes
            warnings.simplefilter("ignore")
            tree = ast.parse(src, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise GenotypeError(f"{_NOT_DARTS} ({getattr(e, 'msg', type(e).__name__)})") from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
            and call.func.id == "Genotype"):
        raise GenotypeError(_NOT_DARTS)
    if len(call.args) > len(_DARTS_FIELDS):
        raise GenotypeError(f"DARTS string: Genotype takes at most {len(_DARTS_FIELDS)} "
                            f"arguments {_DARTS_FIELDS}")
    try:
        fields = {name: _literal(a) for name, a in zip(_DARTS_FIELDS, call.args)}
        for kw in call.keywords:
            if kw.arg not in _DARTS_FIELDS:
                raise GenotypeError(f"DARTS string: unknown field {kw.arg!r}; fields are "
                                    f"{', '.join(_DARTS_FIELDS)}")
            if kw.arg in fields:
                raise GenotypeError(f"DARTS string: field {kw.arg!r} given twice")
            fields[kw.arg] = _literal(kw.value)
    except RecursionError:
        raise GenotypeError("DARTS string: nested too deeply") from None
    missing = [k for k in ("normal", "reduce") if k not in fields]
    if missing:
        raise GenotypeError(f"DARTS string: missing field(s) {missing}")
    return fields


def _is_pair(x: Any) -> bool:
    return isinstance(x, list) and len(x) == 2 and isinstance(x[0], str)


def _group_pairs(pairs: Any, name: str) -> list:
    """Published strings list pairs flat, two per node; some list them grouped per node."""
    if not isinstance(pairs, list):
        raise GenotypeError(f"DARTS string: {name} must be a list of (op, input) pairs")
    if all(_is_pair(p) for p in pairs):
        if len(pairs) % 2:
            raise GenotypeError(f"DARTS string: {name} has {len(pairs)} (op, input) pairs; "
                                f"the format takes two per node, so the count must be even")
        return [pairs[i:i + 2] for i in range(0, len(pairs), 2)]
    if all(isinstance(n, list) and n and all(_is_pair(p) for p in n) for n in pairs):
        return pairs
    raise GenotypeError(f"DARTS string: {name} must be a list of (op, input) pairs such as "
                        f"('sep_conv_3x3', 0)")


# -------------------------------------------------------------------- published cells
def _pub(normal: str, reduce: str, source: str, concat=(2, 3, 4, 5)) -> Genotype:
    # Compact "op:input" notation, two pairs per node, as in the papers' figures.
    def cell(s):
        pairs = [(op, int(i)) for op, i in (t.split(":") for t in s.split())]
        return CellGenotype([pairs[k:k + 2] for k in range(0, len(pairs), 2)], concat)
    return Genotype(cell(normal), cell(reduce), "standard", {"source": source}).validate()


BUILTINS: dict[str, Genotype] = {
    "DARTS_V1": _pub(
        "sep_conv_3x3:1 sep_conv_3x3:0 skip_connect:0 sep_conv_3x3:1 "
        "skip_connect:0 sep_conv_3x3:1 sep_conv_3x3:0 skip_connect:2",
        "max_pool_3x3:0 max_pool_3x3:1 skip_connect:2 max_pool_3x3:0 "
        "max_pool_3x3:0 skip_connect:2 skip_connect:2 avg_pool_3x3:0",
        "DARTS (Liu et al., ICLR 2019), first order, CIFAR-10"),
    "DARTS_V2": _pub(
        "sep_conv_3x3:0 sep_conv_3x3:1 sep_conv_3x3:0 sep_conv_3x3:1 "
        "sep_conv_3x3:1 skip_connect:0 skip_connect:0 dil_conv_3x3:2",
        "max_pool_3x3:0 max_pool_3x3:1 skip_connect:2 max_pool_3x3:1 "
        "max_pool_3x3:0 skip_connect:2 skip_connect:2 max_pool_3x3:1",
        "DARTS (Liu et al., ICLR 2019), second order, CIFAR-10"),
    "PC_DARTS": _pub(
        "sep_conv_3x3:1 skip_connect:0 sep_conv_3x3:0 dil_conv_3x3:1 "
        "sep_conv_5x5:0 sep_conv_3x3:1 avg_pool_3x3:0 dil_conv_3x3:1",
        "sep_conv_5x5:1 max_pool_3x3:0 sep_conv_5x5:1 sep_conv_5x5:2 "
        "sep_conv_3x3:0 sep_conv_3x3:3 sep_conv_3x3:1 sep_conv_3x3:2",
        "PC-DARTS (Xu et al., ICLR 2020), CIFAR-10"),
    "PDARTS": _pub(
        "skip_connect:0 dil_conv_3x3:1 skip_connect:0 sep_conv_3x3:1 "
        "sep_conv_3x3:1 sep_conv_3x3:3 sep_conv_3x3:0 dil_conv_5x5:4",
        "avg_pool_3x3:0 sep_conv_5x5:1 sep_conv_3x3:0 dil_conv_5x5:2 "
        "max_pool_3x3:0 dil_conv_3x3:1 dil_conv_3x3:1 dil_conv_5x5:3",
        "P-DARTS (Chen et al., ICCV 2019), CIFAR-10"),
}
_ALIASES = {"DARTS": "DARTS_V2", "PCDARTS": "PC_DARTS", "P_DARTS": "PDARTS"}


def _builtin_key(name: str) -> str:
    key = str(name).strip().upper().replace("-", "_")
    return _ALIASES.get(key, key)


# -------------------------------------------------------------------- loading
def _from_text(text: str) -> Genotype:
    # JSON is an object; anything else may only be a DARTS string.
    if text.lstrip().startswith("{"):
        return Genotype.from_json(text)
    return Genotype.from_darts_string(text)


def load_genotype(spec: str | os.PathLike) -> Genotype:
    """Load a genotype from a JSON file, a text file holding a DARTS string, a run folder
    holding genotype.json, a builtin name (case-insensitive) or literal JSON / DARTS text."""
    if isinstance(spec, Genotype):
        return spec.validate()
    if not isinstance(spec, (str, os.PathLike)):
        raise GenotypeError(f"cannot load a genotype from {type(spec).__name__}")
    path = os.fspath(spec)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("{") or "Genotype(" in text or text.startswith("normal="):
            return _from_text(text)
        if _builtin_key(text) in BUILTINS and not os.path.exists(path):   # a file wins
            return BUILTINS[_builtin_key(text)]
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "genotype.json")):
        path = os.path.join(path, "genotype.json")
    if not os.path.isfile(path):
        raise GenotypeError(
            f"cannot load genotype {path!r}: no such file, and not a builtin name "
            f"({', '.join(sorted(BUILTINS))}, DARTS), JSON text or a DARTS Genotype(...) string")
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        return Genotype.from_json(text) if path.lower().endswith(".json") else _from_text(text)
    except UnicodeDecodeError as e:
        raise GenotypeError(f"genotype file {path}: not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise GenotypeError(f"genotype file {path}: cannot read ({e.strerror})") from None
    except GenotypeError as e:
        raise GenotypeError(f"genotype file {path}: {e}") from None

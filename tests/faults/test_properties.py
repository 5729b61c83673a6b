"""Property tests. The genotype readers are total: any input parses to a valid genotype or
raises GenotypeError with a one-line message; nothing else (KeyError, TypeError, IndexError,
RecursionError...) escapes. DST and top-2 derivation always give valid cells, whatever
alpha, beta and the temperature are (huge magnitudes, ties, tiny tau)."""
import json
import math
import string

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entrannas.arch import NUM_NODES, derive_dst, derive_top2, dst_coefficients
from entrannas.genotype import BUILTINS, FORMAT, Genotype, GenotypeError, load_genotype
from entrannas.ops import SPACES
from entrannas.supernet import SuperNet

from helpers import DST

CASES = {}   # examples run per property (printed at the end of the module; see README)
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                      HealthCheck.filter_too_much])


def count(name, outcome="run"):
    CASES.setdefault(name, {})
    CASES[name][outcome] = CASES[name].get(outcome, 0) + 1


def total(fn, *args) -> str:
    """fn(*args) returns a valid genotype or raises a one-line GenotypeError."""
    try:
        g = fn(*args)
    except GenotypeError as e:
        msg = str(e)
        assert msg and "\n" not in msg, repr(msg)
        return "refused"
    assert isinstance(g, Genotype)
    g.validate()
    assert Genotype.from_json(g.to_json()) == g
    return "parsed"


# ------------------------------------------------------------------ strategies
OPS = sorted({op for ops in SPACES.values() for op in ops}) + ["bogus", "", "Sep_Conv_3x3"]
KEYS = ["format", "space", "normal", "reduce", "nodes", "concat", "meta", "seed"]
scalars = (st.none() | st.booleans() | st.integers(-3, 8) | st.integers() | st.floats()
           | st.text(max_size=12) | st.sampled_from(OPS + KEYS + [FORMAT, "standard", "extended"]))
json_like = st.recursive(scalars, lambda c: st.lists(c, max_size=6)
                         | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), c, max_size=6),
                         max_leaves=40)
VALID = [g.to_dict() for g in (*BUILTINS.values(), DST)]


@st.composite
def mutated_genotype(draw):
    """A valid genotype dict with 1-4 edits at random places: a value replaced (by another
    op, an index off by a little or a lot, a JSON-like value), a key or item removed, an item
    duplicated, a value wrapped in a list."""
    d = json.loads(json.dumps(draw(st.sampled_from(VALID))))
    for _ in range(draw(st.integers(1, 4))):
        # Walk down to a random container.
        parent, key = None, None
        node = d
        while isinstance(node, (dict, list)) and node and draw(st.booleans()):
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            parent, key = node, draw(st.sampled_from(keys))
            node = node[key]
        if parent is None:
            continue
        value = parent[key]
        edit = draw(st.sampled_from(["replace", "op", "shift", "delete", "duplicate", "wrap", "json"]))
        if edit == "op":
            parent[key] = draw(st.sampled_from(OPS))
        elif edit == "shift" and isinstance(value, int) and not isinstance(value, bool):
            parent[key] = value + draw(st.sampled_from([-10**20, -3, -1, 1, 2, 5, 10**20]))
        elif edit == "delete":
            del parent[key]
        elif edit == "duplicate" and isinstance(parent, list):
            parent.insert(key, json.loads(json.dumps(value)))
        elif edit == "wrap":
            parent[key] = [value]
        elif edit == "json":
            parent[key] = draw(json_like)
        else:
            parent[key] = draw(scalars)
    return d


def darts_text(g: Genotype) -> str:
    return g.to_darts_string()


@st.composite
def edited_text(draw, texts):
    """A valid text with a few characters deleted, inserted or replaced."""
    text = draw(st.sampled_from(texts))
    # Any character a text file can hold: not a lone surrogate, which UTF-8 cannot encode
    # (arbitrary bytes come from the binary strategy beside this one).
    alphabet = st.sampled_from(list("()[]{},'\"=:0123456789 _-+*.\\\n") + list(string.ascii_letters)) | \
        st.characters(exclude_categories=("Cs",))
    for _ in range(draw(st.integers(1, 5))):
        i = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["delete", "insert", "replace"]))
        c = draw(alphabet)
        text = text[:i] + ("" if edit == "delete" else c) + text[i + (edit != "insert"):]
    return text


DARTS_TEXTS = [darts_text(g) for g in BUILTINS.values()] + [
    "Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1)] * 4, reduce=[], normal_concat=range(2, 6))"]
JSON_TEXTS = [json.dumps(v) for v in VALID]


# ------------------------------------------------------------------ genotype readers
@settings(max_examples=300, **SETTINGS)
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_from_json_on_any_text(text):
    count("from_json: arbitrary text or bytes", total(Genotype.from_json, text))


@settings(max_examples=300, **SETTINGS)
@given(json_like)
def test_from_dict_on_any_json_like_value(d):
    count("from_dict / from_json: arbitrary JSON-like values", total(Genotype.from_dict, d))
    try:
        text = json.dumps(d, allow_nan=True)
    except (ValueError, RecursionError):
        return
    total(Genotype.from_json, text)


@settings(max_examples=400, **SETTINGS)
@given(mutated_genotype())
def test_mutated_genotypes(d):
    count("from_dict / from_json: mutations of valid genotypes", total(Genotype.from_dict, d))
    total(Genotype.from_json, json.dumps(d))


@settings(max_examples=300, **SETTINGS)
@given(edited_text(DARTS_TEXTS + JSON_TEXTS) | st.text(max_size=120))
def test_text_readers_on_edited_and_arbitrary_text(text):
    count("from_darts_string / load_genotype: edited and arbitrary text",
          total(Genotype.from_darts_string, text))
    if "\x00" not in text and len(text) < 255:   # load_genotype also takes a path or a name
        total(load_genotype, text)


def test_deep_nesting_is_refused():
    for text in ("[" * 100000, '{"normal":' * 50000, "Genotype(normal=" + "[" * 50000):
        assert total(Genotype.from_json if not text.startswith("Genotype") else Genotype.from_darts_string,
                     text) == "refused"
    deep = []
    for _ in range(5000):
        deep = [deep]
    assert total(Genotype.from_dict, {"normal": {"nodes": deep}, "reduce": {"nodes": deep}}) == "refused"


@pytest.fixture(scope="module")
def genotype_file(tmp_path_factory):
    return tmp_path_factory.mktemp("g")


@settings(max_examples=200, **SETTINGS)
@given(content=edited_text(JSON_TEXTS + DARTS_TEXTS).map(str.encode) | st.binary(max_size=300),
       suffix=st.sampled_from([".json", ".txt", ""]))
def test_load_genotype_on_any_file(genotype_file, content, suffix):
    path = genotype_file / f"g{suffix}"
    path.write_bytes(content)
    count("load_genotype: files with edited or arbitrary bytes", total(load_genotype, path))
    try:  # an error names the file
        load_genotype(path)
    except GenotypeError as e:
        assert str(path) in str(e)


# ------------------------------------------------------------------ derivation
F32_MAX = float(torch.finfo(torch.float32).max)
values = (st.sampled_from([0.0, 1.0, -1.0, 1e-30, 20.0, -20.0, 1e30, -1e30, F32_MAX, -F32_MAX])
          | st.floats(-F32_MAX, F32_MAX, allow_nan=False, allow_infinity=False, width=32)
          | st.floats(-50, 50, width=32))
taus = st.sampled_from([1.0, 5.0, 0.1, 1e-3, 1e-6, 1e-30, 100.0]) | st.floats(1e-6, 100.0)


def tensor(draw, n):
    # One value repeated (ties everywhere), or any values.
    if draw(st.booleans()) and draw(st.booleans()):
        return torch.full((n,), draw(values))
    return torch.tensor(draw(st.lists(values, min_size=n, max_size=n)), dtype=torch.float32)


@st.composite
def arch(draw, K):
    alpha = {t: tensor(draw, 14 * K).view(14, K) for t in ("normal", "reduce")}
    beta = {t: tensor(draw, NUM_NODES) for t in ("normal", "reduce")}
    return alpha, beta, draw(taus)


def assert_valid_cells(g: Genotype, space: str, top2: bool) -> None:
    g.validate()
    ops = set(SPACES[space]) - {"none"}
    for cell in (g.normal, g.reduce):
        assert len(cell.nodes) == NUM_NODES
        for m, node in enumerate(cell.nodes):
            assert node, "a node without inputs"
            assert all(0 <= i <= m + 1 and op in ops for op, i in node)
            if top2:
                assert len(node) == 2 and node[0][1] != node[1][1]


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return {m: SuperNet(method=m, C=4, layers=3, num_classes=10, in_channels=1) for m in ("dst", "entrannas")}


@settings(max_examples=300, **SETTINGS)
@given(arch(K=7))
def test_dst_derivation_always_gives_valid_cells(nets, a):
    count("DST derivation: random, extreme and tied alpha/beta/tau")
    alpha, beta, tau = a
    net = nets["dst"]
    for t in ("normal", "reduce"):
        q = dst_coefficients(alpha[t], beta[t], tau)
        assert torch.isfinite(q).all() and (q >= 0).all()
        sums = q.sum(-1)
        assert torch.allclose(sums[sums > 0], torch.ones_like(sums[sums > 0]), atol=1e-5)
        assert all(derive_dst(q))
        with torch.no_grad():
            net.alpha(t).copy_(alpha[t])
            net.beta(t).copy_(beta[t])
    net.tau = tau
    assert_valid_cells(net.genotype(), "standard", top2=False)


@settings(max_examples=200, **SETTINGS)
@given(arch(K=8))
def test_top2_derivation_always_gives_valid_cells(nets, a):
    count("top-2 derivation: random, extreme and tied alpha/tau")
    alpha, _, tau = a
    net = nets["entrannas"]
    for t in ("normal", "reduce"):
        with torch.no_grad():
            net.alpha(t).copy_(alpha[t])
    net.tau = tau
    assert all(len(node) == 2 for node in derive_top2(net.coefficients("normal"), net.none_index))
    assert_valid_cells(net.genotype(), "standard", top2=True)


def test_dst_threshold_saturation_keeps_the_strongest_input():
    """beta large enough that float32 sigmoid(beta) == 1: before the fix every node lost all
    of its inputs (and the forward crashed)."""
    alpha = torch.randn(14, 7, generator=torch.Generator().manual_seed(0))
    for b in (16.0, 17.0, 30.0, 1e30, F32_MAX):
        sel = derive_dst(dst_coefficients(alpha, torch.full((4,), b), 1.0))
        assert all(len(node) >= 1 for node in sel), b
    assert math.isfinite(dst_coefficients(alpha * 1e37, torch.zeros(4), 1e-3).sum().item())


def teardown_module(module):
    print("\nhypothesis cases run:", CASES)

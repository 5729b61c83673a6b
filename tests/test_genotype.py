import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entrannas.genotype import (BUILTINS, FORMAT, CellGenotype, Genotype, GenotypeError,
                                load_genotype)

# The published string of the DARTS (second order) CIFAR-10 cell, as printed in the paper's code.
DARTS_V2_STR = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
    "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
    "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=range(2, 6))")

SPEC_NORMAL = {"nodes": [[["sep_conv_3x3", 0], ["skip_connect", 1]],
                         [["sep_conv_3x3", 0], ["dil_conv_3x3", 2]],
                         [["max_pool_3x3", 1]],
                         [["sep_conv_5x5", 2], ["sep_conv_5x5", 3], ["skip_connect", 4]]],
               "concat": [2, 3, 4, 5]}
# DST: node 4 has three inputs, edge 0 -> 3 carries two ops, node 5 has one input.
DST_REDUCE = {"nodes": [[["max_pool_3x3", 0], ["max_pool_3x3", 1]],
                        [["sep_conv_3x3", 0], ["dil_conv_3x3", 0], ["skip_connect", 2]],
                        [["max_pool_3x3", 1], ["skip_connect", 2], ["avg_pool_3x3", 3]],
                        [["avg_pool_3x3", 3]]],
              "concat": [2, 3, 4, 5]}


def dst_dict():
    return {"format": FORMAT, "space": "standard", "normal": json.loads(json.dumps(SPEC_NORMAL)),
            "reduce": json.loads(json.dumps(DST_REDUCE)), "seed": 3, "epoch": 49}


def errmsg(d) -> str:
    with pytest.raises(GenotypeError) as e:
        Genotype.from_dict(d)
    return str(e.value)


# ------------------------------------------------------------------ round trips
@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtins_validate_and_roundtrip(name):
    g = BUILTINS[name].validate()
    assert Genotype.from_json(g.to_json()) == g
    assert Genotype.from_json(g.to_json(indent=2)).meta == g.meta
    assert Genotype.from_darts_string(g.to_darts_string()) == g
    assert g.normal.num_ops == 8 and g.reduce.num_ops == 8


def test_darts_v2_equals_published_string_and_aliases():
    parsed = Genotype.from_darts_string(DARTS_V2_STR)
    assert parsed == BUILTINS["DARTS_V2"]
    for name in ("DARTS_V2", "darts_v2", "DARTS", "darts", " Darts-V2 "):
        assert Genotype.builtin(name) == parsed
        assert load_genotype(name) == parsed
    assert load_genotype("pc_darts") == BUILTINS["PC_DARTS"]
    assert load_genotype("PDARTS") == BUILTINS["PDARTS"]
    with pytest.raises(GenotypeError, match="DARTS_V2"):
        Genotype.builtin("ENAS")


def test_darts_string_to_json_and_back():
    g = Genotype.from_darts_string(DARTS_V2_STR)
    d = json.loads(g.to_json())
    assert d["format"] == FORMAT and d["space"] == "standard"
    assert d["normal"]["nodes"][3] == [["skip_connect", 0], ["dil_conv_3x3", 2]]
    assert d["reduce"]["concat"] == [2, 3, 4, 5]
    assert Genotype.from_dict(d) == g


def test_darts_string_variants():
    g = BUILTINS["DARTS_V2"]
    body = DARTS_V2_STR[len("Genotype("):-1]
    assert Genotype.from_darts_string(body) == g                     # bare keyword list
    assert Genotype.from_darts_string("2019-01-01 genotype = " + DARTS_V2_STR) == g  # log line
    grouped = ("Genotype(normal=[[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], [('sep_conv_3x3', 0), "
               "('sep_conv_3x3', 1)], [('sep_conv_3x3', 1), ('skip_connect', 0)], [('skip_connect', 0),"
               " ('dil_conv_3x3', 2)]], normal_concat=range(2, 6), reduce=" + g.to_darts_string()
               .split("reduce=")[1])
    assert Genotype.from_darts_string(grouped) == g
    positional = "Genotype([%s], [2,3,4,5], [%s], [2,3,4,5])" % (
        body.split("normal=[")[1].split("]")[0], body.split("reduce=[")[1].split("]")[0])
    assert Genotype.from_darts_string(positional) == g


def test_extended_space_is_inferred_from_darts_string():
    s = BUILTINS["DARTS_V2"].to_darts_string().replace("('sep_conv_3x3', 0)", "('conv_1x3_3x1', 0)", 1)
    assert Genotype.from_darts_string(s).space == "extended"


def test_spec_example_and_meta():
    d = {"format": FORMAT, "space": "standard", "normal": SPEC_NORMAL, "reduce": SPEC_NORMAL,
         "search": {"seed": 1, "acc": 0.93}}
    g = Genotype.from_dict(d)
    assert g.normal.nodes[2] == (("max_pool_3x3", 1),)
    assert g.meta == {"search": {"seed": 1, "acc": 0.93}}
    assert g.to_dict() == d
    no_format = {k: v for k, v in d.items() if k not in ("format", "space")}
    assert Genotype.from_dict(no_format) == g                      # format, space optional
    assert g == Genotype(g.normal, g.reduce) and hash(g) == hash(Genotype(g.normal, g.reduce))


def test_dst_roundtrip_and_helpers():
    g = Genotype.from_dict(dst_dict())
    assert Genotype.from_json(g.to_json()) == g
    assert Genotype.from_json(g.to_json()).meta == {"seed": 3, "epoch": 49}
    assert g.reduce.num_ops == 9 and g.reduce.num_edges == 8
    assert (0, 3, "dil_conv_3x3") in g.reduce.edges() and (0, 3, "sep_conv_3x3") in g.reduce.edges()
    with pytest.raises(GenotypeError, match="exactly 2"):
        g.to_darts_string()


def test_cell_accepts_lists_and_range():
    c = CellGenotype([[["sep_conv_3x3", 0], ("skip_connect", 1)]] * 4, range(2, 6))
    assert c.nodes[0] == (("sep_conv_3x3", 0), ("skip_connect", 1)) and c.concat == (2, 3, 4, 5)
    hash(c)


# ------------------------------------------------------------------ validation messages
def with_node(m, node, cell="normal"):
    d = dst_dict()
    d[cell]["nodes"][m] = node
    return d


@pytest.mark.parametrize("d, needles", [
    (with_node(0, [["sep_conv_7x7", 0]]), ["unknown op 'sep_conv_7x7'", "valid ops", "sep_conv_3x3"]),
    (with_node(0, [["conv_3x3", 0]]), ["unknown op 'conv_3x3'", "extended"]),
    (with_node(1, [["none", 0]]), ["'none'", "node 3"]),
    (with_node(1, [["sep_conv_3x3", 3]]), ["input 3", "out of range", "0..2"]),
    (with_node(3, [["sep_conv_3x3", -1]], "reduce"), ["input -1", "out of range"]),
    (with_node(2, []), ["node 4", "no inputs"]),
    (with_node(0, [["sep_conv_3x3", "0"]]), ["input", "integer", "'0'"]),
    (with_node(0, [["sep_conv_3x3", True]]), ["integer"]),
    (with_node(0, [["sep_conv_3x3", 1.0]]), ["integer"]),
    (with_node(0, [[3, 0]]), ["op must be a string"]),
    (with_node(0, [["sep_conv_3x3", 0, 1]]), ["[op, input]"]),
    (with_node(0, "sep_conv_3x3"), ["node 2", "list"]),
    (with_node(1, [["sep_conv_3x3", 0], ["sep_conv_3x3", 0]]), ["duplicate", "'sep_conv_3x3', 0"]),
])
def test_validation_errors(d, needles):
    msg = errmsg(d)
    for needle in needles:
        assert needle in msg, msg


def test_node_count_and_concat_errors():
    d = dst_dict()
    d["normal"]["nodes"] = d["normal"]["nodes"][:3]
    assert "3 intermediate nodes" in errmsg(d) and "exactly 4" in errmsg(d)
    d = dst_dict()
    d["reduce"]["nodes"].append([["skip_connect", 0]])
    assert "5 intermediate nodes" in errmsg(d)
    for bad, needle in (([2, 3, 6], "concat index 6"), ([1, 2], "concat index 1"), ([], "non-empty"),
                        ([2, 2], "repeats"), ("2345", "concat"), ([2, "3"], "concat index '3'")):
        d = dst_dict()
        d["normal"]["concat"] = bad
        assert needle in errmsg(d), bad


def test_structural_errors():
    assert "unsupported format" in errmsg({**dst_dict(), "format": "darts/2"})
    assert "unknown space 'huge'" in errmsg({**dst_dict(), "space": "huge"})
    d = dst_dict()
    del d["reduce"]
    assert "missing" in errmsg(d) and "reduce" in errmsg(d)
    assert "must be an object" in errmsg({**dst_dict(), "normal": [1, 2]})
    d = dst_dict()
    d["normal"]["node"] = d["normal"].pop("nodes")
    assert "unknown key" in errmsg(d)
    assert "JSON object" in errmsg([1, 2, 3])
    with pytest.raises(GenotypeError, match="line 1"):
        Genotype.from_json('{"normal": }')


@pytest.mark.parametrize("text, needle", [
    ("Genotype(normal=[('sep_conv_3x3', 0)], reduce=[('sep_conv_3x3', 0)])", "must be even"),
    ("Genotype(normal=[], reduce=[], extra=[1])", "unknown field 'extra'"),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1)] * 4, reduce=[])", "unsupported expression"),
    ("Genotype(normal=[('a', 0)", "not a DARTS genotype string"),
    ("Genotype(normal=[1, 2], reduce=[])", "(op, input) pairs"),
    ("Genotype(normal=[], normal_concat=range(0, 10**12), reduce=[])", "unsupported expression"),
    ("hello world", "not a DARTS genotype string"),
    ("[1, 2, 3]", "not a DARTS genotype string"),
    ("", "not a DARTS genotype string"),
    ("normal=[], reduce=[]) + (1", "not a DARTS genotype string"),
    ("Genotype(normal=[('a', 0)], normal=[('a', 0)])", "given twice"),
])
def test_darts_string_errors(text, needle):
    with pytest.raises(GenotypeError) as e:
        Genotype.from_darts_string(text)
    assert needle in str(e.value), str(e.value)


def test_hostile_string_never_runs(tmp_path):
    target = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {target}')"
    for text in (payload, f"Genotype(normal={payload}, reduce=[])",
                 f"Genotype(normal=[('sep_conv_3x3', {payload})] * 8, reduce=[])",
                 f"normal=[], reduce=[], normal_concat={payload}",
                 f"Genotype(normal=[(lambda: {payload})()], reduce=[])"):
        with pytest.raises(GenotypeError):
            Genotype.from_darts_string(text)
        with pytest.raises(GenotypeError):
            load_genotype(text)
    f = tmp_path / "evil.txt"
    f.write_text(f"Genotype(normal={payload}, reduce=[])")
    with pytest.raises(GenotypeError, match="evil.txt"):
        load_genotype(f)
    assert not target.exists()


# ------------------------------------------------------------------ files
def test_load_genotype_sources(tmp_path):
    g = Genotype.from_dict(dst_dict())
    g.save(tmp_path / "genotype.json")
    assert load_genotype(tmp_path / "genotype.json") == g
    assert load_genotype(str(tmp_path / "genotype.json")).meta["seed"] == 3
    assert load_genotype(tmp_path) == g                          # a run folder
    (tmp_path / "darts.txt").write_text(DARTS_V2_STR + "\n")
    assert load_genotype(tmp_path / "darts.txt") == BUILTINS["DARTS_V2"]
    assert load_genotype(DARTS_V2_STR) == BUILTINS["DARTS_V2"]
    assert load_genotype(g.to_json()) == g


def test_load_genotype_errors_name_the_file(tmp_path):
    bad = tmp_path / "x" / "genotype.json"
    bad.parent.mkdir()
    bad.write_text('{\n  "space": "standard",\n  "normal": {} "reduce": {}\n}\n')
    with pytest.raises(GenotypeError) as e:
        load_genotype(bad)
    assert str(e.value) == f"genotype file {bad}: line 3: invalid JSON (Expecting ',' delimiter)"
    with pytest.raises(GenotypeError, match="no such file"):
        load_genotype(tmp_path / "missing.json")
    with pytest.raises(GenotypeError, match="not a builtin|no such file"):
        load_genotype("nonsense_name")
    binary = tmp_path / "g.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(GenotypeError, match="UTF-8"):
        load_genotype(binary)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(with_node(0, [["none", 0]])))
    with pytest.raises(GenotypeError, match=r"wrong\.json.*'none'"):
        load_genotype(wrong)


def test_save_is_atomic_and_leaves_no_temp(tmp_path):
    path = tmp_path / "genotype.json"
    BUILTINS["PDARTS"].save(path)
    first = path.read_text()
    Genotype.from_dict(dst_dict()).save(str(path))                # overwrite in place
    assert os.listdir(tmp_path) == ["genotype.json"]
    assert load_genotype(path) == Genotype.from_dict(dst_dict())
    assert path.read_text() != first and path.read_text().endswith("\n")
    unserialisable = Genotype(BUILTINS["PDARTS"].normal, BUILTINS["PDARTS"].reduce, meta={"x": object()})
    before = path.read_text()
    with pytest.raises(GenotypeError, match="JSON"):
        unserialisable.save(path)
    assert path.read_text() == before and os.listdir(tmp_path) == ["genotype.json"]


# ------------------------------------------------------------------ property tests
json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 8) | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.sampled_from(["sep_conv_3x3", "none", "skip_connect", "conv_3x3", "normal", "nodes"]),
    lambda c: st.lists(c, max_size=5) | st.dictionaries(
        st.sampled_from(["format", "space", "normal", "reduce", "nodes", "concat", "x"]) | st.text(max_size=4),
        c, max_size=5),
    max_leaves=30)
pair = st.lists(st.sampled_from(["sep_conv_3x3", "skip_connect", "none", "bogus", "max_pool_3x3"])
                | st.integers(-1, 6), min_size=2, max_size=2) | st.tuples(st.just("dil_conv_3x3"), st.integers(-1, 6)).map(list)
good_pair = st.tuples(st.sampled_from(["sep_conv_3x3", "skip_connect", "max_pool_3x3"]),
                      st.integers(0, 1)).map(list)
good_nodes = st.lists(st.lists(good_pair, min_size=1, max_size=3, unique_by=tuple), min_size=4, max_size=4)
near_cell = st.fixed_dictionaries({"nodes": good_nodes | st.lists(st.lists(pair, max_size=4), min_size=3,
                                                                  max_size=5)},
                                  optional={"concat": st.lists(st.integers(0, 6), max_size=5)})
near_genotype = st.fixed_dictionaries({"normal": near_cell, "reduce": near_cell},
                                      optional={"space": st.sampled_from(["standard", "extended", "x"]),
                                                "format": st.sampled_from([FORMAT, "other"])})


def check(fn, arg):
    try:
        g = fn(arg)
    except GenotypeError:
        return
    assert isinstance(g, Genotype)
    assert Genotype.from_json(g.to_json()) == g


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_like | near_genotype)
def test_from_dict_total(d):
    check(Genotype.from_dict, d)
    check(Genotype.from_json, json.dumps(d))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60) | json_like.map(lambda d: f"Genotype(normal={d!r}, reduce={d!r})"))
def test_text_parsers_total(text):
    check(Genotype.from_darts_string, text)
    check(Genotype.from_json, text)

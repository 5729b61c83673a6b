"""A truncated or corrupted checkpoint, genotype JSON or config YAML given to the command line
gets one line on stderr naming the file, exit code 2, and no file in the run folder changes.
Pickled code in a checkpoint or YAML is refused without being run."""
import json
import os
import pickle
import random
import shutil

import pytest
import torch
import yaml

from entrannas.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from entrannas.cli import main
from entrannas.config import load_config, to_dict

from .conftest import _equal, cli, one_line, snapshot

SEED = 1234
COUNTS = {}   # corrupt inputs tried, by family (printed at the end of the module; see README)


def refused(capsys, argv, *needles) -> str:
    """The CLI exits 2 with exactly one stderr line (no traceback) mentioning every needle."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2, (rc, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert str(n) in err, err
    return err


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------ checkpoints, byte level
def byte_corruptions(data: bytes, rng: random.Random) -> list[tuple[str, bytes]]:
    """Empty, truncated at several offsets, garbage, and damaged archives."""
    n = len(data)
    cases = [("empty", b"")]
    for cut in sorted({1, 10, 100, 1000, n // 4, n // 2, 3 * n // 4, n - 100, n - 22, n - 1}):
        cases.append((f"truncated at {cut}", data[:cut]))
    cases += [("random bytes", rng.randbytes(n)), ("short random bytes", rng.randbytes(64)),
              ("zip magic then garbage", b"PK\x03\x04" + rng.randbytes(500)),
              ("text", b"this is not a checkpoint\n"), ("json", b'{"format": "entrannas-checkpoint/1"}'),
              ("zeroed middle", data[: n // 3] + bytes(n // 3) + data[2 * n // 3:]),
              ("a zip of something else", _zip_of(b"hello"))]
    return cases


def _zip_of(content: bytes) -> bytes:
    import io
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", content)
    return buf.getvalue()


def flipped(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return bytes(b)


def test_every_flipped_bit_is_refused_or_harmless(search_ref):
    """torch.load does not check CRCs: before the fix a flipped bit in a tensor loaded as a
    silently different weight. Now every single-bit flip is refused, or (headers, padding)
    loads exactly the original."""
    ref, _ = search_ref
    path = ref.parent / "flip" / "checkpoint.pt"
    path.parent.mkdir()
    data = (ref / "checkpoint.pt").read_bytes()
    original = load_checkpoint(ref / "checkpoint.pt")
    rng = random.Random(SEED)
    outcome = {"refused": 0, "harmless": 0}
    # Bytes after the archive are not part of it (zip readers find the end record).
    extra = [data + rng.randbytes(100), data + data]
    for i in range(200 + len(extra)):
        path.write_bytes(flipped(data, rng) if i < 200 else extra[i - 200])
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            assert str(path) in str(e) and "\n" not in str(e)
            outcome["refused"] += 1
        else:
            assert _equal(state, original), "a flipped bit changed the checkpoint's content silently"
            outcome["harmless"] += 1
    COUNTS["checkpoint bit flips (library)"] = outcome
    assert outcome["refused"] > 100


@pytest.mark.parametrize("kind", ["search", "train", "child"])
def test_damaged_checkpoint_file(capsys, tmp_path, search_ref, train_ref, kind):
    ref = (train_ref if kind == "train" else search_ref)[0]
    run = copy_run(ref, tmp_path / "run")
    ckpt = run / "checkpoint.pt"
    data = ckpt.read_bytes()
    rng = random.Random(SEED)
    cases = byte_corruptions(data, rng)
    while len(cases) < 40:   # single-bit flips that the check catches
        bad = flipped(data, rng)
        ckpt.write_bytes(bad)
        try:
            load_checkpoint(ckpt)
        except CheckpointError:
            cases.append(("bit flip", bad))
    argv = ["child", run] if kind == "child" else [kind, "--resume", run]
    for name, bad in cases:
        ckpt.write_bytes(bad)
        before = snapshot(run)
        err = refused(capsys, argv, ckpt, "restore it from a backup")
        assert ("corrupt" if name != "empty" else "empty") in err, err
        assert snapshot(run) == before, name
    COUNTS[f"damaged checkpoint files ({kind})"] = len(cases)


# ------------------------------------------------------------------ checkpoints, content level
def content_corruptions(state: dict, kind: str) -> list[tuple[str, object, str]]:
    """(name, what to write, a word the message must contain): valid archives whose content
    a resume cannot use."""
    opt = "w_opt" if kind == "search" else "opt"
    fields = ["config", "epoch", "step", "partial", "elapsed", "net", "genotype", opt]
    fields += ["a_opt"] if kind == "search" else ["rng"]
    cases = [("plain tensor", torch.zeros(3), "not an entrannas checkpoint"),
             ("no format", {k: v for k, v in state.items() if k != "format"}, "not an entrannas checkpoint"),
             ("other format", {**state, "format": "entrannas-checkpoint/0"}, "not an entrannas checkpoint"),
             ("other kind", {**state, "kind": "search" if kind == "train" else "train"}, "--resume")]
    cases += [(f"no {f}", {k: v for k, v in state.items() if k != f}, repr(f)) for f in fields]
    first = next(iter(state["net"]))
    wrong = {"epoch": ["1", -1, True, 1.5, None], "step": [-3, "0", [0]], "partial": [[1, 2], ["a", 1, 2], 5],
             "elapsed": ["soon", None], "net": [[1, 2], {first: 1.0}, {1: torch.zeros(1)}],
             opt: [{"state": []}, [], {"param_groups": 3, "state": {}}],
             "config": ["fmnist", {"optim": {"lr": "fast"}}, {"bogus": 1}, {"optim": {"lr": float("inf")}}],
             "genotype": [None, "DARTS_V2"]}
    if kind == "train":
        wrong["genotype"].append({"normal": {"nodes": [[["none", 0]]] * 4}, "reduce": {"nodes": []}})
        wrong["rng"] = [{"torch": torch.zeros(3)}, {}, torch.zeros(3, dtype=torch.uint8)]
    for f, values in wrong.items():
        cases += [(f"{f}={v!r:.40}", {**state, f: v}, f) for v in values]
    # Right types, but not the network its config builds.
    net = dict(state["net"])
    cases.append(("net lacks a weight", {**state, "net": {k: v for k, v in net.items() if k != first}},
                  "do not fit"))
    cases.append(("net weight of another shape", {**state, "net": {**net, first: torch.zeros(2, 2)}}, "do not fit"))
    cases.append(("optimizer of another net", {**state, opt: {"state": {}, "param_groups": []}}, "do not fit"))
    if kind == "train":
        cases.append(("generator state of another length",
                      {**state, "rng": {"torch": torch.zeros(7, dtype=torch.uint8)}}, "do not fit"))
    return cases


@pytest.mark.parametrize("kind", ["search", "train"])
def test_checkpoint_with_unusable_content(capsys, tmp_path, search_ref, train_ref, kind):
    ref = (search_ref if kind == "search" else train_ref)[0]
    run = copy_run(ref, tmp_path / "run")
    ckpt = run / "checkpoint.pt"
    state = load_checkpoint(ckpt)
    state.pop("format")
    cases = content_corruptions(state, kind)
    for name, content, needle in cases:
        if isinstance(content, dict) and "format" not in content and name != "no format":
            save_checkpoint(ckpt, content)
        else:
            torch.save(content, ckpt)
        before = snapshot(run)
        err = refused(capsys, [kind, "--resume", run], needle)
        assert str(run) in err, (name, err)
        assert snapshot(run) == before, name
    COUNTS[f"checkpoints with unusable content ({kind})"] = len(cases)


class _Payload:
    """Unpickling it would run `call(*args)`."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def payloads(marker):
    return [_Payload(os.system, f"touch {marker}"),
            _Payload(exec, f"open({str(marker)!r}, 'w').close()"),
            _Payload(shutil.copyfile, os.devnull, str(marker))]


@pytest.mark.parametrize("kind", ["search", "train", "child"])
def test_checkpoint_carrying_code_is_refused_and_not_run(capsys, tmp_path, search_ref, train_ref, kind):
    ref = (train_ref if kind == "train" else search_ref)[0]
    run = copy_run(ref, tmp_path / "run")
    ckpt, marker = run / "checkpoint.pt", tmp_path / "pwned"
    state = load_checkpoint(ckpt)
    argv = ["child", run] if kind == "child" else [kind, "--resume", run]
    tried = 0
    for payload in payloads(marker):
        for build, needle in ((lambda: torch.save({**state, "genotype": payload}, ckpt), "refused"),
                              (lambda: torch.save({**state, "net": {"w": payload}}, ckpt), "refused"),
                              (lambda: ckpt.write_bytes(pickle.dumps(payload)), "not a checkpoint")):  # bare pickle
            build()
            before = snapshot(run)
            refused(capsys, argv, ckpt, needle)
            assert not marker.exists(), "unpickling ran code"
            assert snapshot(run) == before
            tried += 1
    COUNTS[f"checkpoints carrying code ({kind})"] = tried
    if kind == "search":  # and once as users run it, in its own process
        torch.save({**state, "genotype": payloads(marker)[0]}, ckpt)
        before = snapshot(run)
        p = cli(argv)
        assert p.returncode == 2 and not marker.exists() and snapshot(run) == before
        one_line(p.stderr, ckpt, "refused")


# ------------------------------------------------------------------ genotype JSON
def genotype_corruptions(text: str, rng: random.Random) -> list[tuple[str, bytes]]:
    data = text.encode()
    n = len(data)
    cases = [("empty", b""), ("whitespace", b" \n\t"), ("binary", rng.randbytes(300)),
             ("latin-1", '{"normal": "caf\xe9"}'.encode("latin-1")), ("utf-16", text.encode("utf-16")),
             ("nul bytes", b"\x00" * 50), ("deep nesting", b"[" * 100000), ("deep object", b'{"a":' * 50000)]
    cases += [(f"truncated at {c}", data[:c]) for c in sorted({1, 2, 10, n // 4, n // 2, 3 * n // 4, n - 2})]
    wrong = ["[]", '"DARTS_V2"', "3", "null", "true", "NaN", '{"normal": 5, "reduce": 5}',
             '{"normal": {"nodes": "abc"}, "reduce": {"nodes": []}}',
             '{"normal": {"nodes": {"0": 1}}, "reduce": {"nodes": []}}',
             '{"normal": {"nodes": [[["sep_conv_3x3", 1.0]]]}, "reduce": {"nodes": []}}',
             '{"normal": {"nodes": [["sep_conv_3x3 0"]]}, "reduce": {"nodes": []}}',
             '{"format": 7, "normal": {}, "reduce": {}}', '{"format": "entrannas-genotype/1", "space": 3}',
             '{"normal": {"nodes": [], "extra": 1}, "reduce": {"nodes": []}}', '{"normal": null, "reduce": null}']
    def mutate(path, value):
        d = json.loads(text)
        node = d
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
        return json.dumps(d).encode()
    muts = [(("normal", "nodes", 0, 0, 1), "1"), (("normal", "nodes", 0, 0, 1), 10**30),
            (("normal", "nodes", 0, 0, 1), -1), (("normal", "nodes", 0, 0, 1), 2),
            (("normal", "nodes", 0, 0, 0), 3), (("normal", "nodes", 0, 0, 0), "none"),
            (("normal", "nodes", 0, 0, 0), "conv_1x7_7x1"), (("normal", "nodes", 0), []),
            (("normal", "nodes", 0, 0), ["sep_conv_3x3"]), (("normal", "concat"), [2, 2]),
            (("normal", "concat"), ["2"]), (("normal", "concat"), 5), (("reduce",), []), (("space",), "imagenet")]
    assert json.loads(text)["normal"]["nodes"][0][0] == ["sep_conv_3x3", 0]
    return ([(n, c) for n, c in cases] + [(w, w.encode()) for w in wrong]
            + [(f"{'.'.join(map(str, p))}={v!r}", mutate(p, v)) for p, v in muts])


def test_damaged_genotype_json(capsys, tmp_path, dst_genotype):
    """plot, profile and train refuse each file with one line naming it; `train --out RUN` does
    not even create RUN; a search run folder whose genotype.json is damaged is left as it was."""
    rng = random.Random(SEED)
    cases = genotype_corruptions(dst_genotype.read_text(), rng)
    path = tmp_path / "g.json"
    run = tmp_path / "search-run"
    (run / "genotypes").mkdir(parents=True)
    for name, data in cases:
        path.write_bytes(data)
        (run / "genotype.json").write_bytes(data)
        before = snapshot(tmp_path)
        refused(capsys, ["profile", path, "--C", "4", "--layers", "3"], path)
        refused(capsys, ["plot", path, "-o", tmp_path / "cells.png"], path)
        refused(capsys, ["train", "--genotype", path, "-c", "fmnist-eval", "--out", tmp_path / "t"], path)
        refused(capsys, ["train", "--genotype", run, "-c", "fmnist-eval", "--out", tmp_path / "t"],
                run / "genotype.json")
        assert snapshot(tmp_path) == before, name
        assert not (tmp_path / "t").exists() and not (tmp_path / "cells.png").exists()
    COUNTS["damaged genotype files (x4 commands)"] = len(cases)


def test_flipped_genotype_bytes_are_refused_or_valid(capsys, tmp_path, dst_genotype):
    """A flipped byte in a genotype file may still be a valid genotype (an input 0 -> 1): then
    it is accepted; anything else is refused with one line, never a traceback."""
    from entrannas.genotype import load_genotype
    data = load_genotype(dst_genotype).to_json().encode()   # compact: flips hit digits and names
    rng = random.Random(SEED)
    path = tmp_path / "g.json"
    outcome = {"refused": 0, "valid": 0}
    for _ in range(100):
        path.write_bytes(flipped(data, rng))
        capsys.readouterr()
        rc = main(["profile", str(path), "--C", "4", "--layers", "3", "--json"])
        err = capsys.readouterr().err.strip()
        if rc == 2:
            assert len(err.splitlines()) == 1 and str(path) in err, err
            outcome["refused"] += 1
        else:
            assert rc == 0 and not err
            load_genotype(path).validate()
            outcome["valid"] += 1
    COUNTS["genotype bit flips (profile)"] = outcome
    assert outcome["refused"] > 0 and outcome["valid"] > 0


# ------------------------------------------------------------------ config YAML
def yaml_corruptions(rng: random.Random, marker) -> list[tuple[str, bytes]]:
    cases = [("binary", rng.randbytes(300)), ("latin-1", "data: {dataset: caf\xe9}".encode("latin-1")),
             ("nul bytes", b"\x00" * 20), ("tab indent", b"optim:\n\tepochs: 2\n"),
             ("unclosed flow", b"optim: {epochs: 3\n"), ("unclosed quote", b'run: {name: "abc}\n'),
             ("top-level list", b"- 1\n- 2\n"), ("top-level scalar", b"fmnist-quick\n"),
             ("deep nesting", b"[" * 100000), ("deep mapping", b"a: " * 5000 + b"1"),
             ("unhashable key", b"? [1, 2]\n: 3\n"),
             ("python object", f'optim: !!python/object/apply:os.system ["touch {marker}"]\n'.encode()),
             ("python name", b"optim: !!python/name:os.system\n"),
             ("alias bomb", b"a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
                            b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c]\n")]
    wrong = ["optim: 5", "optim: [1, 2]", "data: null", "optim: {epochs: ten}", "optim: {epochs: 2.5}",
             "optim: {lr: .inf}", "optim: {lr: .nan}", "optim: {lr: -0.1}", "optim: {lr: true}",
             "data: {limit: [1]}", "data: {split: 1.5}", "data: {dataset: mnist}", "model: {engine_cells: {a: 1}}",
             "model: {C: '8'}", "run: {seed: 1.5}", "optim: {arch_betas: [0.5]}", "kind: [1]", "kind: nonsense",
             "1: 2", "optim: {1: 2}", "run: {tensorboard: maybe}", "model: {layers: 2}"]
    return cases + [(w, (w + "\n").encode()) for w in wrong]


def test_damaged_config_yaml(capsys, tmp_path):
    marker = tmp_path / "pwned"
    rng = random.Random(SEED)
    cases = yaml_corruptions(rng, marker)
    path = tmp_path / "c.yaml"
    for name, data in cases:
        path.write_bytes(data)
        before = snapshot(tmp_path)
        refused(capsys, ["show-config", path], path if name not in ("kind: nonsense",) else "nonsense")
        refused(capsys, ["search", "-c", path, "--out", tmp_path / "run"])
        refused(capsys, ["train", "-c", path, "-g", "DARTS_V2", "--out", tmp_path / "run"])
        assert snapshot(tmp_path) == before, name
        assert not (tmp_path / "run").exists() and not marker.exists(), name
    COUNTS["damaged config files (x3 commands)"] = len(cases)


def test_truncated_or_flipped_config_is_refused_or_valid(capsys, tmp_path):
    """A cut or flipped byte may leave a valid config (a shorter file holds fewer keys): then
    it is accepted and shows; otherwise one line. Never a traceback."""
    text = yaml.safe_dump(to_dict(load_config("fmnist-quick", ["data.limit=96", "model.C=4"])), sort_keys=False)
    data = text.encode()
    rng = random.Random(SEED)
    variants = [data[:c] for c in range(0, len(data), max(len(data) // 40, 1))]
    variants += [flipped(data, rng) for _ in range(60)]
    path = tmp_path / "c.yaml"
    outcome = {"refused": 0, "valid": 0}
    for v in variants:
        path.write_bytes(v)
        capsys.readouterr()
        rc = main(["show-config", str(path)])
        out, err = capsys.readouterr()
        if rc == 2:
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
            outcome["refused"] += 1
        else:
            assert rc == 0 and not err.strip(), err
            load_config(str(path))  # what was shown is a valid config
            outcome["valid"] += 1
    COUNTS["config truncations and bit flips (show-config)"] = outcome
    assert outcome["refused"] > 0 and outcome["valid"] > 0


def teardown_module(module):
    print("\ncorrupt inputs tried:", COUNTS)

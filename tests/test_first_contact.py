"""What a new user meets first: every hint the tool prints names a flag or config key that
exists (and the command it suggests parses), `--data-dir` is `--set data.data_dir`, a start
that fails leaves no new files, and nothing shipped points to a document the user does not
have."""
import ast
import dataclasses
import re
import shlex
from pathlib import Path

import pytest

from entrannas.checkpoint import save_checkpoint
from entrannas.cli import build_parser, config_overrides, main
from entrannas.config import SearchConfig, SegmentConfig, TrainConfig, load_config
from helpers import fails_with_one_line

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "entrannas"
DATA_COMMANDS = {"search": ["search", "-c", "cifar10-entrannas"],
                 "train": ["train", "-c", "cifar10-eval", "-g", "DARTS_V2"],
                 "child": ["child", "RUN"],
                 "experiment": ["experiment", "consistency", "--scale", "paper"]}
NO_DOWNLOAD = ["--set", "data.download=false"]
FILE_SUFFIXES = {"pt", "onnx", "safetensors", "json", "yaml", "txt"}


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return parser, action.choices


def _flags() -> set[str]:
    parser, subs = _subparsers()
    flags = {o for a in parser._actions for o in a.option_strings}
    for sub in subs.values():
        flags |= {o for a in sub._actions for o in a.option_strings}
    return flags


def _keys() -> set[str]:
    """section.key of every search, train and segment config value."""
    return {f"{name}.{f.name}" for cfg in (SearchConfig(), TrainConfig(), SegmentConfig())
            for name, section in vars(cfg).items() if dataclasses.is_dataclass(section)
            for f in dataclasses.fields(section)}


def _message_strings(path: Path) -> list[str]:
    """The string constants of a module that are not docstrings: messages, hints, help."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_every_flag_and_key_a_message_names_exists():
    flags, keys = _flags(), _keys()
    named_flags, named_keys = {}, {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for text in _message_strings(path):
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text):
                named_flags.setdefault(flag, path.name)
            for key in re.findall(r"(?<![\w./])((?:data|model|optim|run)\.[a-z_]+)\b", text):
                if key.split(".")[1] not in FILE_SUFFIXES:  # model.onnx names a file, not a key
                    named_keys.setdefault(key, path.name)
    assert "--data-dir" in named_flags and "optim.lr" in named_keys  # the scan sees the hints
    assert {f: p for f, p in named_flags.items() if f not in flags} == {}
    assert {k: p for k, p in named_keys.items() if k not in keys} == {}


def _suggestions(argv: list[str], err: str) -> list[list[str]]:
    """The command forms a one-line hint suggests: every backticked `entrannas ...` command,
    and the command that failed with each flag the hint names set to a value."""
    forms = [shlex.split(c) for c in re.findall(r"`entrannas ([^`]*)`", err)]
    bare = re.sub(r"`[^`]*`", "", err)
    for flag, value in re.findall(r"(--[a-z][a-z-]*)(?: ([^\s,;:)]+))?", bare):
        if flag == "--resume":  # continues a run: it goes with no other flag
            forms.append([argv[0], "--resume", value or "RUN"])
        else:
            forms.append([*argv, flag, "VALUE" if not value or value.startswith("-") else value])
    return forms


def parses_and_sets(forms: list[list[str]]) -> None:
    parser = build_parser()
    for form in forms:
        args = parser.parse_args(form)  # SystemExit (a usage error) fails the test
        for flag in (a for a in form if a.startswith("--")):
            dest = flag[2:].replace("-", "_")
            dest = {"set": "overrides"}.get(dest, dest)
            assert getattr(args, dest, None) not in (None, False, []), (form, flag)


@pytest.mark.parametrize("command", ["search", "train", "experiment"])
def test_missing_cifar_names_data_dir_and_leaves_nothing(capsys, tmp_path, command):
    """The first thing most users try. The hint names --data-dir, which each data command
    has, and the failed start leaves no new file: not the run folder, not its parents."""
    empty = tmp_path / "no-cifar-here"
    empty.mkdir()
    out = tmp_path / "a" / "b" / "run"
    argv = [*DATA_COMMANDS[command], "--data-dir", str(empty), *NO_DOWNLOAD, "--out", str(out)]
    err = fails_with_one_line(capsys, argv, "CIFAR-10", "cifar-10-batches-py", "--data-dir", str(empty))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["no-cifar-here"]
    forms = _suggestions(argv, err)
    parses_and_sets(forms)
    assert any("--data-dir" in f for f in forms)


@pytest.mark.parametrize("dataset,preset,needle", [
    ("fashion-mnist", "fmnist-quick", "Fashion-MNIST"), ("imagenet", "imagenet-entrannas", "ImageNet")])
def test_other_missing_data_sets_name_data_dir(capsys, tmp_path, dataset, preset, needle):
    argv = ["search", "-c", preset, "--data-dir", str(tmp_path), *NO_DOWNLOAD, "--out", str(tmp_path / "run")]
    err = fails_with_one_line(capsys, argv, needle, "--data-dir")
    parses_and_sets(_suggestions(argv, err))
    assert list(tmp_path.iterdir()) == []


def test_every_data_command_takes_data_dir():
    parser = build_parser()
    for name, argv in DATA_COMMANDS.items():
        args = parser.parse_args([*argv, "--data-dir", "/data/odd: path [1]"])
        assert args.data_dir == "/data/odd: path [1]", name
        if name != "child":  # child passes it to child_accuracy(data_dir=...)
            assert config_overrides(args)[-1].startswith("data.data_dir=")
    # The shorthand is the override, for any path YAML would read as something else.
    for path in ("/data/odd: path [1]", "null", "123", "~/data"):
        args = parser.parse_args(["search", "-c", "fmnist-quick", "--set", "optim.lr=0.1", "--data-dir", path])
        cfg = load_config(args.config, config_overrides(args))
        assert cfg.data.data_dir == path and cfg.optim.lr == 0.1


def test_run_folder_hints_suggest_commands_that_parse(capsys, tmp_path):
    # A folder that holds a run: --resume it, or another --out.
    held = tmp_path / "held"
    held.mkdir()
    (held / "checkpoint.pt").write_bytes(b"x")
    argv = ["search", "-c", "fmnist-quick", "--out", str(held)]
    err = fails_with_one_line(capsys, argv, "--resume", "--out")
    parses_and_sets(_suggestions(argv, err))
    assert sorted(p.name for p in held.iterdir()) == ["checkpoint.pt"]
    # A run stopped before its first checkpoint: the command that starts it again.
    for kind, preset in (("search", "fmnist-quick"), ("train", "fmnist-eval")):
        early = tmp_path / f"early-{kind}"
        early.mkdir()
        main(["show-config", preset])
        text = capsys.readouterr().out
        (early / "config.yaml").write_text(text)
        argv = [kind, "--resume", str(early)]
        err = fails_with_one_line(capsys, argv, "before its first checkpoint", f"`entrannas {kind} ")
        forms = _suggestions(argv, err)
        parses_and_sets(forms)
        assert any(f[0] == kind and "--config" in f for f in forms)
    # The other kind of run: the command for it.
    other = tmp_path / "search-run"
    other.mkdir()
    save_checkpoint(other / "checkpoint.pt", {"kind": "search"})
    argv = ["train", "--resume", str(other)]
    err = fails_with_one_line(capsys, argv, f"`entrannas search --resume {other}`")
    parses_and_sets(_suggestions(argv, err))


def test_a_failed_start_keeps_what_was_there(capsys, tmp_path):
    """--out an existing folder: a failed start removes only what it added."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    fails_with_one_line(capsys, ["search", "-c", "cifar10-entrannas", "--data-dir", str(tmp_path / "none"),
                                 *NO_DOWNLOAD, "--out", str(out)], "--data-dir")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["mine", "notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"


def test_an_experiment_that_fails_at_its_first_sub_run_leaves_nothing(capsys, tmp_path):
    """It used to leave OUT/runs/engine-all/ with a config and an empty log."""
    out = tmp_path / "exp"
    for jobs in ("1", "2"):
        fails_with_one_line(capsys, ["experiment", "consistency", "--scale", "paper", "--jobs", jobs,
                                     "--data-dir", str(tmp_path), *NO_DOWNLOAD, "--out", str(out)],
                            "CIFAR-10", "--data-dir")
        assert list(tmp_path.iterdir()) == []


# Files users get: the package (code, presets, experiment settings), the README, the docs,
# the benchmark and results notes. None may send them to a document they do not have.
OUTSIDE = re.compile(r"\bSPEC\b|SPEC\.md|STYLE\.md|GUIDE\.md|\bshared/|/work/|\bbrief/")


def _shipped() -> list[Path]:
    files = [p for p in PACKAGE.rglob("*") if p.suffix in (".py", ".yaml", ".md", ".txt")]
    files += [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "benchmarks").rglob("*.md"),
              *(ROOT / "benchmarks").rglob("*.py"), *(ROOT / "results").rglob("*.md"),
              *(ROOT / "results").rglob("*.json")]
    return [p for p in files if p.is_file()]


def test_no_shipped_file_names_a_document_outside_the_repository():
    files = _shipped()
    assert len(files) > 40 and ROOT / "README.md" in files
    found = {str(p.relative_to(ROOT)): m.group(0) for p in files
             for m in [OUTSIDE.search(p.read_text(encoding="utf-8", errors="replace"))] if m}
    assert found == {}
    # And the command-line help: the text a user reads first.
    parser, subs = _subparsers()
    helps = [parser.format_help(), *(s.format_help() for s in subs.values())]
    assert not [h for h in helps if OUTSIDE.search(h)]

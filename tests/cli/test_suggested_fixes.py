"""Every fix an error message suggests is real: each `segladder CMD --option` it names is an option of that
command in the typer CLI, and each config key it tells the user to set (`data.skip_bad=true`) is a key of
the schema (segladder/config.py). A renamed option or key fails here instead of misleading a user.

The messages are every string in segladder/ (adjacent literals and f-strings joined as Python joins them;
a `{placeholder}` stands for each formatted value); tests/cli/test_bad_inputs.py runs the same check on the
messages its catalogue of bad inputs actually printed.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMMAND = re.compile(r"`segladder ([^`]*)`")
# A config setting suggested as KEY=VALUE; model.* keys are passed on to the model factory (any is allowed).
SETTING = re.compile(r"(?<![\w.{-])((?:data|optim|trainer|aux|boxes|distill|loss)(?:\.[A-Za-z_]\w*)+)=")


@cache
def cli():
    import typer

    from segladder.cli import _register
    from segladder.cli.app import app

    _register()
    return typer.main.get_command(app)


def _option_names(command) -> set[str]:
    names = {"--help"}
    for param in command.params:
        names.update(o for o in [*param.opts, *param.secondary_opts] if o.startswith("-"))
    return names


def check_command(text: str) -> str | None:
    """None when `text` (what follows `segladder `) names an existing command and only its options; else
    what is wrong. Placeholders (ROOT, {path}, ...) and values are not checked."""
    tokens = text.split()
    if any("|" in t for t in tokens):
        return None  # a synopsis of several commands (`segladder data check|prepare`), not a command line
    command, path = cli(), []
    while tokens and hasattr(command, "commands") and not tokens[0].startswith("-"):
        sub = command.commands.get(tokens[0])
        if sub is None:
            if path or not re.fullmatch(r"[a-z][a-z-]*", tokens[0]):
                break  # an argument (CONFIG, ROOT, {path}) of a command
            return f"`segladder {text}`: no command '{tokens[0]}'"
        command, path = sub, [*path, tokens.pop(0)]
    options = _option_names(command)
    for token in tokens:
        if token.startswith("--") and re.fullmatch(r"--[a-z][a-z0-9-]*(=.*)?", token):
            name = token.split("=", 1)[0]
            if name not in options:
                return f"`segladder {text}`: `segladder {' '.join(path)}` has no option {name}"
    return None


def check_setting(key: str) -> str | None:
    from segladder.config import ExperimentConfig, _section_model

    *section, field = key.split(".")
    model = _section_model(ExperimentConfig, tuple(section))
    if model is None or field not in model.model_fields:
        return f"config key {key} does not exist"
    return None


def problems_in(message: str) -> list[str]:
    """What is wrong with the commands and config settings `message` suggests (empty: all real)."""
    found = [check_command(m) for m in COMMAND.findall(message)]
    found += [check_setting(m) for m in SETTING.findall(message)]
    return [p for p in found if p]


def _render(node: ast.AST) -> str:
    if isinstance(node, ast.Constant):
        return str(node.value)
    if isinstance(node, ast.JoinedStr):
        return "".join(
            _render(v) if isinstance(v, ast.Constant) else "{" + ast.unparse(v.value) + "}"
            for v in node.values
        )
    return ""


def source_strings() -> list[tuple[str, str]]:
    """(file:line, text) of every string literal in segladder/, f-strings rendered with {placeholders}."""
    out = []
    for path in sorted((REPO / "segladder").rglob("*.py")):
        tree = ast.parse(path.read_text())
        parts = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        for node in ast.walk(tree):
            if id(node) in parts:
                continue
            if isinstance(node, ast.JoinedStr) or (
                isinstance(node, ast.Constant) and isinstance(node.value, str)
            ):
                text = _render(node)
                if "`segladder " in text or SETTING.search(text):
                    out.append((f"{path.relative_to(REPO)}:{node.lineno}", text))
    return out


@pytest.mark.medium
def test_every_suggested_command_option_and_config_key_exists():
    strings = source_strings()
    assert len(strings) > 40  # the scan finds the messages (a broken scan would pass vacuously)
    wrong = [f"{where}: {p}" for where, text in strings for p in problems_in(text)]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    "message, problem",
    [
        (
            "cut folds with `segladder data folds ROOT --k 5 --overwrite --out x.csv`",
            "has no option --overwrite",
        ),
        ("pass `segladder train CONFIG --fold 2 --foldz 3`", "has no option --foldz"),
        ("run `segladder trian CONFIG`", "no command 'trian'"),
        ("or set data.skipbad=true", "config key data.skipbad does not exist"),
        ("or --set data.augment.crop_sise=96", "config key data.augment.crop_sise does not exist"),
    ],
)
def test_the_check_catches_a_renamed_option_command_or_key(message, problem):
    found = problems_in(message)
    assert len(found) == 1 and problem in found[0], found


def test_the_check_passes_real_suggestions():
    assert not problems_in(
        "`segladder data folds ROOT --k 3 --pool train --out NEW.csv` and set data.folds=NEW.csv; "
        "`segladder train --resume RUN`, `segladder data prepare --skip-bad`, --set data.skip_bad=true, "
        "data.augment.crop_size=N, `segladder export onnx CKPT --out m.onnx --opset 17`"
    )

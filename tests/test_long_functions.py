"""scripts/long_functions.py lists the functions over --max lines (80 by default), and segladder/ has none."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "long_functions.py"

# Files other engineers were changing when the long functions were broken up (issue 34 item 4); their
# long functions are theirs to split.


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def function(name: str, lines: int, indent: str = "") -> str:
    """A function `lines` lines long, counting its `def` line."""
    body = "".join(f"{indent}    x{i} = {i}\n" for i in range(lines - 2))
    return f"{indent}def {name}():\n{body}{indent}    return 0\n"


@pytest.fixture
def tree(tmp_path) -> Path:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text(function("just_right", 80) + "\n\n" + function("too_long", 81))
    # A method, decorated: the decorator is not counted, the name is qualified by its class.
    (pkg / "sub" / "b.py").write_text(
        "import functools\n\n\nclass Thing:\n    @functools.cache\n" + function("method", 81, "    ")
    )
    (pkg / "c.py").write_text(function("short", 3))
    return pkg


def test_lists_only_functions_over_the_limit(tree):
    p = run(tree)
    assert p.returncode == 1, p.stderr
    lines = sorted(p.stdout.splitlines())
    assert len(lines) == 2, p.stdout
    assert lines[0].endswith("a.py:83 too_long 81") and Path(lines[0].split(":")[0]) == tree / "a.py"
    assert lines[1].endswith("b.py:6 Thing.method 81")
    assert "just_right" not in p.stdout and "short" not in p.stdout


def test_max_sets_the_limit(tree):
    p = run(tree, "--max", "81")
    assert (p.returncode, p.stdout) == (0, "")
    p = run(tree, "--max", "79")
    assert p.returncode == 1 and "just_right 80" in p.stdout and "short" not in p.stdout


def test_nested_functions_are_listed_and_count_towards_their_parent(tmp_path):
    (tmp_path / "n.py").write_text("def outer():\n" + function("inner", 81, "    ") + "    return inner\n")
    p = run(tmp_path)
    assert p.returncode == 1
    assert sorted(line.rsplit(" ", 2)[1:] for line in p.stdout.splitlines()) == [
        ["outer", "83"],
        ["outer.inner", "81"],
    ]


def test_bad_arguments_exit_2(tmp_path):
    assert run(tmp_path / "missing").returncode == 2
    assert run("--max", "0").returncode == 2


def test_segladder_has_no_long_function():
    p = run()
    assert (p.returncode, p.stdout) == (0, ""), p.stdout

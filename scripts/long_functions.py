"""Lists every function or method longer than --max lines (default 80) under the given folders (default segladder/).

    python scripts/long_functions.py                 # segladder/, 80 lines
    python scripts/long_functions.py --max 60 segladder/inference

A function's length runs from its `def` line to its last line, docstring, comments and blank lines included
(decorators are not counted); a nested function is listed on its own and also counts towards the one holding
it. Prints `path:line name length` for each, longest first, and exits 1 when any is listed, else 0.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MAX = 80


def functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, int, int]]:
    """(qualified name, first line, length in lines) of every function and method in `tree`, nested ones too."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{prefix}{node.name}"
            yield name, node.lineno, node.end_lineno - node.lineno + 1
            yield from functions(node, f"{name}.")
        elif isinstance(node, ast.ClassDef):
            yield from functions(node, f"{prefix}{node.name}.")
        else:
            yield from functions(node, prefix)


def long_functions(paths: list[Path], limit: int) -> list[tuple[str, int, str, int]]:
    """(path, line, name, length) of each function over `limit` lines in the .py files under `paths`."""
    found = []
    for top in paths:
        files = [top] if top.is_file() else sorted(top.rglob("*.py"))
        for path in files:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            found += [(str(shown), line, name, n) for name, line, n in functions(tree) if n > limit]
    return sorted(found, key=lambda f: (-f[3], f[0], f[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", type=Path, help="folders or .py files (default: segladder/)")
    ap.add_argument("--max", type=int, default=DEFAULT_MAX, help="longest allowed, in lines (default 80)")
    args = ap.parse_args(argv)
    if args.max < 1:
        ap.error(f"--max {args.max}: give a whole number of lines, 1 or more")
    paths = [p.resolve() for p in args.paths] or [ROOT / "segladder"]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        ap.error(f"no such file or folder: {', '.join(missing)}")
    found = long_functions(paths, args.max)
    for path, line, name, n in found:
        print(f"{path}:{line} {name} {n}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

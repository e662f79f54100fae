"""Pins every direct dependency of pyproject.toml to its floor, and lends the floor venv torch (`make test-lowest`).

    python scripts/lowest_constraints.py pins                      # name==floor lines for pip -c
    python scripts/lowest_constraints.py link torch torchvision --into .venv-lowest

`link` runs under the main venv's Python and hard-links the named distributions, with everything they require
that is not itself pinned, from that venv into the floor venv. A CUDA build of torch is several GB; a second
copy filled the CI machine's disk, while hard links cost nothing. pip in the floor venv sees them as installed
(their dist-info travels with them) and removes only its own links when it replaces one.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import shutil
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# torch and torchvision keep the build `make` installs (TORCH_SPEC): no CPU build of an older torch can be
# installed on the project's machines, which reach PyPI only (its older Linux wheels pull in gigabytes
# of CUDA). Their floor is exercised on the GPU machine by scripts/gpu_check.sh.
KEEP = {"torch", "torchvision"}
ROOT = Path(__file__).resolve().parents[1]


def lowest_pins(pyproject: Path, extras: tuple[str, ...] = ("dev",)) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project.get("optional-dependencies", {}).get(extra, [])
    pins = []
    for spec in specs:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(>=|==)\s*([^,;\s]+)\s*", spec)
        if m is None:
            raise SystemExit(f"{pyproject}: cannot read a floor from {spec!r}; write it as name>=version")
        name, _, version = m.groups()
        if name.lower() not in KEEP:
            pins.append(f"{name}=={version}")
    return pins


def closure(names: list[str], skip: set[str]) -> list[md.Distribution]:
    """The installed distributions `names` need, transitively and with extras, leaving out `skip`."""
    seen: dict[str, md.Distribution] = {}
    extras_seen: set[tuple[str, str]] = set()
    todo = [(canonicalize_name(n), "") for n in names]
    while todo:
        name, extra = todo.pop()
        if name in skip or (name, extra) in extras_seen:
            continue
        extras_seen.add((name, extra))
        try:
            dist = seen.get(name) or md.distribution(name)
        except md.PackageNotFoundError:
            raise SystemExit(f"{name} is not installed in {sys.prefix}; run `make setup` first") from None
        seen[name] = dist
        # torch names its CUDA libraries as extras of one package (cuda-toolkit[cublas,...]), so the
        # requirements behind each requested extra count as well as the plain ones.
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                child = canonicalize_name(req.name)
                todo += [(child, "")] + [(child, e) for e in req.extras]
    return list(seen.values())


def link_into(dists: list[md.Distribution], venv: Path) -> int:
    """Hard-links each distribution's files (those inside site-packages) into `venv`; returns the count."""
    (site,) = (venv / "lib").glob("python*/site-packages")
    count = 0
    for dist in dists:
        base = Path(dist.locate_file(""))
        for entry in dist.files or []:
            if entry.parts and entry.parts[0] == "..":  # console scripts: their shebang names the other venv
                continue
            src, dst = base / entry, site / entry
            if not src.is_file() or dst.exists():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:  # another filesystem: a copy still works, it only costs the space
                shutil.copy2(src, dst)
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("pins", help="print name==floor for every direct dependency but torch and torchvision")
    link = sub.add_parser("link", help="hard-link installed distributions into another venv")
    link.add_argument("names", nargs="+")
    link.add_argument("--into", type=Path, required=True)
    args = parser.parse_args()
    pins = lowest_pins(ROOT / "pyproject.toml")
    if args.command == "pins":
        print("\n".join(pins))
        return
    pinned = {canonicalize_name(p.split("==")[0]) for p in pins}
    dists = closure(args.names, skip=pinned)
    files = link_into(dists, args.into)
    names = ", ".join(sorted(d.metadata["Name"] for d in dists))
    print(f"linked {files} files of {len(dists)} distributions into {args.into}: {names}")


if __name__ == "__main__":
    main()

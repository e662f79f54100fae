"""Pins every direct dependency of pyproject.toml to the lowest version it allows (`make test-lowest`)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

# torch and torchvision keep the build `make` installs (TORCH_SPEC): no CPU build of an older torch can be
# installed on the project's machines, which reach PyPI only (its older Linux wheels pull in gigabytes
# of CUDA). Their floor is exercised on the GPU machine by scripts/gpu_check.sh.
KEEP = {"torch", "torchvision"}


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


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    print("\n".join(lowest_pins(root / "pyproject.toml")))

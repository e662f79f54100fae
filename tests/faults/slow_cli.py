"""`python -m tests.faults.slow_cli MODULE:ATTR SECONDS ARGS...`: `segladder ARGS` with one function slowed
down, so a test can interrupt the command in the middle of its work."""

from __future__ import annotations

import functools
import importlib
import sys
import time


def main() -> None:
    target, delay, *args = sys.argv[1:]
    module_name, attr_path = target.split(":")
    owner = importlib.import_module(module_name)
    *parents, attr = attr_path.split(".")
    for name in parents:
        owner = getattr(owner, name)
    original = getattr(owner, attr)

    @functools.wraps(original)
    def slowed(*a, **k):
        time.sleep(float(delay))
        return original(*a, **k)

    setattr(owner, attr, slowed)
    sys.argv = ["segladder", *args]
    from segladder.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()

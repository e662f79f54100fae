"""Running `segladder` as users do: a subprocess per command, or many commands in one subprocess.

`segladder` (the console script) and `python -m segladder` both call `segladder.cli.main()`, which is
`sys.exit(segladder.cli.run(argv))`. Starting Python with torch costs seconds, so `run_many` runs several
argument lists through `run()` in ONE fresh interpreter and returns each one's exit code, stdout and
stderr; `tests/cli/test_entry.py` checks that `main()` exits with exactly what `run()` returns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["COLUMNS"] = "200"  # rich tables and typer's help wrap at the terminal width
    return env


@dataclass
class Result:
    argv: list[str]
    code: int
    out: str
    err: str
    seconds: float = 0.0

    def __str__(self) -> str:
        return (
            f"segladder {' '.join(self.argv)} → {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"
        )

    def error(self) -> str:
        """stderr from its one `error: ...` line on (a data error lists the bad records below it); fails on a
        traceback or on more or fewer than one such line."""
        assert "Traceback" not in self.err + self.out, str(self)
        lines = [line for line in self.err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1, str(self)
        return self.err[self.err.index(lines[0]) :]


def run_cli(*args: str | Path, timeout: float = 300, module: str = "segladder", **kw) -> Result:
    """`python -m segladder ARGS` in a subprocess."""
    argv = [str(a) for a in args]
    p = subprocess.run(
        [sys.executable, "-m", module, *argv],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=timeout,
        **kw,
    )
    return Result(argv, p.returncode, p.stdout, p.stderr)


_DRIVER = r"""
import contextlib, io, json, sys, time, traceback
from segladder.cli import run
cases, results = json.loads(sys.argv[1]), []
for argv in cases:
    out, err, t0 = io.StringIO(), io.StringIO(), time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = run(argv)
        except BaseException:  # what Python itself would do with an uncaught exception
            traceback.print_exc()
            code = 1
    results.append({"argv": argv, "code": code, "out": out.getvalue(), "err": err.getvalue(),
                    "seconds": time.perf_counter() - t0})
with open(sys.argv[2], "w") as f:
    json.dump(results, f)
"""


def run_many(cases: list[list[str | Path]], workdir: Path, timeout: float = 600) -> list[Result]:
    """Each argument list through `segladder.cli.run`, in order, in one fresh interpreter."""
    argvs = [[str(a) for a in argv] for argv in cases]
    results = workdir / "results.json"
    p = subprocess.run(
        [sys.executable, "-c", _DRIVER, json.dumps(argvs), str(results)],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=timeout,
        cwd=workdir,
    )
    assert p.returncode == 0 and results.exists(), p.stdout + p.stderr
    return [Result(**r) for r in json.loads(results.read_text())]


@pytest.fixture(scope="session")
def cli_data(synth_root, tmp_path_factory):
    """The session's synthetic dataset (32², 12/4/3 records), its cache, and fabricated run folders:
    a segmenter run and a classifier run, each with checkpoints/best.ckpt in the trainer's format."""
    from segladder.data.cache import CacheOptions, prepare_cache
    from tests.inference.helpers import make_checkpoint

    base = tmp_path_factory.mktemp("cli")
    cache = base / "cache"
    prepare_cache(
        synth_root, cache, CacheOptions(frames=(0, 1, 2, 3, 4), image_size=32), workers=1, progress=False
    )
    seg, cls = base / "seg-run", base / "cls-run"
    for run in (seg, cls):
        (run / "checkpoints").mkdir(parents=True)
    make_checkpoint(seg / "checkpoints" / "best.ckpt", seed=1)
    make_checkpoint(cls / "checkpoints" / "best.ckpt", name="Classifier", task="classification", bias=2.0)
    return {"raw": synth_root, "cache": cache, "seg": seg, "cls": cls, "base": base}

"""scripts/sim2real.sh checks its arguments before any work: bad ones give usage or one line on stderr,
exit 2, and nothing is created (no synthesis, no training). Cheap: the script stops before calling segladder."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "sim2real.sh"


def sim2real(tmp_path, *args, **env):
    # SEGLADDER points at a command that records any call: none may happen.
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "fake-segladder"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    environ = {**os.environ, "SEGLADDER": str(fake), **env}
    p = subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=environ)
    return p, calls


@pytest.mark.parametrize(
    "args, env, message",
    [
        ([], {}, r"^Sim-to-real: .*scripts/sim2real\.sh OUT \[REAL \[SPLIT\]\]"),
        (
            ["{out}", "{tmp}/missing"],
            {},
            r"^sim2real\.sh: REAL \S*missing is not a folder; give the real dataset",
        ),
        (["{out}", "{tmp}/real", "test"], {}, r"^sim2real\.sh: SPLIT test: give train or validation"),
        (["{out}", "{tmp}/real", "validation"], {}, r"^sim2real\.sh: REAL \S*real has no validation/ folder"),
        (["{out}", "{tmp}/real", "train", "extra"], {}, r"^Sim-to-real: "),
        (["{tmp}/a-file"], {}, r"^sim2real\.sh: OUT \S*a-file is a file; give a folder"),
        (["{out}"], {"RECORDS": "many"}, r"^sim2real\.sh: RECORDS=many: give a whole number\.$"),
        (["{out}"], {"EPOCHS": "0"}, r"^sim2real\.sh: EPOCHS=0: give a whole number of epochs, 1 or more\.$"),
        (["{out}"], {"CONFIG": "{tmp}/none.yaml"}, r"^sim2real\.sh: CONFIG \S*none\.yaml does not exist"),
        (
            ["{out}"],
            {"INJECT": "{tmp}/nowhere"},
            r"^sim2real\.sh: INJECT \S*nowhere is not a folder; give the real",
        ),
        (
            ["{out}"],
            {"SEGLADDER": "no-such-segladder"},
            r"^sim2real\.sh: SEGLADDER=no-such-segladder: no such",
        ),
    ],
    ids=[
        "no-args",
        "missing-real",
        "test-split",
        "no-split-folder",
        "too-many",
        "out-a-file",
        "records",
        "epochs",
        "config",
        "inject-missing",
        "segladder",
    ],
)
def test_bad_arguments_are_refused_before_any_work(tmp_path, args, env, message):
    import re

    (tmp_path / "real" / "train").mkdir(parents=True)
    (tmp_path / "a-file").write_text("")
    fmt = {"out": tmp_path / "out", "tmp": tmp_path}
    p, calls = sim2real(
        tmp_path, *[a.format(**fmt) for a in args], **{k: v.format(**fmt) for k, v in env.items()}
    )
    assert p.returncode == 2 and p.stdout == "", p
    assert re.search(message, p.stderr, re.S), p.stderr
    assert not (tmp_path / "out").exists() and not calls.exists()  # nothing created, segladder never ran


def test_help_goes_to_stdout_with_exit_0(tmp_path):
    p, _ = sim2real(tmp_path, "--help")
    assert p.returncode == 0 and p.stdout.startswith("Sim-to-real:") and p.stderr == ""


def test_inject_mode_leaves_the_scored_records_out_of_the_skies(tmp_path):
    (tmp_path / "real" / "validation").mkdir(parents=True)
    (tmp_path / "sample").mkdir()
    p, calls = sim2real(
        tmp_path, tmp_path / "out", tmp_path / "real", "validation", INJECT=str(tmp_path / "sample")
    )
    # The fake segladder writes no checkpoint, so the run stops after training; the calls are what counts.
    first, *rest = calls.read_text().splitlines()
    assert first.startswith(f"synth inject {tmp_path / 'sample'} --out {tmp_path / 'out'}/synth ")
    assert first.endswith(f"--exclude-like {tmp_path / 'real'}/validation")
    train = [c for c in rest if c.startswith("train ")]
    assert len(train) == 1 and "sim2real.yaml" in train[0]
    assert "trainer.max_epochs=48" in train[0]  # injected skies train twice as long unless EPOCHS says
    assert p.returncode != 0
    calls.unlink()
    _, calls_again = sim2real(
        tmp_path,
        tmp_path / "out2",
        tmp_path / "real",
        "validation",
        INJECT=str(tmp_path / "sample"),
        EPOCHS="5",
    )
    assert (
        "trainer.max_epochs=5" in calls_again.read_text() and "max_epochs=48" not in calls_again.read_text()
    )

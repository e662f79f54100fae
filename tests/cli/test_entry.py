"""The entry points themselves: the console script, `python -m segladder` and `-m segladder.cli` exit with
the same codes; Ctrl-C exits 130 with one line saying how to continue."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.conftest import Result, cli_env, run_cli


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(scope="module")
def bad_root(synth_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("entry") / "bad"
    shutil.copytree(synth_root, root)
    rid = sorted(p.name for p in (root / "validation").iterdir())[0]
    (root / "validation" / rid / "band_12.npy").unlink()
    return root, rid


@pytest.mark.medium
def test_entry_points_agree_on_exit_codes(synth_root, bad_root):
    """The bug this guards: `raise typer.Exit(1)` used to leave the installed command with exit 0."""
    root, rid = bad_root
    script = Path(sys.executable).with_name("segladder")
    runs = [
        run_cli("data", "check", root, "--splits", "validation"),
        run_cli("data", "check", root, "--splits", "validation", module="segladder.cli"),
    ]
    if script.exists():  # the console script of the environment running the tests
        p = subprocess.run(
            [str(script), "data", "check", str(root), "--splits", "validation"],
            capture_output=True,
            text=True,
            env=cli_env(),
            timeout=120,
        )
        runs.append(Result([], p.returncode, p.stdout, p.stderr))
    for r in runs:
        assert r.code == 1, str(r)
        assert f"{rid}: missing band_12.npy" in r.out.splitlines() and "1 bad" in r.out, str(r)
    good = run_cli("data", "check", synth_root, "--splits", "validation")
    assert good.code == 0 and "all good" in good.out, str(good)
    usage = run_cli("data", "check", root, "--splits", "validation", "--workers", "many")
    assert usage.code == 2 and usage.error().startswith("error: Invalid value for '--workers'"), str(usage)
    assert run_cli("--help").code == 0


def _interrupt_when(cmd: list[str], ready, timeout: float = 240) -> Result:
    """Start `python -m segladder CMD`, send Ctrl-C (SIGINT) once `ready()` holds, return how it ended."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "segladder", *cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        # As from an interactive shell: a suite run under nohup would hand down an ignored SIGINT.
        preexec_fn=_default_signals,
    )
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the command ended before it could be interrupted:\n" + proc.communicate()[1]
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return Result(cmd, proc.returncode, out, err)


def test_ctrl_c_exits_130_and_says_to_run_it_again(tmp_path):
    out = tmp_path / "synth"
    r = _interrupt_when(
        ["synth", "contrails", str(out), "--records", "5000", "--size", "64", "--no-progress"],
        lambda: (out / "train").is_dir() and len(list((out / "train").iterdir())) >= 2,
    )
    assert r.code == 130, str(r)
    assert "Traceback" not in r.err, str(r)
    last = r.err.strip().splitlines()[-1]
    assert last.startswith("interrupted") and last.endswith(
        f"continue with `segladder synth contrails {out} --records 5000 --size 64 --no-progress`"
    ), str(r)


@pytest.mark.medium
def test_ctrl_c_during_training_names_the_resume_command(cli_data, tmp_path):
    run = tmp_path / "run"
    cmd = [
        "train",
        "tiny_synthetic",
        "--set",
        f"data.root={cli_data['cache']}",
        "data.image_size=32",
        "model.name=ResNet18_U",
        "trainer.max_epochs=500",
        "trainer.progress=false",
        "trainer.overlays=0",
        "--out",
        str(run),
    ]
    r = _interrupt_when(cmd, lambda: (run / "checkpoints" / "last.ckpt").exists())
    assert r.code == 130, str(r)
    assert "Traceback" not in r.err, str(r)
    last = r.err.strip().splitlines()[-1]
    assert last.startswith("interrupted: training stopped on SIGINT") and last.endswith(
        f"continue with `segladder train --resume {run}`"
    ), str(r)
    # Nothing a user cannot act on: no Lightning advert, no deprecation notice from inside Lightning.
    assert "💡" not in r.out + r.err and "LeafSpec" not in r.err, str(r)


@pytest.mark.medium
def test_make_test_fails_below_the_collected_test_floor():
    floor = int((Path(__file__).parents[1] / "MIN_TESTS").read_text())
    assert floor >= 400
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--collect-only",
            "--min-tests",
            "100000",
            str(Path(__file__)),
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    assert p.returncode == 4 and "fewer than the floor 100000" in p.stdout + p.stderr, p.stdout + p.stderr

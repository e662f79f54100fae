"""SIGINT and SIGTERM during training, `data prepare`, `predict` and `synth`: a clean stop (exit 130), what
was finished kept, a message naming the command that continues, and that command finishes the work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from segladder.config import dump_config
from tests.faults.conftest import tiny_config
from tests.faults.helpers import run_cli

REPO = Path(__file__).resolve().parents[2]


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def interrupt(slow: str, delay: float, args: list, ready: Callable[[], bool], sig: int) -> tuple[int, str]:
    """Run `segladder ARGS` with `slow` slowed by `delay` s per call; send `sig` once `ready()`."""
    env = dict(os.environ, PYTHONPATH=str(REPO), NO_ALBUMENTATIONS_UPDATE="1", COLUMNS="400")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.slow_cli", slow, str(delay), *map(str, args)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As from an interactive shell: a suite run under nohup would hand down an ignored SIGINT.
        preexec_fn=_default_signals,
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.05)
    assert proc.poll() is None, f"finished before it could be interrupted:\n{proc.communicate()[1][-3000:]}"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err[-3000:]
    return proc.returncode, err


@pytest.mark.medium
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_training_stops_cleanly_and_resumes(fault_cache, tmp_path, sig, capsys, monkeypatch):
    run = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(dump_config(tiny_config(fault_cache, **{"trainer.max_epochs": 3})))
    metrics = run / "metrics.json"

    def one_epoch_done() -> bool:
        try:
            return len(json.loads(metrics.read_text())["epochs"]) >= 1
        except (OSError, ValueError):
            return False

    code, err = interrupt(
        "segladder.data.datasets:ContrailsDataset.__getitem__",
        0.15,
        ["train", cfg, "--out", run],
        one_epoch_done,
        sig,
    )
    assert code == 130, err[-2000:]
    line = next(ln for ln in err.splitlines() if ln.startswith("interrupted"))
    assert f"training stopped on {signal.Signals(sig).name} during epoch 2" in line
    assert f"continue with `segladder train --resume {run}`" in line
    kept = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert kept["epoch"] == 0  # the finished epoch is kept; the unfinished one is dropped

    code, err = run_cli(["train", "--resume", run], capsys, monkeypatch)
    assert code == 0, err
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2
    assert [h["epoch"] for h in json.loads(metrics.read_text())["epochs"]] == [0, 1, 2]


@pytest.mark.medium
def test_data_prepare_stops_cleanly_and_continues(fault_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "cache"
    args = ["data", "prepare", fault_root, "--out", out, "--frames", "3,4", "--size", "32", "--workers", "1"]

    def some_rows_done() -> bool:
        try:
            return np.load(out / "train" / "done.npy").sum() >= 1
        except (OSError, ValueError):
            return False

    # One chunk is 16 records: slow enough that the second chunk is running when the signal comes.
    code, err = interrupt("segladder.data.cache:read_sample", 0.1, args, some_rows_done, signal.SIGINT)
    assert (
        code == 130
        and "interrupted" in err
        and f"continue with `segladder {' '.join(map(str, args))}`" in err
    )
    assert not (out / "manifest.json").exists() and not (out / ".prepare.lock").exists()
    code, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    from segladder.data.cache import ContrailsCache

    assert len(ContrailsCache(out).split("validation")) == 8


@pytest.mark.medium
def test_synth_stops_cleanly_and_continues(tmp_path, capsys, monkeypatch):
    out = tmp_path / "synth"
    args = [
        "synth",
        "contrails",
        out,
        "--records",
        "12",
        "--val-records",
        "0",
        "--test-records",
        "0",
        "--size",
        "32",
        "--no-progress",
    ]

    def two_records() -> bool:
        return (out / "train").is_dir() and len(
            [p for p in (out / "train").iterdir() if not p.name.startswith(".")]
        ) >= 2

    code, err = interrupt("segladder.data.synth:make_record", 0.3, args, two_records, signal.SIGTERM)
    assert code == 130 and "continue with `segladder synth contrails" in err
    kept = [p for p in (out / "train").iterdir()]
    assert 2 <= len(kept) < 12 and not [p for p in kept if p.name.startswith(".")]
    code, err = run_cli(args, capsys, monkeypatch)
    assert code == 0
    assert len(list((out / "train").iterdir())) == 12


@pytest.mark.medium
def test_predict_stops_cleanly_and_rerun_finishes(fault_root, tiny_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "preds"
    args = [
        "predict",
        tiny_run / "checkpoints" / "best.ckpt",
        "--data",
        fault_root,
        "--split",
        "validation",
        "--out",
        out,
        "--device",
        "cpu",
        "--batch-size",
        "1",
    ]

    def some_maps() -> bool:
        return (out / "probs").is_dir() and len(list((out / "probs").glob("*.npy"))) >= 2

    code, err = interrupt("segladder.inference.predict:atomic_save_npy", 0.3, args, some_maps, signal.SIGTERM)
    assert code == 130 and "continue with `segladder predict" in err
    for p in (out / "probs").iterdir():  # every map written is whole, no temporary file is left
        assert not p.name.startswith(".") and np.load(p).shape == (32, 32)
    assert not (out / "submission.csv").exists()
    code, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    assert len(list((out / "probs").glob("*.npy"))) == 8 and (out / "predict.json").is_file()

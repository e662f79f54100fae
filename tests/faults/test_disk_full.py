"""A full disk while writing checkpoints, the cache, predictions, synthetic data and reports: one clear line
(path, bytes needed, bytes free, the fix), exit ≠ 0, earlier files intact, no partial file left."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

from segladder.errors import DiskFullError, WriteError
from segladder.io import atomic_path, atomic_write_json
from tests.faults.conftest import tiny_config
from tests.faults.helpers import one_error_line, run_cli

BYTES = r"[\d.]+ [KMG]?B"


def _checkpoint_bytes(tiny_run) -> int:
    return (tiny_run / "checkpoints" / "last.ckpt").stat().st_size


def test_report_write_on_a_full_disk_keeps_the_old_file(small_fs):
    fs = small_fs(64 * 1024)
    report = fs.path / "metrics.json"
    atomic_write_json(report, {"epoch": 1})
    with pytest.raises(DiskFullError) as info:
        atomic_write_json(report, {"epoch": 2, "pad": "x" * 200_000})
    msg = str(info.value)
    assert str(report) in msg and re.search(rf"needs {BYTES}, {BYTES} free", msg) and "Free space" in msg
    assert json.loads(report.read_text()) == {"epoch": 1}
    assert fs.leftovers() == []


def test_io_error_is_one_line_and_other_errors_pass_through(tmp_path):
    with pytest.raises(WriteError, match=r"write error \(I/O error\) on .*x\.bin"):
        with atomic_path(tmp_path / "x.bin") as tmp:
            raise OSError(errno.EIO, "Input/output error", str(tmp))
    with pytest.raises(KeyError):  # a bug in the writer is no disk problem: not disguised as one
        with atomic_path(tmp_path / "y.bin"):
            raise KeyError("bug")
    assert list(tmp_path.iterdir()) == []


def test_first_checkpoint_on_a_full_disk(fault_cache, tiny_run, small_fs, capsys, monkeypatch):
    """torch.save fails inside torch ("unexpected pos") on a real full disk: still one line, exit 2."""
    fs = small_fs(_checkpoint_bytes(tiny_run) // 2)
    run = fs.path / "run"
    cfg = tiny_config(fault_cache, **{"trainer.max_epochs": 1})
    from segladder.config import dump_config

    cfg_file = fs.path.parent / "cfg.yaml"
    cfg_file.write_text(dump_config(cfg))
    code, err = run_cli(["train", cfg_file, "--out", run], capsys, monkeypatch)
    line = one_error_line(err)
    assert code == 2
    assert (
        "disk full writing" in line
        and "best.ckpt" in line
        and re.search(rf"needs {BYTES}, {BYTES} free", line)
    )
    assert f"segladder train --resume {run}" in line
    assert not list((run / "checkpoints").glob("*.ckpt")) and fs.leftovers() == []
    assert (run / "config.yaml").is_file()


@pytest.mark.medium
def test_disk_full_at_last_resumes_from_best_and_finishes(
    fault_cache, tiny_run, small_fs, capsys, monkeypatch
):
    """The issue's case: best.ckpt written, last.ckpt does not fit (a filesystem without hard links, so it
    is a copy); after freeing space, --resume continues from the intact best.ckpt and finishes."""
    size = _checkpoint_bytes(tiny_run)
    fs = small_fs(int(size * 1.6))
    run = fs.path / "run"

    def no_hard_links(src, dst, *a, **k):
        raise OSError(errno.EPERM, "hard links not supported")

    with monkeypatch.context() as m:
        m.setattr(os, "link", no_hard_links)
        from segladder.training.run import train

        with pytest.raises(DiskFullError, match=r"disk full writing .*last\.ckpt.*--resume"):
            train(tiny_config(fault_cache, **{"trainer.max_epochs": 2}), out=run)
    assert (run / "checkpoints" / "best.ckpt").is_file() and not (run / "checkpoints" / "last.ckpt").exists()
    assert fs.leftovers() == []
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["epoch"] == 0

    fs.grow(size * 4)  # the user frees space
    code, err = run_cli(["train", "--resume", run], capsys, monkeypatch)
    assert code == 0, err
    assert "resuming from checkpoints/best.ckpt" in err
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1 and last["global_step"] == 2 * best["global_step"]


def test_cache_on_a_full_disk_refuses_before_reading_records(fault_root, small_fs):
    from segladder.data.cache import CacheOptions, prepare_cache

    fs = small_fs(64 * 1024)  # the arrays need ~0.3 MB
    out = fs.path / "cache"
    with pytest.raises(DiskFullError) as info:
        prepare_cache(fault_root, out, CacheOptions(frames=(3, 4), image_size=32), workers=1, progress=False)
    msg = str(info.value)
    assert re.search(rf"needs {BYTES}, {BYTES} free", msg) and str(out) in msg
    assert not list(out.rglob("*.npy")) and fs.leftovers() == []
    assert info.value.needed > info.value.free


def test_predict_on_a_full_disk(fault_root, tiny_run, small_fs, capsys, monkeypatch):
    fs = small_fs(12 * 1024)  # a few of the float16 maps fit, not all
    out = fs.path / "preds"
    code, err = run_cli(
        [
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
        ],
        capsys,
        monkeypatch,
    )
    line = one_error_line(err)
    assert code == 2 and "disk full writing" in line and str(out) in line
    assert "re-run the command" in line or "continue" in line or "segladder predict" in line
    written = list((out / "probs").glob("*.npy"))
    assert written, "nothing was written before the disk filled"
    for p in written:  # every map that exists is whole
        assert np.load(p).shape == (32, 32)
    assert fs.leftovers() == []


def test_synth_on_a_full_disk_then_continued(small_fs, capsys, monkeypatch):
    fs = small_fs(600 * 1024)  # one 32² record is ~0.15 MB
    out = fs.path / "synth"
    args = [
        "synth",
        "contrails",
        out,
        "--records",
        "8",
        "--val-records",
        "0",
        "--test-records",
        "0",
        "--size",
        "32",
        "--no-progress",
    ]
    code, err = run_cli(args, capsys, monkeypatch)
    line = one_error_line(err)
    assert code == 2 and "disk full writing" in line and re.search(rf"needs {BYTES}", line)
    done = [p for p in (out / "train").iterdir() if not p.name.startswith(".")]
    assert 0 < len(done) < 8 and fs.leftovers() == [] and not list((out / "train").glob(".*"))
    fs.grow(4 << 20)
    code, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    assert len(list((out / "train").iterdir())) == 8
    shutil.rmtree(out)

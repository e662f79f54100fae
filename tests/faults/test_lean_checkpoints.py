"""Checkpoints spend no disk twice: best and last of the same epoch are one file; optionally only last
carries the optimiser state; and last.ckpt follows every epoch, not only the best ones."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from segladder.inference.checkpoint import load_checkpoint
from segladder.io import link_or_copy
from segladder.training.run import train
from tests.faults.conftest import tiny_config


def test_same_epoch_best_and_last_are_one_file(tiny_run):
    best, last = tiny_run / "checkpoints" / "best.ckpt", tiny_run / "checkpoints" / "last.ckpt"
    assert os.path.samefile(best, last) and best.stat().st_nlink == 2


@pytest.mark.medium
def test_optimizer_state_only_in_last(fault_cache, tmp_path):
    run = train(
        tiny_config(
            fault_cache, **{"trainer.max_epochs": 2, "trainer.optimizer_state": "last", "optim.lr": 1e-9}
        ),
        out=tmp_path / "run",
    ).run_dir
    best, last = run / "checkpoints" / "best.ckpt", run / "checkpoints" / "last.ckpt"
    b, lst = torch.load(best, weights_only=True), torch.load(last, weights_only=True)
    assert "optimizer_states" not in b and "optimizer_states" in lst and lst["epoch"] == 1
    # Adam keeps two moments per weight: weights-only is about a third of a full checkpoint.
    assert best.stat().st_size < 0.4 * last.stat().st_size
    assert load_checkpoint(best).threshold == b["segladder"]["threshold"]  # inference needs nothing more


@pytest.mark.medium
def test_last_follows_every_epoch_even_when_best_does_not(fault_cache, tmp_path):
    res = train(tiny_config(fault_cache, **{"trainer.max_epochs": 3}), out=tmp_path / "run")
    ck = res.run_dir / "checkpoints"
    scores = [h["val/dice_best"] for h in res.metrics["epochs"]]
    best_epoch = max(range(3), key=lambda e: (scores[e], -e))  # the first of equal scores stays best
    b = torch.load(ck / "best.ckpt", weights_only=True)
    lst = torch.load(ck / "last.ckpt", weights_only=True)
    assert b["epoch"] == best_epoch and lst["epoch"] == 2
    assert os.path.samefile(ck / "best.ckpt", ck / "last.ckpt") == (best_epoch == 2)


def test_link_falls_back_to_a_copy(tmp_path, monkeypatch):
    src = tmp_path / "a.ckpt"
    src.write_bytes(b"x" * 1000)
    assert link_or_copy(src, tmp_path / "b.ckpt") == "hard link"

    def no_links(*a, **k):
        raise OSError(errno.EPERM, "no hard links here")

    monkeypatch.setattr(os, "link", no_links)
    how = link_or_copy(src, tmp_path / "c.ckpt")
    assert how in ("reflink", "copy") and (tmp_path / "c.ckpt").read_bytes() == src.read_bytes()
    assert not os.path.samefile(src, tmp_path / "c.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "b.ckpt", "c.ckpt"]

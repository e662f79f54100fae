"""Files changed underneath: truncated or corrupt checkpoints (resume picks the newest intact one, or says
why none can), and a cache whose arrays or manifest no longer match."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from segladder.errors import CacheError
from segladder.training.resume import ResumeError, check_checkpoint, choose_checkpoint
from tests.faults.helpers import one_error_line, run_cli


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.medium
def test_truncated_last_resumes_from_best(run_copy, capsys):
    ck = run_copy / "checkpoints"
    (ck / "last.ckpt").unlink()
    shutil.copyfile(ck / "best.ckpt", ck / "last.ckpt")
    _truncate(ck / "last.ckpt")
    (ck / ".last.ckpt.abc123.tmp").write_bytes(b"half a checkpoint")  # left by a write that was SIGKILLed
    chosen = choose_checkpoint(run_copy)
    err = capsys.readouterr().err
    assert chosen == ck / "best.ckpt"
    assert "resuming from checkpoints/best.ckpt" in err and "last.ckpt truncated or corrupt" in err
    assert not (ck / ".last.ckpt.abc123.tmp").exists() and "partial checkpoint" in err


@pytest.mark.medium
def test_newest_intact_checkpoint_wins(run_copy, capsys):
    ck = run_copy / "checkpoints"
    state = torch.load(ck / "last.ckpt", weights_only=True)
    state["global_step"] += 10
    torch.save(state, ck / "epoch-extra.ckpt")  # any other checkpoint of the run is considered too
    assert choose_checkpoint(run_copy) == ck / "epoch-extra.ckpt"
    state["state_dict"][next(iter(state["state_dict"]))].fill_(float("nan"))
    torch.save(state, ck / "epoch-extra.ckpt")
    assert choose_checkpoint(run_copy).name == "last.ckpt"
    assert "non-finite weights" in capsys.readouterr().err


def test_no_intact_checkpoint_is_one_clear_line(run_copy, capsys, monkeypatch):
    ck = run_copy / "checkpoints"
    for p in ck.glob("*.ckpt"):
        p.unlink()
    (ck / "last.ckpt").write_bytes(b"PK\x03\x04 not really a zip")
    (ck / "best.ckpt").write_bytes(b"")
    with pytest.raises(ResumeError, match="no checkpoint can continue"):
        choose_checkpoint(run_copy)
    code, err = run_cli(["train", "--resume", run_copy], capsys, monkeypatch)
    line = one_error_line(err)
    assert (
        code == 2 and "last.ckpt: truncated or corrupt" in line and "best.ckpt: truncated or corrupt" in line
    )


def test_unsafe_checkpoint_is_refused_not_loaded(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": {}, "x": Evil()}, tmp_path / "evil.ckpt")
    assert "refused" in check_checkpoint(tmp_path / "evil.ckpt").problem


@pytest.fixture
def cache_copy(fault_cache, tmp_path):
    dst = tmp_path / "cache"
    shutil.copytree(fault_cache, dst)
    return dst


def _read(cache, split="train"):
    from segladder.data.cache import ContrailsCache

    return ContrailsCache(cache).split(split)


def test_truncated_cache_array(cache_copy):
    _truncate(cache_copy / "train" / "images.npy", 0.7)
    with pytest.raises(CacheError, match=r"images\.npy: corrupted .*data prepare"):
        _read(cache_copy)


def test_manifest_that_does_not_match_its_arrays(cache_copy):
    manifest = json.loads((cache_copy / "manifest.json").read_text())
    manifest["splits"]["train"]["files"]["masks"]["shape"][0] += 3
    (cache_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match=r"masks\.npy: holds uint8\[16, 32, 32\], the manifest says"):
        _read(cache_copy)


def test_manifest_ids_that_do_not_match_the_arrays(cache_copy):
    manifest = json.loads((cache_copy / "manifest.json").read_text())
    manifest["splits"]["train"]["ids"] = manifest["splits"]["train"]["ids"][:-2]
    (cache_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match=r"14 record ids .* 16 rows"):
        _read(cache_copy)


def test_cut_manifest(cache_copy, capsys, monkeypatch):
    _truncate(cache_copy / "manifest.json", 0.5)
    with pytest.raises(CacheError, match="manifest.json: unreadable"):
        _read(cache_copy)
    manifest_without_splits = {"format": "segladder-contrails-cache", "version": 1, "complete": True}
    (cache_copy / "manifest.json").write_text(json.dumps(manifest_without_splits))
    with pytest.raises(CacheError, match="manifest.json: .*re-run `segladder data prepare`"):
        _read(cache_copy)
    assert np.load(cache_copy / "train" / "done.npy").all()  # reading never changes the cache


@pytest.mark.medium
def test_a_weights_only_checkpoint_cannot_resume(run_copy, capsys, monkeypatch):
    """best.ckpt under trainer.optimizer_state=last holds the weights only: never a place to resume from,
    even when it is the newest; with nothing else the run is refused in one line."""
    ck = run_copy / "checkpoints"
    full = torch.load(ck / "last.ckpt", weights_only=True)
    assert {"optimizer_states", "loops"} <= set(full)
    (ck / "last.ckpt").unlink()  # best and last are one hard-linked file: write a separate one
    for drop in (("optimizer_states",), ("loops",), ("optimizer_states", "loops")):
        lean = {k: v for k, v in full.items() if k not in drop}
        lean["global_step"] = full["global_step"] + 10  # newer than best.ckpt
        torch.save(lean, ck / "last.ckpt")
        check = check_checkpoint(ck / "last.ckpt")
        assert not check.ok and "weights only" in check.problem, drop
        assert choose_checkpoint(run_copy) == ck / "best.ckpt", drop
        assert "last.ckpt holds the weights only" in capsys.readouterr().err
    lean = {k: v for k, v in full.items() if k not in ("optimizer_states", "loops")}
    torch.save(lean, ck / "best.ckpt")
    with pytest.raises(
        ResumeError, match="last.ckpt: holds the weights only.*best.ckpt: holds the weights only"
    ):
        choose_checkpoint(run_copy)
    code, err = run_cli(["train", "--resume", run_copy], capsys, monkeypatch)
    assert code == 2 and "no checkpoint can continue the run" in one_error_line(err)

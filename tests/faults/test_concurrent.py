"""Two `data prepare` runs into one folder: the second refuses, naming the owner's pid; a lock left by a
process that died is taken over with a message."""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest

from segladder.data.cache import LOCK_FILE, CacheOptions, ContrailsCache, prepare_cache
from segladder.io import LockedError, exclusive_lock


def _hold(path, ready, release):
    with exclusive_lock(path, "test"):
        ready.set()
        release.wait(60)


def test_second_prepare_refuses_while_the_first_runs(fault_root, tmp_path, capsys, monkeypatch):
    from tests.faults.helpers import one_error_line, run_cli

    out = tmp_path / "cache"
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    owner = ctx.Process(target=_hold, args=(out / LOCK_FILE, ready, release))
    owner.start()
    try:
        assert ready.wait(30)
        with pytest.raises(
            LockedError, match=rf"cache folder {out} is in use by another process \(pid {owner.pid} "
        ):
            prepare_cache(
                fault_root, out, CacheOptions(frames=(4,), image_size=32), workers=1, progress=False
            )
        code, err = run_cli(
            ["data", "prepare", fault_root, "--out", out, "--frames", "4", "--size", "32"],
            capsys,
            monkeypatch,
        )
        assert code == 2 and f"pid {owner.pid}" in one_error_line(err)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing interleaved
    finally:
        release.set()
        owner.join(30)
    prepare_cache(fault_root, out, CacheOptions(frames=(4,), image_size=32), workers=1, progress=False)
    assert ContrailsCache(out).split("train").ids and not (out / LOCK_FILE).exists()


def test_stale_lock_of_a_dead_process_is_taken_over(fault_root, tmp_path, capsys):
    out = tmp_path / "cache"
    out.mkdir()
    dead = mp.get_context("fork").Process(target=os._exit, args=(0,))
    dead.start()
    dead.join()
    (out / LOCK_FILE).write_text(f"pid {dead.pid} on {os.uname().nodename}")  # its owner was SIGKILLed
    prepare_cache(fault_root, out, CacheOptions(frames=(4,), image_size=32), workers=1, progress=False)
    assert f"taking over {out / LOCK_FILE}: its owner (pid {dead.pid}" in capsys.readouterr().err
    assert ContrailsCache(out).split("validation").ids

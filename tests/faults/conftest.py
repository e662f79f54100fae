"""A tiny dataset, cache and model for the fault tests, and a small filesystem to fill.

`small_fs(bytes)` mounts a tmpfs of that size when the tests run as root and mounting works; otherwise it
stands in with a folder whose writes fail with ENOSPC once the files under it would pass that size (checked
where segladder's atomic writes sync their file, as a network filesystem reports a full disk).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest

from segladder.config import build_config


@pytest.fixture(scope="session")
def fault_root(tmp_path_factory):
    from segladder.data.synth import generate_contrails

    root = tmp_path_factory.mktemp("fault-synth") / "raw"
    generate_contrails(root, records=16, val_records=8, test_records=4, size=32, seed=5, progress=False)
    return root


@pytest.fixture(scope="session")
def fault_cache(fault_root, tmp_path_factory):
    from segladder.data.cache import CacheOptions, prepare_cache

    cache = tmp_path_factory.mktemp("fault-cache") / "cache"
    prepare_cache(fault_root, cache, CacheOptions(frames=(3, 4), image_size=32), workers=1, progress=False)
    return cache


@pytest.fixture(scope="session")
def tiny_run(fault_cache, tmp_path_factory):
    """A finished one-epoch run of `tiny_config` (read-only: copy it before damaging it)."""
    from segladder.training.run import train

    return train(
        tiny_config(fault_cache, **{"trainer.max_epochs": 1}), out=tmp_path_factory.mktemp("tiny") / "run"
    ).run_dir


def tiny_config(root, **over):
    """A 0.2M-parameter UNet on 32² frames 3–4: checkpoints of a few MB, epochs of a second."""
    base = {
        "name": "faults",
        "seed": 3,
        "data": {"root": str(root), "frames": [3, 4], "image_size": 32, "batch_size": 8, "num_workers": 0},
        "model": {
            "name": "Unet2D",
            "encoder": "mobilenetv3_small_050",
            "decoder": {"decoder_channels": [32, 16, 16, 8, 8]},
        },
        "loss": [{"name": "bce", "pos_weight": 5.0}],
        "optim": {"lr": 3e-3},
        "trainer": {"max_epochs": 2, "progress": False, "overlays": 0},
    }
    return build_config(base, [f"{k}={v}" for k, v in over.items()])


def _can_mount() -> bool:
    if os.geteuid() != 0 or os.environ.get("SEGLADDER_TEST_NO_TMPFS"):
        return False
    return True


class SmallFS:
    """A folder on a filesystem of `size` bytes; `grow(size)` stands for the user freeing space."""

    def __init__(self, path: Path, size: int, monkeypatch, tmpfs: bool):
        self.path, self.size, self.tmpfs = path, size, tmpfs
        if not tmpfs:
            _stand_in(monkeypatch, self)

    def grow(self, size: int) -> None:
        self.size = size
        if self.tmpfs:
            subprocess.run(
                ["mount", "-o", f"remount,size={_pages(size)}", str(self.path)], check=True, timeout=30
            )

    def used(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def leftovers(self) -> list[Path]:
        """Temporary files of interrupted or failed writes."""
        return [p for p in self.path.rglob("*") if p.name.endswith(".tmp")]


def _pages(nbytes: int) -> int:
    return -(-nbytes // 4096) * 4096


@pytest.fixture
def small_fs(tmp_path, monkeypatch):
    """`small_fs(nbytes)` → a `SmallFS` of about `nbytes` (a tmpfs, or the ENOSPC stand-in)."""
    mounts: list[Path] = []

    def make(nbytes: int) -> SmallFS:
        path = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
        path.mkdir()
        if _can_mount():
            res = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={_pages(nbytes)}", "tmpfs", str(path)],
                capture_output=True,
                timeout=30,
            )
            if res.returncode == 0:
                mounts.append(path)
                return SmallFS(path, nbytes, monkeypatch, tmpfs=True)
        return SmallFS(path, nbytes, monkeypatch, tmpfs=False)

    yield make
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def _stand_in(monkeypatch, fs: SmallFS) -> None:
    """Writes under `fs.path` fail with ENOSPC at their fsync (or copy) once the folder holds more than
    `fs.size`; disk_usage reports what is left."""
    import shutil

    real_fsync, real_disk_usage, real_copyfile = os.fsync, shutil.disk_usage, shutil.copyfile

    def inside(p) -> bool:
        try:
            return Path(p).resolve().is_relative_to(fs.path.resolve())
        except OSError:
            return False

    def fsync(fd):
        target = None
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
        if target and inside(target) and fs.used() > fs.size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    def copyfile(src, dst, **kw):
        out = real_copyfile(src, dst, **kw)
        if inside(dst) and fs.used() > fs.size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return out

    def disk_usage(path):
        u = real_disk_usage(path)
        if inside(path):
            return type(u)(fs.size, min(fs.size, fs.used()), max(0, fs.size - fs.used()))
        return u

    def np_save(file, arr, *args, **kw):
        out = real_np_save(file, arr, *args, **kw)
        name = getattr(file, "name", file)
        if isinstance(name, (str, os.PathLike)) and inside(name) and fs.used() > fs.size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(name))
        return out

    real_np_save = np.save
    monkeypatch.setattr(np, "save", np_save)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    monkeypatch.setattr(shutil, "copyfile", copyfile)

"""Atomic file writes: a reader sees the old file or the complete new one, never a half-written one.

A full disk or a failing write becomes one `DiskFullError`/`WriteError` naming the path, the bytes and
the fix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from segladder.errors import DiskFullError, SegladderError, WriteError, continue_hint

_UMASK = os.umask(0)
os.umask(_UMASK)

SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# A write that failed while less than this was free is taken as "disk full" even when the library that wrote
# (torch's zip writer: "unexpected pos") does not pass the errno on.
NEARLY_FULL = 1 << 20


def human_bytes(n: int | float) -> str:
    """`n` bytes as a short string in decimal units: "512 B", "1.5 MB"."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes free to this user on the filesystem holding `path` (its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def _errno_of(exc: BaseException) -> int | None:
    # Walk the cause chain: wrappers (torch, PIL) often re-raise with the OSError as their cause or context.
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc.errno
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def write_error(
    exc: BaseException,
    path: str | os.PathLike,
    *,
    needed: int | None = None,
    written: int = 0,
    free_at_failure: int | None = None,
    free_before: int | None = None,
) -> WriteError | None:
    """The `WriteError` that `exc`, raised while writing `path`, stands for; None when it is no write failure.

    The free space reported is what there was when the write began (`free_before`): after a failure the
    failed writer may still hold its removed file open, so the filesystem can read as full for a while.
    """
    if not isinstance(exc, Exception) or isinstance(exc, SegladderError):
        return None
    code = _errno_of(exc)
    path = Path(path)
    free = free_before if free_before is not None else free_bytes(path.parent)
    if code in SPACE_ERRNOS or (
        code is None
        and not isinstance(exc, (ValueError, TypeError, KeyError))
        and free_at_failure is not None
        and free_at_failure < NEARLY_FULL
    ):
        then = (
            f"then `{continue_hint()}`"
            if continue_hint()
            else "then re-run the command (it continues where it stopped)"
        )
        need = (
            f"needs {human_bytes(needed)}"
            if needed
            else f"needs more than the {human_bytes(written)} written"
            if written
            else "needs more space"
        )
        quota = " (disk quota exceeded)" if code == errno.EDQUOT else ""
        return DiskFullError(
            f"disk full{quota} writing {path}: it {need}, {human_bytes(free) if free is not None else 'unknown'} "
            f"free there. Free space on that filesystem (or write to another one), {then}; "
            "files written before are intact and no partial file was left.",
            path,
            needed,
            free,
        )
    if code == errno.EIO:
        return WriteError(
            f"write error (I/O error) on {path}: the disk or network filesystem failed. Check it "
            "(dmesg, fsck) or write elsewhere; files written before are intact and no partial file "
            "was left.",
            path,
        )
    return None


@contextlib.contextmanager
def guard_writes(path: str | os.PathLike, needed: int | None = None) -> Iterator[None]:
    """Turn a disk-full or I/O failure inside the block into one `WriteError` naming `path`.

    For writers that are not a single `atomic_path` (a record folder, a preallocated array); the block must
    remove its own partial output before the exception leaves it.
    """
    free_before = free_bytes(Path(path).parent)
    try:
        yield
    except Exception as exc:
        err = write_error(
            exc, path, needed=needed, free_at_failure=free_bytes(Path(path).parent), free_before=free_before
        )
        if err is None:
            raise
        raise err from exc


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`.

    On failure the temporary file is removed; a full disk or an I/O error becomes a `WriteError`
    (`needed`, when known, is what the file needs and goes into its message).
    """
    path = Path(path)
    if path.is_dir():
        # Otherwise the rename below fails naming the temporary file, which the user never chose.
        raise WriteError(f"cannot write {path}: it is a folder; give a file path (nothing was written).")
    free_before = free_bytes(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        err = write_error(exc, path, needed=needed)
        if err is None:
            raise
        raise err from exc
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results are meant to be shared like any other
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        written = _size(tmp_path)
        free_at_failure = free_bytes(path.parent)
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        err = write_error(
            exc,
            path,
            needed=needed,
            written=written,
            free_at_failure=free_at_failure,
            free_before=free_before,
        )
        if err is None:
            raise
        raise err from exc


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _fsync_dir(directory: Path) -> None:
    # The rename is only durable once the directory entry is flushed too.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def preallocate(path: str | os.PathLike) -> None:
    """Reserve the blocks of an existing (sparse) file: writing it through a memory map then has the space.

    A full disk would kill the process with SIGBUS mid-write; here the file is removed and a DiskFullError
    raised instead.
    """
    path = Path(path)
    size = path.stat().st_size
    try:
        with guard_writes(path, needed=size):
            fd = os.open(path, os.O_RDWR)
            try:
                if hasattr(os, "posix_fallocate"):
                    try:
                        os.posix_fallocate(fd, 0, size)
                    except OSError as exc:
                        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                            raise
            finally:
                os.close(fd)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Make `dst` hold the bytes of `src` with as little new disk as the filesystem allows; returns how.

    A hard link, else a copy-on-write clone, else a copy; `dst` is replaced atomically. Returns which of the
    three it made.
    """
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
        os.replace(tmp, dst)
        return "hard link"
    except OSError:
        tmp.unlink(missing_ok=True)
    with atomic_path(dst, needed=_size(src)) as out:
        try:
            import fcntl

            with open(src, "rb") as fi, open(out, "wb") as fo:
                fcntl.ioctl(fo.fileno(), _FICLONE, fi.fileno())
            return "reflink"
        except (OSError, ImportError):
            shutil.copyfile(src, out)
            return "copy"


_FICLONE = 0x40049409  # Linux ioctl: share the source's blocks copy-on-write (btrfs, XFS, bcachefs)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path, needed=len(text.encode())) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` to `path` atomically as indented JSON with sorted keys."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save `array` to `path` atomically as a .npy file."""
    with atomic_path(path, needed=array.nbytes + 128) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


class LockedError(WriteError):
    """Another live process holds the lock on a folder this command would write."""


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (holding this process's pid) for the block.

    Refuses when another live process holds it. The kernel drops a lock whose owner died, so a stale lock file
    is taken over.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(
                f"{what} is in use by another process ({owner}, lock {path}); wait for it to finish "
                "or stop it, then run this again.",
                path,
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the owner released and removed the file between our open and our lock: try again
    try:
        previous = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if previous:
            from segladder.progress import console

            console.print(f"taking over {path}: its owner ({previous}) is no longer running", soft_wrap=True)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode(), 0)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether `a` and `b` name one file (links and relative paths included); False when either is absent."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` lies strictly inside `folder` (both resolved: links and `..` followed)."""
    here, there = path.resolve(), folder.resolve()
    return here != there and here.is_relative_to(there)


def run_folder_of(checkpoint: str | os.PathLike | None) -> Path | None:
    """The run folder a checkpoint belongs to, or None for a checkpoint on its own.

    `RUN/checkpoints/best.ckpt` → RUN; a checkpoint beside a run's `config.yaml` → its folder.
    """
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    if path.is_dir():
        return None
    if path.parent.name == "checkpoints":
        return path.parent.parent
    if (path.parent / "config.yaml").is_file():
        return path.parent
    return None


def refuse_folders_as_files(files: dict[str, str | os.PathLike | None]) -> None:
    """A `SegladderError` before any work when an output that is one file (`--json`) names a folder."""
    for name, path in files.items():
        if path is not None and Path(path).is_dir():
            raise SegladderError(
                f"{name} {path} is a folder; give a file path, e.g. {Path(path) / 'out.json'} (nothing was written)."
            )


def refuse_overwriting_inputs(
    writes: dict[str, str | os.PathLike],
    reads: dict[str, Any],
    *,
    shallow: tuple[str, ...] = (),
    sealed: tuple[str, ...] = (),
) -> None:
    """A `SegladderError` before anything is written when an output would replace or mix with an input.

    `writes` maps how the user named each output (`--out`) to its path; `reads` maps how each input was
    named (`GT`, `--data`, `the run folder of CHECKPOINT`) to its path (None: not given). Refused:

    - an output that is an input (a file or a folder; links and relative paths included);
    - an output that lies inside an input folder and already exists (a file or folder of that input would
      be overwritten); a new path inside it is fine, unless the input is in `sealed` (a dataset's split:
      whatever appears there is read as a record);
    - for the inputs named in `shallow` (a training run, whose subfolders such as `eval-validation/` are
      other commands' outputs made again on a re-run; a dataset root beside its splits) only their own
      files count: an existing file directly inside (`metrics.json`, `config.yaml`, ...) or anything
      existing in `checkpoints/`.

    Every command that writes calls this first, so a refused command has written nothing.
    """
    for out_name, out in writes.items():
        if out is None:
            continue
        out = Path(out)
        for in_name, src in reads.items():
            if src is None or not Path(src).exists():
                continue
            src = Path(src)
            if same_file(out, src):
                kind = "file" if src.is_file() else "folder"
                raise SegladderError(
                    f"{out_name} {out} is the input {in_name} ({src}): it would be overwritten; "
                    f"write to another {kind} (nothing was written)."
                )
            if not src.is_dir() or not _inside(out, src):
                continue
            if in_name in shallow:
                here = out.resolve()
                own = here.parent == src.resolve() and here.is_file()
                if not own and not (here.is_relative_to((src / "checkpoints").resolve()) and here.exists()):
                    continue
            if in_name in sealed:
                raise SegladderError(
                    f"{out_name} {out} lies inside the input {in_name} ({src}), where anything new would be "
                    "read as input; give a path outside it (nothing was written)."
                )
            if out.exists() or out.is_symlink():
                raise SegladderError(
                    f"{out_name} {out} already exists inside the input {in_name} ({src}): it would be "
                    "overwritten; give a new path (nothing was written)."
                )

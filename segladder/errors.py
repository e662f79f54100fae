"""Error types a user is meant to read: each names the file, record or config key and the fix."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

# The command that continues the current work after a stop (disk full, interruption); set by whoever
# knows it (the CLI: the same command line; training: `segladder train --resume RUN`).
_CONTINUE_WITH: ContextVar[str | None] = ContextVar("segladder_continue_with", default=None)


@contextlib.contextmanager
def continue_with(command: str) -> Iterator[None]:
    """Within this block, errors that stop work name `command` as the way to continue it."""
    token = _CONTINUE_WITH.set(command)
    try:
        yield
    finally:
        _CONTINUE_WITH.reset(token)


def continue_hint() -> str | None:
    """The command that continues the current work, when one was set with `continue_with`."""
    return _CONTINUE_WITH.get()


class SegladderError(Exception):
    """Base class for errors that the CLI prints as one clear message instead of a traceback."""


class DataError(SegladderError):
    """A data file, record or split is missing, malformed or inconsistent."""


class BadDatasetError(DataError):
    """One or more records failed validation; `problems` holds `(record_id, reason)` pairs.

    Args:
        problems: the `(record_id, reason)` pairs; the message lists the first 20.
        where: the dataset or file the records came from.
        hint: a last line saying how to fix them.
    """

    def __init__(self, problems: list[tuple[str, str]], where: str, hint: str = ""):
        self.problems = list(problems)
        lines = [f"{rid}: {reason}" for rid, reason in self.problems[:20]]
        more = len(self.problems) - len(lines)
        if more > 0:
            lines.append(f"... and {more} more")
        msg = f"{len(self.problems)} bad record(s) in {where}:\n  " + "\n  ".join(lines)
        if hint:
            msg += f"\n{hint}"
        super().__init__(msg)


class CacheError(DataError):
    """A prepared cache is missing, incomplete, corrupted or made with other options than asked for."""


class ConfigError(SegladderError):
    """A config key or value is invalid."""


class WriteError(SegladderError):
    """A file could not be written (an I/O error); `path` names it. Files written before stay intact.

    Args:
        message: what failed.
        path: the file that was being written.
    """

    def __init__(self, message: str, path=None):
        super().__init__(message)
        self.path = path


class DiskFullError(WriteError):
    """The filesystem (or the user's quota) ran out of space while writing `path`.

    Args:
        message: what failed, with the fix.
        path: the file that was being written.
        needed: the bytes the write needed, when known.
        free: the bytes that were free, when known.
    """

    def __init__(self, message: str, path=None, needed: int | None = None, free: int | None = None):
        super().__init__(message, path)
        self.needed, self.free = needed, free


class Interrupted(SegladderError):
    """A command stopped early on SIGINT or SIGTERM, keeping what it had finished; `hint` says how to continue.

    Args:
        message: what stopped and what was kept.
        hint: the command that continues; default: the one set with `continue_with`, if any.
    """

    def __init__(self, message: str, hint: str | None = None):
        self.hint = hint or continue_hint()
        super().__init__(message + (f"; continue with `{self.hint}`" if self.hint else ""))

"""Run the `segladder` entry point in this process, as a user would from a shell (exit code and stderr)."""

from __future__ import annotations

import signal
import sys


def run_cli(args: list[str], capsys, monkeypatch) -> tuple[int, str]:
    """`segladder ARGS` through `segladder.cli.main`: (exit code, stderr)."""
    from segladder.cli import main

    monkeypatch.setattr(sys, "argv", ["segladder", *map(str, args)])
    previous = signal.getsignal(signal.SIGTERM)
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    """The `error: ...` line of stderr; fails the test on a traceback."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]

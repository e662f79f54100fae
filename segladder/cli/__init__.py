"""The `segladder` command: a thin Typer app; each command group lives in its own module."""

from __future__ import annotations

import shlex
import signal
import sys

import typer

from segladder.cli.app import app
from segladder.errors import Interrupted, SegladderError, continue_with


def _register() -> None:
    # Command groups register themselves on import; imported here so `segladder --help` lists them all.
    from segladder.cli import bench, data, demo, ladder, models, predict, synth, train  # noqa: F401


def _stop_like_ctrl_c(signum, frame) -> None:
    # SIGTERM (a scheduler, `kill`) stops as cleanly as Ctrl-C instead of ending the process mid-write.
    raise KeyboardInterrupt


def main() -> None:
    """Entry point: run the app and turn a SegladderError into one readable line and exit code 2."""
    _register()
    rerun = "segladder " + shlex.join(sys.argv[1:])
    signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
    try:
        with continue_with(rerun):  # what a full disk or an interruption names as the way to continue
            code = app(standalone_mode=False)
    except Interrupted as exc:
        typer.secho(f"interrupted: {exc}", fg=typer.colors.YELLOW, err=True)
        sys.exit(130)
    except SegladderError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as exc:
        # Usage errors arrive here in non-standalone mode; typer may vendor its own click, so match by shape.
        if type(exc).__name__.endswith(("UsageError", "BadParameter", "ClickException", "NoSuchOption", "MissingParameter")) \
                and hasattr(exc, "show"):
            exc.show()
            sys.exit(getattr(exc, "exit_code", 2))
        raise
    # Typer returns (not raises) the code of a `typer.Exit`, and turns Ctrl-C (and SIGTERM, above) into 130.
    if code == 130:
        typer.secho(f"interrupted; what was finished is kept; continue with `{rerun}`", fg=typer.colors.YELLOW, err=True)
    if isinstance(code, int) and code:
        sys.exit(code)

"""The `segladder` command: a thin Typer app; each command group lives in its own module."""

from __future__ import annotations

import sys

import typer

from segladder.cli.app import app
from segladder.errors import SegladderError


def _register() -> None:
    # Command groups register themselves on import; imported here so `segladder --help` lists them all.
    from segladder.cli import bench, data, demo, ladder, models, predict, synth, train  # noqa: F401


def main() -> None:
    """Entry point: run the app and turn a SegladderError into one readable line and exit code 2."""
    _register()
    try:
        app(standalone_mode=False)
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

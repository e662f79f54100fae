"""The `segladder` command: a thin Typer app; each command group lives in its own module."""

from __future__ import annotations

import shlex
import signal
import sys
import warnings

import typer

from segladder.cli.app import app
from segladder.errors import Interrupted, SegladderError, continue_with

# Exit codes every command keeps (README "Development"): scripts and CI branch on them.
EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

_interrupted = False


def _register() -> None:
    # Command groups register themselves on import; imported here so `segladder --help` lists them all.
    from segladder.cli import bench, boxes, data, demo, distill, ladder, models, predict, scene, synth, train  # noqa: F401


def _stop(signum, frame) -> None:
    # Remembered because some libraries turn Ctrl-C into their own exit (Lightning's fit calls sys.exit(1));
    # SIGTERM (a scheduler, `kill`) stops as cleanly as Ctrl-C instead of ending the process mid-write.
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def _is_usage_error(exc: Exception) -> bool:
    # typer vendors its own click, so usage errors are matched by their base class's name, not by identity.
    return any(cls.__name__ == "ClickException" for cls in type(exc).__mro__) and hasattr(exc, "show")


def run(args: list[str] | None = None) -> int:
    """Run the app on `args` (default: sys.argv) and return the exit code instead of exiting."""
    global _interrupted
    _register()
    _interrupted = False
    rerun = "segladder " + shlex.join(sys.argv[1:] if args is None else [str(a) for a in args])
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig, handler in previous.items():
        if handler is not signal.SIG_IGN:  # a caller that ignores Ctrl-C (nohup) keeps ignoring it
            signal.signal(sig, _stop)
    try:
        with continue_with(rerun), warnings.catch_warnings():  # continue_with: how to go on after a stop
            warnings.showwarning = _show_warning
            code = app(args=args, standalone_mode=False)
        code = code if isinstance(code, int) else EXIT_OK  # a command's return value is not an exit code
    except Interrupted as exc:
        typer.secho(f"interrupted: {exc}", fg=typer.colors.YELLOW, err=True)
        return EXIT_INTERRUPTED
    except SegladderError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        code = EXIT_USAGE
    except (typer.Abort, KeyboardInterrupt):
        code = EXIT_INTERRUPTED
    except OSError as exc:
        # A file in the way, a folder without permission: the user's files, shown as one line.
        where = f"{exc.filename}: " if exc.filename else ""
        typer.secho(f"error: {where}{exc.strerror or exc}", fg=typer.colors.RED, err=True)
        code = EXIT_USAGE
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_PROBLEMS)
    except Exception as exc:
        if not _is_usage_error(exc):
            raise
        code = getattr(exc, "exit_code", EXIT_USAGE)
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare command group: its help is the answer
            exc.show()
        else:
            ctx = getattr(exc, "ctx", None)
            more = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
            typer.secho(f"error: {exc.format_message().rstrip('.')}{more}", fg=typer.colors.RED, err=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if _interrupted or code == EXIT_INTERRUPTED:
        typer.secho(
            f"interrupted; what was finished is kept; continue with `{rerun}`",
            fg=typer.colors.YELLOW,
            err=True,
        )
        code = EXIT_INTERRUPTED
    return code


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Show segladder's own warnings as one `warning: ...` line, every other warning as Python shows it.

    Ours leave out the file and source line of the library that raised them.
    """
    from segladder.config import MovedKeyWarning

    if issubclass(category, MovedKeyWarning):
        typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def main() -> None:
    """Entry point of the console script and `python -m segladder`: 0 ok, 1 problems found, 2 bad input, 130 Ctrl-C."""
    sys.exit(run())

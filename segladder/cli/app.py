"""The Typer application every command module adds its commands to, and how a running command continues after
Ctrl-C (kept apart so command modules need not import the CLI's entry)."""

from collections.abc import Callable

import typer

app = typer.Typer(
    name="segladder",
    help="Train, debug, distil and ship segmentation models on satellite image sequences.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def same_command() -> str:
    return "the same command again"


_continue_hint: Callable[[], str] = same_command


def on_interrupt(hint: Callable[[], str]) -> None:
    """Register how the running command continues after Ctrl-C; `hint()` is asked only when it happens.

    The default, "the same command again", fits the commands that skip work already done (synth, data prepare).
    """
    global _continue_hint
    _continue_hint = hint


def continue_hint() -> str:
    return _continue_hint()

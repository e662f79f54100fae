"""The Typer application every command module adds its commands to (kept apart so they need not import the CLI's entry)."""

import typer

app = typer.Typer(
    name="segladder",
    help="Train, debug, distil and ship segmentation models on satellite image sequences.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

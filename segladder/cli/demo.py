"""`segladder demo`: the README's first command — a short ladder on embedded synthetic data."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console

from segladder.cli.app import app

console = Console()

# The demo's data: also what `segladder ladder --selftest` runs on.
DEMO_RECORDS, DEMO_VAL_RECORDS, DEMO_SIZE, DEMO_EPOCHS = 128, 32, 64, 5


@app.command("demo")
def demo(
    data: Path = typer.Option(
        None, "--data", help="Real data (raw root or cache) instead of the synthetic set."
    ),
    full: bool = typer.Option(
        False,
        "--full",
        help="The full ladder with its phase-1 budget (configs/ladder.yaml); CoaT_ULSTM runs when its "
        "ImageNet weights are here.",
    ),
    home: Path = typer.Option(
        None,
        "--home",
        help="Where synthetic data is cached (default: $SEGLADDER_HOME or ~/.cache/segladder).",
    ),
    records: int = typer.Option(DEMO_RECORDS, "--records", help="Synthetic training records."),
    val_records: int = typer.Option(DEMO_VAL_RECORDS, "--val-records", help="Synthetic validation records."),
    size: int = typer.Option(DEMO_SIZE, "--size", help="Synthetic image size."),
    epochs: int = typer.Option(DEMO_EPOCHS, "--epochs", help="Epochs per rung."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data and the training."),
    out: Path = typer.Option(None, "--out", help="Output folder (default: runs/demo/<timestamp>)."),
) -> None:
    """Generate synthetic data (once), train a short ladder, print the table and the report's path."""
    import torch

    from segladder.ladder import DEFAULT_RUNGS, QUICK_RUNGS, ladder_config
    from segladder.ladder.demo import default_home, demo_data, demo_values
    from segladder.report import run_and_report

    t0 = time.perf_counter()
    source = data or demo_data(home or default_home(), records, val_records, size, seed)
    device = (
        "GPU: " + torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    console.print(f"data: {source}\ndevice: {device}")
    values = (
        {"seed": seed, "data": {"num_workers": 0}, "trainer": {"overlays": 4}}
        if full
        else demo_values(epochs, seed)
    )
    base = ladder_config(source, values=values)
    out = out or Path("runs") / "demo" / time.strftime("%Y%m%d-%H%M%S")
    run_and_report(base, out, DEFAULT_RUNGS if full else QUICK_RUNGS, keep_going=True)
    console.print(f"demo finished in {time.perf_counter() - t0:.0f}s")


def run_selftest(
    out: Path | None, rungs: tuple[str, ...], profile: str, home: Path | None = None, world: str = "demo"
) -> None:
    """`segladder ladder --selftest`: the demo's budget on a synthetic world, clean and with every fault.

    Exits 1 when clean data fails or a fault is missed.
    """
    from segladder.errors import ConfigError
    from segladder.ladder import QUICK_RUNGS
    from segladder.ladder.demo import WORLDS, default_home, demo_data, demo_values, selftest
    from segladder.report import selftest_table

    if world not in WORLDS:
        raise ConfigError(f"--world {world}: unknown world; choose one of {', '.join(WORLDS)}.")
    out = out or Path("runs") / "selftest" / time.strftime("%Y%m%d-%H%M%S")
    width, opacity = WORLDS[world]
    data = demo_data(home or default_home(), DEMO_RECORDS, DEMO_VAL_RECORDS, DEMO_SIZE, 0, width, opacity)
    rows = selftest(
        out, data, demo_values(DEMO_EPOCHS, 0), rungs or QUICK_RUNGS, profile=profile, world=world
    )
    console.print(selftest_table(rows))
    console.print(f"selftest: {out / 'selftest.json'}")
    if not all(r.caught for r in rows):
        raise typer.Exit(1)

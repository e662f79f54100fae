"""`segladder synth ...`: generate synthetic datasets in the real layouts."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from segladder.cli.app import app
from segladder.data.layout import DEFAULT_SIZE, SPLITS

synth_app = typer.Typer(help="Generate synthetic datasets in the real layouts.", no_args_is_help=True)
app.add_typer(synth_app, name="synth")


@synth_app.command("contrails")
def contrails(
    out: Path = typer.Argument(..., help="Dataset directory to create (or resume into), e.g. data/synth."),
    records: int = typer.Option(
        64, "--records", help="Train records (at least 1); they carry individual masks."
    ),
    val_records: int = typer.Option(
        16, "--val-records", help="Validation records (pixel masks only); 0 for none."
    ),
    test_records: int = typer.Option(
        4, "--test-records", help="Test records (bands only, listed in sample_submission.csv); 0 for none."
    ),
    size: int = typer.Option(
        DEFAULT_SIZE, "--size", help="Image height and width in pixels (the competition uses 256)."
    ),
    seed: int = typer.Option(
        0, "--seed", help="Random seed: the same seed and size give byte-identical files."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a synthetic dataset in OUT made with another seed or size."
    ),
    width_scale: float = typer.Option(
        1.0,
        "--width-scale",
        help="Widen every contrail by this factor (1: the real 1–3 px; the demo's 64² world uses 3).",
    ),
    progress: bool = typer.Option(
        True, "--progress/--no-progress", help="Show a progress bar with ETA on stderr."
    ),
) -> None:
    """Write a synthetic GOES-16 contrail dataset in the Kaggle "Identify Contrails" layout.

    Records already complete in OUT are skipped, so an interrupted run can simply be repeated.
    """
    from segladder.data.synth import generate_contrails

    summary = generate_contrails(
        out,
        records=records,
        val_records=val_records,
        test_records=test_records,
        size=size,
        seed=seed,
        progress=progress,
        overwrite=overwrite,
        width_scale=width_scale,
    )
    table = Table(title=f"synthetic contrails, {summary.size}×{summary.size}, seed {summary.seed}")
    table.add_column("split")
    table.add_column("records", justify="right")
    table.add_column("with contrails", justify="right")
    table.add_column("mean contrail pixels", justify="right")
    for split in SPLITS:
        n = summary.records[split]
        if split in summary.positive_records:
            positive = (
                f"{summary.positive_records[split]} ({summary.positive_records[split] / max(n, 1):.0%})"
            )
            pixels = f"{summary.positive_pixel_fraction[split]:.3%}"
        else:
            positive = pixels = "unlabelled"
        table.add_row(split, str(n), positive, pixels)
    console = Console()
    console.print(table)
    console.print(
        f"{summary.written} record(s) written, {summary.skipped} already present; "
        f"{summary.positive_fraction:.0%} of labelled records have contrails. Dataset: {summary.path}"
    )

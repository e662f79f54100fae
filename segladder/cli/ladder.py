"""`segladder ladder` and `segladder viz`: the staged debugging ladder, and pictures of any run."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from segladder.cli._common import parse_str_list
from segladder.cli.app import app

console = Console()


@app.command("ladder")
def ladder(
    data: Path = typer.Option(
        None, "--data", help="Raw dataset root or prepared cache (frames and size are taken from a cache)."
    ),
    rungs: str = typer.Option(
        "",
        "--rungs",
        help="Comma-separated registered models (default: the ResNet-18 rungs up to CoaT_ULSTM).",
    ),
    budget: str = typer.Option(
        "", "--budget", help="Same budget for every rung, e.g. 'epochs=2,records=100,val_records=50'."
    ),
    config: Path = typer.Option(
        None, "--config", help="Base config (default: configs/ladder.yaml, the ladder's phase-1 settings)."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a base-config key, e.g. --set optim.lr=3e-4 (repeatable)."
    ),
    out: Path = typer.Option(None, "--out", help="Output folder (default: runs/ladder/<timestamp>)."),
    keep_going: bool = typer.Option(False, "--keep-going", help="Train every rung even after a gate fails."),
    gates: str = typer.Option(
        "calibrated",
        "--gates",
        help="Gate profile: 'calibrated' (any data; trains 5 epochs at LR 3e-3 without accumulation "
        "unless --config, --budget or --set say otherwise) or 'absolute' (fixed numbers and budget, "
        "for real data with pretrained encoders).",
    ),
    inject: str = typer.Option(
        None,
        "--inject",
        help="Train every rung with one deliberate fault: "
        "shuffled_labels, transposed_masks, wrong_frame, raw_kelvin, lr_spike, frozen_weights, fp16_overflow.",
    ),
    selftest: bool = typer.Option(
        False,
        "--selftest",
        help="Clean synthetic data, then every fault: is each caught at the rung it implicates, and is "
        "clean data never failed? Writes selftest.json.",
    ),
    world: str = typer.Option(
        "demo",
        "--world",
        help="With --selftest: 'demo' (the demo's contrails, 3x wider and 3x more opaque) or 'realistic' "
        "(real widths and opacities, where a short budget leaves rungs inconclusive).",
    ),
) -> None:
    """Train the rungs in order with the same data, budget and seed; check the gates; write a report.

    Exit 0 when every rung passed, 1 when a rung failed (a broken part, with its evidence), 3 when none
    failed but one or more were inconclusive (no fault found; the budget was too short for this data).
    """
    import time

    from segladder.ladder import DEFAULT_RUNGS, get_fault, ladder_config, parse_budget
    from segladder.report import run_and_report

    if selftest:
        from segladder.cli.demo import run_selftest

        run_selftest(out, tuple(parse_str_list(rungs) or ()), gates, world=world)
        return
    if data is None:
        raise typer.BadParameter(
            "give --data DATASET (or --selftest to run on synthetic data)", param_hint="--data"
        )
    fault = get_fault(inject) if inject else None
    base = ladder_config(
        data, config=config, budget=parse_budget(budget), overrides=list(set_), profile=gates
    )
    out = out or Path("runs") / "ladder" / time.strftime("%Y%m%d-%H%M%S")
    result = run_and_report(
        base, out, tuple(parse_str_list(rungs) or DEFAULT_RUNGS), keep_going, gates, fault
    )
    if result.exit_code:
        raise typer.Exit(result.exit_code)


@app.command("viz")
def viz(
    run_dir: Path = typer.Argument(..., help="A run directory made by `segladder train`."),
    data: Path = typer.Option(None, "--data", help="Dataset to draw (default: the run's own data.root)."),
    split: str = typer.Option("validation", "--split", help="Split to draw."),
    records: int = typer.Option(8, "--records", help="Records to draw."),
) -> None:
    """Overlays (ash RGB, truth, prediction, probability) from the best checkpoint, and the run's curves, as PNG."""
    from segladder.inference.visualise import visualise_run

    for path in visualise_run(run_dir, data, split, records):
        console.print(f"written: {path}")

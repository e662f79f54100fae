"""`segladder ladder` and `segladder viz`: seed 000's staged debugging, and pictures of any run."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from segladder.cli._common import parse_str_list
from segladder.cli.app import app

console = Console()


def ladder_base(config: Path | None, data: Path, budget: str | None, overrides: list[str]):
    """The shared config of every rung: configs/ladder.yaml (or `config`), the data, the budget, overrides."""
    from segladder.config import CONFIG_DIR, load_config
    from segladder.data.cache import ContrailsCache, is_cache

    sets = [f"data.root={data}"]
    if is_cache(data):
        o = ContrailsCache(data).options
        sets += [f"data.image_size={o.image_size}", f"data.frames=[{','.join(map(str, o.frames[-5:]))}]"]
    for part in parse_str_list(budget) or []:
        key, _, value = part.partition("=")
        field = {"epochs": "trainer.max_epochs", "records": "data.train_records",
                 "val_records": "data.val_records", "batches": "trainer.limit_train_batches"}.get(key)
        if field is None or not value:
            raise typer.BadParameter(f"'{part}': use epochs=N, records=N, val_records=N or batches=N", param_hint="--budget")
        sets.append(f"{field}={value}")
    return load_config(config or CONFIG_DIR / "ladder.yaml", sets + overrides)


def run_and_report(base, out: Path, rungs: tuple[str, ...], keep_going: bool) -> Path:
    from segladder.data.datasets import ContrailsDataset
    from segladder.ladder import run_ladder
    from segladder.report import ladder_table, write_report

    d = base.data
    # The validation set the report draws is opened first: a bad data path fails before any rung trains.
    val = ContrailsDataset(d.root, d.val_split, frames=d.frames, channels=d.channels, image_size=d.image_size,
                           normalize_ash=d.normalize_ash)
    if d.val_records:
        from torch.utils.data import Subset

        val = Subset(val, range(min(d.val_records, len(val))))
    result = run_ladder(base, out, rungs, keep_going=keep_going)
    report = write_report(result, val)
    console.print(ladder_table(result))
    if result.stopped_at:
        console.print(f"[red]stopped at {result.stopped_at}[/] (use --keep-going to train the remaining rungs)")
    console.print(f"report: {report}")
    return report


@app.command("ladder")
def ladder(
    data: Path = typer.Option(..., "--data", help="Raw dataset root or prepared cache (frames and size are taken from a cache)."),
    rungs: str = typer.Option("", "--rungs", help="Comma-separated registered models (default: the seed-000 ladder up to CoaT_ULSTM)."),
    budget: str = typer.Option("", "--budget", help="Same budget for every rung, e.g. 'epochs=2,records=100,val_records=50'."),
    config: Path = typer.Option(None, "--config", help="Base config (default: configs/ladder.yaml, the seed's phase-1 settings)."),
    set_: list[str] = typer.Option([], "--set", help="Override a base-config key, e.g. --set optim.lr=3e-4 (repeatable)."),
    out: Path = typer.Option(None, "--out", help="Output folder (default: runs/ladder/<timestamp>)."),
    keep_going: bool = typer.Option(False, "--keep-going", help="Train every rung even after a gate fails."),
) -> None:
    """Train the rungs in order with the same data, budget and seed; check the seed's gates; write a report."""
    import time

    from segladder.ladder import DEFAULT_RUNGS

    base = ladder_base(config, data, budget, list(set_))
    out = out or Path("runs") / "ladder" / time.strftime("%Y%m%d-%H%M%S")
    run_and_report(base, out, tuple(parse_str_list(rungs) or DEFAULT_RUNGS), keep_going)


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

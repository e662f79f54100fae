"""`segladder demo`: the README's first command — a short ladder on embedded synthetic data."""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer
from rich.console import Console

from segladder.cli.app import app

console = Console()
QUICK_RUNGS = ("ResNet18_SimplerFCN", "ResNet18_Simple", "ResNet18_U", "ResNet18_ULSTM")


def default_home() -> Path:
    return Path(os.environ.get("SEGLADDER_HOME", Path.home() / ".cache" / "segladder"))


def demo_data(home: Path, records: int, val_records: int, size: int, seed: int) -> Path:
    """Synthetic contrails and their cache (frames 0–4), made once and reused by later demos."""
    from segladder.data.cache import CacheOptions, prepare_cache
    from segladder.data.synth import generate_contrails

    raw = home / f"synth-contrails-{records}-{val_records}-{size}-s{seed}"
    cache = raw.with_name(raw.name + "-cache")
    if not (cache / "manifest.json").exists():
        generate_contrails(raw, records=records, val_records=val_records, test_records=8, size=size, seed=seed)
        prepare_cache(raw, cache, CacheOptions(frames=tuple(range(5)), image_size=size), workers=2)
    return cache


@app.command("demo")
def demo(
    data: Path = typer.Option(None, "--data", help="Real data (raw root or cache) instead of the synthetic set."),
    full: bool = typer.Option(False, "--full", help="The full ladder, CoaT_ULSTM included, with the seed's phase-1 budget."),
    home: Path = typer.Option(None, "--home", help="Where synthetic data is cached (default: $SEGLADDER_HOME or ~/.cache/segladder)."),
    records: int = typer.Option(128, "--records", help="Synthetic training records."),
    val_records: int = typer.Option(32, "--val-records", help="Synthetic validation records."),
    size: int = typer.Option(64, "--size", help="Synthetic image size."),
    epochs: int = typer.Option(8, "--epochs", help="Epochs per rung."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data and the training."),
    out: Path = typer.Option(None, "--out", help="Output folder (default: runs/demo/<timestamp>)."),
) -> None:
    """Generate synthetic data (once), train a short ladder, print the table and the report's path."""
    import torch

    from segladder.cli.ladder import ladder_base, run_and_report
    from segladder.ladder import DEFAULT_RUNGS

    t0 = time.perf_counter()
    source = data or demo_data(home or default_home(), records, val_records, size, seed)
    device = "GPU: " + torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    console.print(f"data: {source}\ndevice: {device}")
    overrides = [f"seed={seed}", "data.num_workers=0", "trainer.overlays=4"]
    if not full:
        # A CPU-sized budget: batch 8 without accumulation, a brisker LR, so four rungs fit in a few minutes.
        overrides += [f"trainer.max_epochs={epochs}", "trainer.accumulate_grad_batches=1", "optim.lr=3e-3",
                      "data.train_records=null", "loss=[{name: bce, pos_weight: 2.0}]"]
    base = ladder_base(None, source, None, overrides)
    out = out or Path("runs") / "demo" / time.strftime("%Y%m%d-%H%M%S")
    run_and_report(base, out, DEFAULT_RUNGS if full else QUICK_RUNGS, keep_going=True)
    console.print(f"demo finished in {time.perf_counter() - t0:.0f}s")

"""`segladder demo`: the README's first command, on embedded synthetic data."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from segladder.cli import app

console = Console()


def default_home() -> Path:
    return Path(os.environ.get("SEGLADDER_HOME", Path.home() / ".cache" / "segladder"))


@app.command("demo")
def demo(
    home: Path = typer.Option(None, "--home", help="Where the synthetic data and its cache live (default: $SEGLADDER_HOME or ~/.cache/segladder)."),
    records: int = typer.Option(160, "--records", help="Synthetic training records."),
    val_records: int = typer.Option(48, "--val-records", help="Synthetic validation records."),
    size: int = typer.Option(128, "--size", help="Image size of the synthetic data."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic data."),
) -> None:
    """Make (once) a synthetic contrails dataset and its cache, then show what was made."""
    from segladder.data.cache import CacheOptions, ContrailsCache, prepare_cache
    from segladder.data.synth import generate_contrails

    home = home or default_home()
    raw = home / f"synth-contrails-{records}-{val_records}-{size}-s{seed}"
    cache_dir = raw.with_name(raw.name + "-cache")
    generate_contrails(raw, records=records, val_records=val_records, test_records=8, size=size, seed=seed)
    opts = CacheOptions(frames=tuple(range(5)), image_size=size)
    if not (cache_dir / "manifest.json").exists():
        prepare_cache(raw, cache_dir, opts)
    cache = ContrailsCache(cache_dir)
    table = Table(title="segladder demo: synthetic contrails")
    for col in ("split", "records", "positive records", "positive pixels"):
        table.add_column(col, justify="right")
    for split in cache.splits:
        s = cache.split(split)
        if s.has_masks:
            masks = s.arrays["masks"]
            pos = int((masks.reshape(len(masks), -1).max(1) > 0).sum())
            table.add_row(split, str(len(s)), f"{pos} ({pos / len(s):.0%})", f"{masks.mean():.3%}")
        else:
            table.add_row(split, str(len(s)), "-", "-")
    console.print(table)
    console.print(f"raw data (competition layout): {raw}")
    console.print(f"cache (frames 0-4, uint8, {size}²):  {cache_dir}")
    console.print("next: `segladder data check` on it; the ladder and training land in later releases.")

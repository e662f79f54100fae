"""`segladder bench ...`: benchmark commands whose figures go into docs/benchmarks.md."""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer

from segladder.cli import app
from segladder.cli._common import parse_int_list

bench_app = typer.Typer(help="Benchmarks (figures for docs/benchmarks.md).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("data")
def data(
    root: Path = typer.Option(None, "--data", help="Raw dataset root (default: a synthetic one made in a temp folder)."),
    cache: Path = typer.Option(None, "--cache", help="Prepared cache of --data (default: prepared in a temp folder)."),
    records: int = typer.Option(64, "--records", help="Synthetic training records when no --data is given."),
    frames: str = typer.Option("0-4", "--frames", help="Frames per sample, e.g. '0-4' (5 frames)."),
    seconds: float = typer.Option(3.0, "--seconds", help="Seconds to time each path."),
) -> None:
    """Samples/s per core of raw-layout loading (with ash conversion) vs cached loading."""
    from segladder.data.bench import bench_data_loading
    from segladder.data.cache import CacheOptions, prepare_cache
    from segladder.data.synth import generate_contrails

    fr = parse_int_list(frames) or list(range(8))
    with tempfile.TemporaryDirectory(prefix="segladder-bench-") as tmp:
        if root is None:
            root = Path(tmp) / "raw"
            generate_contrails(root, records=records, val_records=0, test_records=0, size=256, seed=0)
        if cache is None:
            cache = Path(tmp) / "cache"
            prepare_cache(root, cache, CacheOptions(frames=tuple(fr)), ["train"])
        r = bench_data_loading(root, cache, fr, seconds=seconds)
    typer.echo(f"sample image shape (C, T, H, W): {r['sample_shape']}, one core, torch threads 1")
    typer.echo(f"raw layout + ash : {r['raw_samples_per_s']:9.1f} samples/s ({r['raw_samples']} samples)")
    typer.echo(f"cached (uint8)   : {r['cached_samples_per_s']:9.1f} samples/s ({r['cached_samples']} samples)")
    typer.echo(f"speed-up         : {r['speedup']:9.1f}×  (targets: ≥ 30×, cached ≥ 3,000 samples/s)")

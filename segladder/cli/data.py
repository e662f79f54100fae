"""`segladder data check|prepare`: validate raw records and build the compact cache."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from segladder.cli._common import parse_int_list, parse_str_list
from segladder.cli.app import app

data_app = typer.Typer(
    help="Validate the competition layout and prepare the compact cache.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
out = Console()


@data_app.command("check")
def check(
    root: Path = typer.Argument(
        ...,
        help="Dataset root: train/, validation/, test/ of records (competition layout) or "
        "train/, val/ holding images/ and masks/ (image folders).",
    ),
    splits: str = typer.Option(
        "", "--splits", help="Comma-separated splits to check (default: all present)."
    ),
    values: bool = typer.Option(
        True,
        "--values/--headers-only",
        help="Scan every value for NaN/inf and mask values (slower), or only shapes and dtypes.",
    ),
    workers: int = typer.Option(0, "--workers", help="Worker processes (0: one per core, up to 8)."),
) -> None:
    """Validate every record (or image/mask pair); print `record_id: reason` per bad one and exit 1 if any is bad."""
    from segladder.data.check import check_dataset

    report = check_dataset(root, parse_str_list(splits), values=values, workers=workers or None)
    for rid, reason in report.problems:
        typer.echo(f"{rid}: {reason}")
    counts = ", ".join(f"{n} {s}" for s, n in report.records.items())
    bad = len(report.bad_ids)
    what = "records" if report.layout == "competition" else "image/mask pairs"
    typer.echo(
        f"checked {sum(report.records.values())} {what} ({counts}) in {root} ({report.layout} layout): "
        f"{'all good' if report.ok else f'{bad} bad'}"
    )
    if not report.ok:
        raise typer.Exit(1)


@data_app.command("prepare")
def prepare(
    root: Path = typer.Argument(..., help="Dataset root in the competition layout."),
    out_dir: Path = typer.Option(..., "--out", help="Cache folder to create (or resume)."),
    frames: str = typer.Option(
        "", "--frames", help="Frames to keep, e.g. '0-4' or '3,4,5' (default: all 8; the label is frame 4)."
    ),
    splits: str = typer.Option("", "--splits", help="Comma-separated splits (default: all present)."),
    channels: str = typer.Option(
        "ash",
        "--channels",
        help="Input channels: groups ash, bands, diffs or names like band_11, diff_15_14.",
    ),
    size: int = typer.Option(
        0, "--size", help="Image size (default: the records' own); records of another size are resized."
    ),
    dtype: str = typer.Option("uint8", "--dtype", help="Storage: uint8 (compact) or float16."),
    interpolation: str = typer.Option(
        "bilinear", "--interpolation", help="Image resize: bilinear or bicubic (masks: nearest)."
    ),
    stats_records: int = typer.Option(
        512, "--stats-records", help="Training records sampled for mean/std (0: all)."
    ),
    workers: int = typer.Option(0, "--workers", help="Worker processes (0: one per core, up to 8)."),
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="Leave out bad records (each is logged) instead of failing."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rebuild a cache made with other options."),
) -> None:
    """Convert raw records into a memory-mapped cache; resumable, never half-valid."""
    from segladder.data.cache import CacheOptions, prepare_cache, refuse_cache_inside_dataset
    from segladder.data.contrails import native_size

    if root.is_dir():  # a missing ROOT is named by the reader
        refuse_cache_inside_dataset(root, out_dir, parse_str_list(splits))
    opts = CacheOptions(
        frames=tuple(parse_int_list(frames) or range(8)),
        channels=tuple(parse_str_list(channels) or ["ash"]),
        image_size=size or native_size(root),
        dtype=dtype,
        interpolation=interpolation,
        stats_records=stats_records,
    )
    res = prepare_cache(
        root,
        out_dir,
        opts,
        parse_str_list(splits),
        workers=workers or None,
        skip_bad=skip_bad,
        overwrite=overwrite,
    )
    table = Table(title=f"cache {res.path}")
    for col in ("split", "records", "skipped"):
        table.add_column(col)
    for split, n in res.records.items():
        table.add_row(split, str(n), str(len(res.skipped.get(split, []))))
    out.print(table)
    out.print(
        f"written {res.written}, reused from an earlier run {res.reused}; "
        f"frames {list(opts.frames)}, channels {list(opts.channels)}, {opts.dtype}, {opts.image_size}²"
    )


@data_app.command("folds")
def folds(
    root: Path = typer.Argument(
        ..., help="Dataset root (competition layout; a cache serves --by record only)."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Folds CSV to write (record_id, split, fold, has_contrail, group)."
    ),
    k: int = typer.Option(5, "--k", help="Number of folds."),
    by: str = typer.Option(
        "record",
        "--by",
        help="record, time (records within --window-minutes stay together) or "
        "group (records sharing --group-key stay together).",
    ),
    pool: str = typer.Option("train", "--pool", help="Splits to cut: train, validation or train,validation."),
    seed: int = typer.Option(0, "--seed", help="Seed of the assignment."),
    window_minutes: float = typer.Option(
        60.0, "--window-minutes", help="--by time: neighbours closer than this share a fold."
    ),
    group_key: str = typer.Option(
        "row_min,col_min", "--group-key", help="--by group: metadata field(s) naming a group."
    ),
) -> None:
    """Cut the labelled records into K folds, stratified by "has a contrail", for `train --folds`."""
    from segladder.data.folds import make_folds
    from segladder.io import refuse_overwriting_inputs

    refuse_overwriting_inputs({"--out": out}, {"ROOT": root})
    rows = make_folds(
        root,
        out,
        k=k,
        by=by,
        splits=parse_str_list(pool) or ["train"],
        seed=seed,
        window_minutes=window_minutes,
        group_key=group_key,
    )
    table = Table("fold", "records", "with contrail", "groups")
    for f in range(k):
        part = [r for r in rows if r.fold == f]
        table.add_row(
            str(f), str(len(part)), str(sum(r.has_contrail for r in part)), str(len({r.group for r in part}))
        )
    out_console = Console()
    out_console.print(table)
    out_console.print(f"written: {out}")

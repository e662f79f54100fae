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
    opacity_scale: float = typer.Option(
        1.0,
        "--opacity-scale",
        help="Thicken every contrail's ice by this factor, at most 0.9 opacity (1: as faint as real "
        "ones; the demo's 64² world uses 3).",
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
        opacity_scale=opacity_scale,
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


@synth_app.command("inject")
def inject(
    real: Path = typer.Argument(
        ...,
        help="Real labelled records in the competition layout: their skies, and their own labels, are kept.",
    ),
    out: Path = typer.Option(..., "--out", help="Dataset directory to create (or resume into)."),
    records: int = typer.Option(256, "--records", help="Train records to write (with individual masks)."),
    val_records: int = typer.Option(
        32,
        "--val-records",
        help="Validation records (pixel masks only), on skies training never sees; 0 for none.",
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same arguments give the same files."),
    corridors: float = typer.Option(
        3.2,  # segladder.data.inject.DEFAULT_CORRIDORS, as `synth contrails` draws them
        "--corridors",
        help="Mean flight corridors of contrails per 256² record that gets any (a fifth get none, as in "
        "`synth contrails`).",
    ),
    use: list[str] = typer.Option(None, "--use", help="Inject into only these record ids (repeatable)."),
    exclude: list[str] = typer.Option(None, "--exclude", help="Leave these record ids out (repeatable)."),
    exclude_like: Path = typer.Option(
        None,
        "--exclude-like",
        help="Leave out every record id found in this dataset root or split folder (e.g. the records you "
        "will score on).",
    ),
    val_backgrounds: int = typer.Option(
        None,
        "--val-backgrounds",
        help="Real records kept for the validation split's skies (default: a quarter, at least 1; 0 shares "
        "the train skies).",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a dataset in OUT made with other arguments."
    ),
    progress: bool = typer.Option(
        True, "--progress/--no-progress", help="Show a progress bar with ETA on stderr."
    ),
) -> None:
    """Draw synthetic contrails into real records (contrail injection), in the competition layout.

    Each output record is a real record, turned by one of the 8 rotations and flips, with contrails added
    in brightness-temperature space: band 14 cools towards the ice's top, every other band by its measured
    share (docs/data.md, "Contrail injection"). Its own labels stay; the injected contrails are labelled as
    `synth contrails` labels them.
    """
    from segladder.data.inject import inject_contrails

    summary = inject_contrails(
        real,
        out,
        records=records,
        val_records=val_records,
        seed=seed,
        corridors=corridors,
        use=use or (),
        exclude=exclude or (),
        exclude_like=exclude_like,
        val_backgrounds=val_backgrounds,
        progress=progress,
        overwrite=overwrite,
    )
    table = Table(title=f"contrails injected into {real}, seed {seed}")
    for col in ("split", "records", "with contrails", "real skies"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split, n in summary.records.items():
        skies = summary.backgrounds[split]
        table.add_row(split, str(n), str(summary.positive_records[split]), str(len(skies)))
    console = Console()
    console.print(table)
    shared = set(summary.backgrounds["train"]) & set(summary.backgrounds["validation"])
    console.print(
        f"{summary.written} record(s) written ({summary.injected_contrails} labelled contrails drawn), "
        f"{summary.skipped} already present"
        + ("; validation shares the train skies" if shared and summary.records["validation"] else "")
        + f". Dataset: {summary.path}"
    )


@synth_app.command("compare")
def compare(
    real: Path = typer.Argument(
        ..., help="Real records in the competition layout (e.g. the OpenContrails sample)."
    ),
    synth: Path = typer.Argument(
        None, help="Synthetic records to measure; omitted: generate a fresh set with the current generator."
    ),
    out: Path = typer.Option(
        Path("runs/synth-compare"), "--out", help="Folder for the figures stats.png and grid.png."
    ),
    json_file: Path = typer.Option(None, "--json", help="Write the rows as JSON to this file."),
    factor: float = typer.Option(
        1.0, "--factor", help="Tolerance = this (1 to 2) × the distance between the real set's two halves."
    ),
    records: int = typer.Option(
        128,  # segladder.data.realism.DEFAULT_SYNTH_RECORDS, written out: that module is slow to import
        "--records",
        help="Synthetic records to generate when SYNTH is omitted (at the real records' size); fewer make "
        "the distances noisier.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated synthetic set."),
    workers: int = typer.Option(
        1, "--workers", help="Worker processes reading records (0: one per core, up to 8)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars on stderr."),
    classifier: bool = typer.Option(
        True,
        "--classifier/--no-classifier",
        help="Also train a small CNN to tell synthetic patches from real ones and report its AUC "
        "(0.5: indistinguishable), beside REAL against itself.",
    ),
) -> None:
    """Measure synthetic records against real ones, row by row; exit 1 when any row is out of tolerance.

    Each row's tolerance is the distance between two halves of REAL (docs/data.md, "Synthetic vs real").
    """
    from segladder.data.realism import compare_datasets
    from segladder.io import refuse_folders_as_files, refuse_overwriting_inputs

    refuse_folders_as_files({"--json": json_file})
    refuse_overwriting_inputs(
        {
            "--out": out,
            **{f"--out/{name}": out / name for name in ("stats.png", "grid.png")},
            "--json": json_file,
        },
        {"REAL": real, "SYNTH": synth},
    )
    result = compare_datasets(
        real,
        synth,
        out=out,
        json_path=json_file,
        factor=factor,
        synth_records=records,
        seed=seed,
        workers=workers or None,
        progress=progress,
        classifier=classifier,
    )
    console = Console(width=max(Console().width, 120))
    console.print(_comparison_table(result))
    compared = [r for r in result.rows if r.ok is not None]
    within = sum(bool(r.ok) for r in compared)
    skipped = len(result.rows) - len(compared)
    typer.echo(f"real: {result.real}; synthetic: {result.synthetic}")
    typer.echo(
        f"figures: {', '.join(str(f) for f in result.figures)}"
        + (f"; rows: {json_file}" if json_file else "")
    )
    typer.echo(
        f"{within} of {len(compared)} rows within tolerance" + (f", {skipped} skipped" if skipped else "")
    )
    if result.classifier is not None:
        typer.echo(_classifier_line(result.classifier))
    if not result.ok:
        raise typer.Exit(1)


def _comparison_table(result) -> Table:
    """One line a row of `compare_datasets`' result: real and synthetic values, distance, tolerance, verdict."""
    table = Table(title=f"synthetic vs real: {result.n_real} real, {result.n_synthetic} synthetic records")
    for col, justify in (
        ("row", "left"),
        ("real", "right"),
        ("synthetic", "right"),
        ("distance", "right"),
        ("tolerance", "right"),
        ("", "left"),
    ):
        table.add_column(col, justify=justify)
    for r in result.rows:
        unit = f" {r.unit}" if r.unit else ""
        if r.skipped:
            table.add_row(r.name, "", "", "", "", f"skipped: {r.skipped}")
            continue
        table.add_row(
            r.name,
            f"{r.real:.4g}{unit}",
            f"{r.synthetic:.4g}{unit}",
            f"{r.distance:.3g}",
            f"{r.tolerance:.3g}",
            "ok" if r.ok else "[red]OUT[/red]",
        )
    return table


def _classifier_line(aucs: dict) -> str:
    """The patch classifier's verdict in one line: synthetic against real, and the real floor."""
    syn, floor = aucs["synthetic"], aucs["floor"]
    if syn is None:
        return (
            "patch classifier: skipped (it needs 2 records of each set, one to train on and one to score; "
            "real records SYNTH was injected into do not count)"
        )
    line = (
        f"patch classifier AUC, synthetic vs real: {syn['auc']:.3f} (0.5: indistinguishable; trained on "
        f"{syn['train_records'][0]} real and {syn['train_records'][1]} synthetic records, scored on others"
        + (
            f"; {syn['real_records_left_out']} real records left out: SYNTH's skies"
            if syn.get("real_records_left_out")
            else ""
        )
        + ")"
    )
    if floor is not None:
        line += f"; real vs real: {floor['auc']:.3f} (the floor, noisy with few records)"
    return line

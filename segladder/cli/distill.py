"""`segladder distill compare`: teacher vs student (vs the student without the teacher), measured."""

from __future__ import annotations

from pathlib import Path

import typer

from segladder.cli.app import app

distill_app = typer.Typer(
    help="Knowledge distillation (train with task: distillation, e.g. configs/distill_b0_from_b3).",
    no_args_is_help=True,
)
app.add_typer(distill_app, name="distill")


@distill_app.command("compare")
def compare(
    teacher: Path = typer.Argument(..., help="The teacher's checkpoint (best.ckpt)."),
    student: Path = typer.Argument(..., help="The distilled student's checkpoint."),
    data: Path = typer.Option(
        ..., "--data", help="Dataset to score on (contrails raw/cache or an image/mask folder)."
    ),
    baseline: Path = typer.Option(
        None, "--baseline", help="The student's architecture trained without the teacher."
    ),
    split: str = typer.Option("validation", "--split", help="Split to score (validation also finds val/)."),
    device: str = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    batch_size: int = typer.Option(
        4, "--batch-size", min=1, help="Batch for scoring and timing (the same for all)."
    ),
    warmup: int = typer.Option(3, "--warmup", min=0, help="Untimed forward passes first."),
    repeats: int = typer.Option(10, "--repeats", min=1, help="Timed forward passes."),
    json_out: Path = typer.Option(None, "--json", help="Write the JSON here (default: OUT/compare.json)."),
    out: Path = typer.Option(
        Path("distill-compare"), "--out", help="Folder for compare.json and compare.png."
    ),
) -> None:
    """Params, Dice, mIoU, ms/image, peak memory and weights size per model; speed-up and accuracy share."""
    from segladder.inference.compare import compare as run_compare
    from segladder.inference.compare import format_table
    from segladder.io import atomic_write_json, refuse_folders_as_files, refuse_overwriting_inputs

    refuse_folders_as_files({"--json": json_out})
    writes = {"--out": out, **{f"OUT/{name}": out / name for name in ("compare.json", "compare.png")}}
    if json_out is not None:
        writes["--json"] = json_out
    refuse_overwriting_inputs(
        writes, {"TEACHER": teacher, "STUDENT": student, "--baseline": baseline, "--data": data}
    )
    result = run_compare(
        teacher,
        student,
        data,
        baseline=baseline,
        split=split,
        device=device,
        batch_size=batch_size,
        warmup=warmup,
        repeats=repeats,
        out=out,
    )
    if json_out is not None:
        atomic_write_json(json_out, result.as_json())
    typer.echo(format_table(result))
    typer.echo(f"wrote {out / 'compare.json'}, {out / 'compare.png'}" + (f", {json_out}" if json_out else ""))

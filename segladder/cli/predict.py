"""`segladder predict | submission check | pipeline run|evaluate | pseudo-label | export onnx`: inference commands."""

from __future__ import annotations

from pathlib import Path

import typer

from segladder.cli.app import app
from segladder.errors import SegladderError

submission_app = typer.Typer(
    help="Check a submission file against the competition format.", no_args_is_help=True
)
pipeline_app = typer.Typer(
    help="The classify-then-segment pipeline (a YAML file, see docs/inference.md).",
    no_args_is_help=True,
)
export_app = typer.Typer(help="Export a checkpoint for deployment.", no_args_is_help=True)
app.add_typer(submission_app, name="submission")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(export_app, name="export")

_DATA_HELP = "Dataset root (competition layout) or prepared cache."
_BATCH_HELP = "Records per batch."
_DEVICE_HELP = "cpu, cuda or cuda:N (default: cuda when available)."
_WORKERS_HELP = "DataLoader worker processes (0: read in this process)."


def _weights(text: str) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise SegladderError(f"--weights '{text}': expected comma-separated numbers, e.g. 1,2.") from None


def _refuse_overwriting(writes: dict, checkpoints=(), folds: bool = False, **reads) -> None:
    """Refuse, before any work, an output that is (or would overwrite what lies in) an input.

    The inputs are the checkpoints, their run folders, the data and the pipeline file; see
    `segladder.io.refuse_overwriting_inputs`.
    """
    from segladder.io import refuse_overwriting_inputs, run_folder_of

    inputs = {k: v for k, v in reads.items() if v is not None}
    itself = []
    checkpoints = list(checkpoints or [])
    for i, ckpt in enumerate(checkpoints):
        name = "CHECKPOINT" if len(checkpoints) == 1 else f"CHECKPOINT {i + 1}"
        inputs[name] = ckpt
        inputs[f"the run folder of {name}"] = run_folder_of(ckpt)
        # with --folds CHECKPOINT is the run folder itself
        itself += [name, f"the run folder of {name}"] if folds else [f"the run folder of {name}"]
    refuse_overwriting_inputs(writes, inputs, shallow=tuple(itself))


def _report(pred) -> None:
    typer.echo(
        f"{pred.records} records → {pred.out}: {pred.positive_records} with contrails "
        f"({pred.positive_pixels} pixels) at threshold {pred.threshold:.4g} ({pred.threshold_source}); "
        f"submission {pred.submission}"
    )
    if pred.dice is not None:
        typer.echo(f"global Dice against the split's masks (before component removal): {pred.dice:.4f}")
    if pred.submission_problems:
        more = len(pred.submission_problems) - 1
        typer.secho(
            f"warning: submission.csv does not fit the split's records: {pred.submission_problems[0]}"
            + (f" (and {more} more)" if more else "")
            + "; see 'Resolution' in docs/inference.md",
            fg=typer.colors.YELLOW,
            err=True,
        )


def _fold_ensemble(
    checkpoints: list[Path] | None, min_component: int | None
) -> tuple[list[Path], tuple[float, str], int]:
    """For --folds: the checkpoints, out-of-fold threshold and component size of a `train --folds` run.

    The threshold comes with where it comes from; --min-component, when given, wins over the stored size.
    """
    from segladder.inference.folds import read_fold_ensemble

    if len(checkpoints or []) != 1:
        raise SegladderError("--folds takes one run directory (of `segladder train CONFIG --folds K`).")
    run = checkpoints[0]
    ens = read_fold_ensemble(run)
    if min_component is None:  # an explicit --min-component, 0 included, wins over the stored size
        min_component = ens.min_component
    return (
        [Path(c) for c in ens.checkpoints],
        (ens.threshold, f"out-of-fold, from {run}/ensemble.json"),
        min_component,
    )


@app.command("predict")
def predict_cmd(
    checkpoints: list[Path] = typer.Argument(
        None, help="Checkpoint(s) to ensemble (best.ckpt / last.ckpt); omit with --onnx."
    ),
    data: Path = typer.Option(..., "--data", help=_DATA_HELP),
    out: Path = typer.Option(
        ..., "--out", help="Output folder: probs/, masks/, submission.csv, overlays/, predict.json."
    ),
    split: str = typer.Option("test", "--split", help="Split to predict."),
    onnx: Path = typer.Option(
        None, "--onnx", help="Run an exported ONNX model with onnxruntime instead of checkpoints."
    ),
    weights: str = typer.Option(
        "", "--weights", help="Comma-separated ensemble weights, one per checkpoint (default: equal)."
    ),
    threshold: float = typer.Option(
        None,
        "--threshold",
        help="Fixed probability threshold (default: the stored one; ensembles: weighted mean).",
    ),
    percentile: float = typer.Option(
        None,
        "--percentile",
        help="Threshold at this percentile of all predicted pixels, e.g. 99.5 (3rd-place method).",
    ),
    tta: bool = typer.Option(
        False, "--tta/--no-tta", help="Average with horizontally and vertically flipped predictions."
    ),
    tta_shift: int = typer.Option(
        0,
        "--tta-shift",
        help="Pixels to shift flipped-back TTA predictions by (half-pixel label offset; see docs/inference.md).",
    ),
    min_component: int = typer.Option(
        None,
        "--min-component",
        min=0,
        help="Remove connected components smaller than this many pixels (the classify-then-segment "
        "experiments tried 10; default 0, or the size stored with --folds / an ONNX model; 0 keeps every "
        "component).",
    ),
    overlays: int = typer.Option(0, "--overlays", help="Draw PNG overlays of the first N records."),
    batch_size: int = typer.Option(8, "--batch-size", help=_BATCH_HELP),
    device: str = typer.Option(None, "--device", help=_DEVICE_HELP),
    workers: int = typer.Option(0, "--workers", help=_WORKERS_HELP),
    folds: bool = typer.Option(
        False,
        "--folds",
        help="CHECKPOINTS is one run of `train --folds`: average its folds and "
        "apply the out-of-fold threshold and component size.",
    ),
) -> None:
    """Predict a split: float16 probability maps, binary masks, submission.csv and optional overlays."""
    from segladder.inference.predict import predict

    _refuse_overwriting({"--out": out}, checkpoints, folds, **{"--data": data, "--onnx": onnx})
    default_threshold = None
    if folds:
        checkpoints, default_threshold, min_component = _fold_ensemble(checkpoints, min_component)
    pred = predict(
        checkpoints or [],
        data,
        out,
        split=split,
        onnx=onnx,
        weights=_weights(weights),
        threshold=threshold,
        percentile=percentile,
        tta=tta,
        tta_shift=tta_shift,
        min_component=min_component,
        overlays=overlays,
        batch_size=batch_size,
        device=device,
        workers=workers,
        default_threshold=default_threshold,
    )
    _report(pred)


@submission_app.command("check")
def submission_check(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="submission.csv to check."),
    data: Path = typer.Option(
        None, "--data", help=f"{_DATA_HELP} Without it only the format is checked, not the ids."
    ),
    split: str = typer.Option(
        "test", "--split", help="Split whose record ids the submission must list exactly."
    ),
) -> None:
    """Validate header, ids (missing, extra, duplicate) and run-length encodings; one line per problem, exit 1 if any."""
    from segladder.inference.submission import check_submission

    problems = check_submission(file, data, split)
    for line in problems:
        typer.echo(line)
    if problems:
        typer.echo(f"{file}: {len(problems)} problem(s)")
        raise typer.Exit(1)
    typer.echo(f"{file}: ok")


@pipeline_app.command("run")
def pipeline_run(
    pipeline: Path = typer.Argument(..., help="Pipeline YAML (classifier/segmenter/filter/stage2)."),
    data: Path = typer.Option(..., "--data", help=_DATA_HELP),
    out: Path = typer.Option(..., "--out", help="Output folder: predict's files plus filter.csv."),
    split: str = typer.Option("test", "--split", help="Split to predict."),
    threshold: float = typer.Option(
        None, "--threshold", help="Fixed mask threshold (overrides the pipeline's)."
    ),
    percentile: float = typer.Option(
        None, "--percentile", help="Mask threshold at this percentile of all pixels."
    ),
    overlays: int = typer.Option(0, "--overlays", help="Draw PNG overlays of the first N records."),
    batch_size: int = typer.Option(8, "--batch-size", help=_BATCH_HELP),
    device: str = typer.Option(None, "--device", help=_DEVICE_HELP),
    workers: int = typer.Option(0, "--workers", help=_WORKERS_HELP),
) -> None:
    """Filter records with stage 1, segment the kept ones with stage 2; the filtered-out get empty masks."""
    from segladder.inference.pipeline import run_pipeline

    _refuse_overwriting({"--out": out}, PIPELINE=pipeline, **{"--data": data})
    pred = run_pipeline(
        pipeline,
        data,
        out,
        split=split,
        threshold=threshold,
        percentile=percentile,
        overlays=overlays,
        batch_size=batch_size,
        device=device,
        workers=workers,
    )
    _report(pred)


@pipeline_app.command("evaluate")
def pipeline_evaluate(
    pipeline: Path = typer.Argument(..., help="Pipeline YAML (classifier/segmenter/filter/stage2)."),
    data: Path = typer.Option(..., "--data", help=_DATA_HELP),
    split: str = typer.Option("validation", "--split", help="Labelled split to evaluate on."),
    out: Path = typer.Option(None, "--out", help="Also write pipeline_metrics.json and per_record.csv here."),
    batch_size: int = typer.Option(8, "--batch-size", help=_BATCH_HELP),
    device: str = typer.Option(None, "--device", help=_DEVICE_HELP),
    workers: int = typer.Option(0, "--workers", help=_WORKERS_HELP),
) -> None:
    """Per stage: filter accuracy/AUC, Dice lost to wrong filtering, Dice on positives, final global Dice."""
    from segladder.inference.pipeline import evaluate_pipeline

    _refuse_overwriting({"--out": out}, PIPELINE=pipeline, **{"--data": data})
    r = evaluate_pipeline(
        pipeline, data, split=split, out=out, batch_size=batch_size, device=device, workers=workers
    )
    s1, f = r["stage1"], r["filtering"]

    def scores(d: dict | None) -> str:
        if d is None:
            return "-"
        auc = "n/a (one class)" if d["auc"] is None else f"{d['auc']:.4f}"
        return f"accuracy {d['acc']:.4f}  AUC {auc}"

    typer.echo(
        f"{r['records']} records of {split}, {r['positives']} with contrails; "
        f"mask threshold {r['threshold']:.4g} ({r['threshold_source']})"
    )
    typer.echo(
        f"stage 1 filter ({s1['rule']}, top-k {s1['top_k']}): kept {s1['kept']}, "
        f"positives filtered out {s1['positives_filtered_out']}, negatives kept {s1['negatives_kept']}"
    )
    typer.echo(f"  classifier        {scores(s1['classifier'])}")
    typer.echo(f"  segmenter top-k   {scores(s1['segmenter_topk'])}")
    typer.echo(f"  combined filter   {scores(s1['filter'])}")
    typer.echo("stage 2 global Dice (all records | positive records):")
    for name, m in r["stage2"]["members"].items():
        pos = "-" if m["positives"] is None else f"{m['positives']['dice']:.4f}"
        typer.echo(f"  {name:<24} {m['all']['dice']:.4f} | {pos}   (its threshold {m['threshold']:.4g})")
    ens = r["stage2"]["ensemble"]
    pos = "-" if ens["positives"] is None else f"{ens['positives']['dice']:.4f}"
    typer.echo(f"  {'ensemble':<24} {ens['all']['dice']:.4f} | {pos}")
    typer.echo(
        f"filtering: no filter {f['dice_no_filter']:.4f}, filtered {f['dice_filtered']:.4f}, "
        f"oracle {f['dice_oracle']:.4f} → lost to wrong filtering {f['loss_from_wrong_filtering']:.4f}"
    )
    typer.echo(
        f"final global Dice (components < {r['final']['min_component']} px removed): {r['final']['dice']:.4f}"
    )


@app.command("pseudo-label")
def pseudo_label_cmd(
    checkpoints: list[Path] = typer.Argument(..., help="Teacher checkpoint(s); several are averaged."),
    data: Path = typer.Option(..., "--data", help=_DATA_HELP),
    out: Path = typer.Option(..., "--out", help="Output folder: labels/<record_id>.npy and index.json."),
    split: str = typer.Option("train", "--split", help="Split to label."),
    weights: str = typer.Option("", "--weights", help="Comma-separated teacher weights (default: equal)."),
    tta: bool = typer.Option(False, "--tta/--no-tta", help="Average with flipped predictions."),
    tta_shift: int = typer.Option(0, "--tta-shift", help="Pixels to shift flipped-back TTA predictions by."),
    batch_size: int = typer.Option(8, "--batch-size", help=_BATCH_HELP),
    device: str = typer.Option(None, "--device", help=_DEVICE_HELP),
    workers: int = typer.Option(0, "--workers", help=_WORKERS_HELP),
) -> None:
    """Write soft labels (float16 probability maps) for every record of a split."""
    from segladder.inference.pseudo import pseudo_label

    _refuse_overwriting({"--out": out}, checkpoints, **{"--data": data})
    res = pseudo_label(
        checkpoints,
        data,
        out,
        split=split,
        weights=_weights(weights),
        tta=tta,
        tta_shift=tta_shift,
        batch_size=batch_size,
        device=device,
        workers=workers,
    )
    typer.echo(f"{res.records} soft labels of {split} → {res.out}; index {res.index}")


@export_app.command("onnx")
def export_onnx_cmd(
    checkpoint: Path = typer.Argument(
        ..., help="Checkpoint to export (with --folds: a `train --folds` run directory)."
    ),
    out: Path = typer.Option(..., "--out", help="ONNX file to write."),
    data: Path = typer.Option(
        None, "--data", help=f"{_DATA_HELP} When given, parity is also checked on real records."
    ),
    split: str = typer.Option("validation", "--split", help="Split whose first records check parity."),
    records: int = typer.Option(4, "--records", help="Real records to check parity on."),
    opset: int = typer.Option(17, "--opset", min=7, help="ONNX opset version."),
    atol: float = typer.Option(
        1e-4, "--atol", min=0.0, help="Largest allowed |ONNX − PyTorch| on probabilities."
    ),
    folds: bool = typer.Option(
        False,
        "--folds",
        help="Export the fold ensemble of a `train --folds` run as one model (mean probability, "
        "out-of-fold threshold).",
    ),
) -> None:
    """Export to ONNX (dynamic batch; input contract and threshold in the metadata) and check parity with PyTorch."""
    from segladder.inference.export import export_onnx

    _refuse_overwriting({"--out": out}, [checkpoint], folds, **{"--data": data})
    res = export_onnx(
        checkpoint, out, data=data, split=split, check_records=records, opset=opset, atol=atol, folds=folds
    )
    real = (
        "no --data given"
        if res.max_abs_diff_real is None
        else f"{res.max_abs_diff_real:.2e} on {res.real_records} real records"
    )
    typer.echo(
        f"wrote {res.path}; max |ONNX − PyTorch| on probabilities: {res.max_abs_diff_random:.2e} on random input, {real}; "
        f"input (batch, {', '.join(map(str, res.input_shape))})"
    )

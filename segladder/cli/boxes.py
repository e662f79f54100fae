"""`segladder boxes ...`: box adjustment (Snapper) — synthetic and photo sets, jitter, score, adjust, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from segladder.cli.app import app

boxes_app = typer.Typer(
    help="Box adjustment (Snapper, Williams et al., IUI 2024): snap rough boxes onto object edges.",
    no_args_is_help=True,
)
app.add_typer(boxes_app, name="boxes")


def _parse_box(text: str) -> tuple[float, float, float, float]:
    from segladder.errors import DataError

    try:
        x, y, w, h = (float(v) for v in text.split(","))
    except ValueError:
        raise DataError(
            f"--box '{text}': expected x,y,w,h in image pixels, e.g. --box 10,20,64,48."
        ) from None
    return x, y, w, h


def _fmt(box) -> str:
    return ",".join(f"{v:.2f}" for v in box)


def _min_confidence_option():
    return typer.Option(
        None,
        "--min-confidence",
        help="Keep the rough edge wherever the model's confidence for it is below this (0: move every edge, "
        "1: keep every rough edge). Default: the gate stored in the checkpoint, chosen on its validation "
        "boxes (0 for checkpoints trained before the gate).",
    )


def _max_move_option():
    return typer.Option(
        None,
        "--max-move",
        help="Keep the rough edge wherever the model would move it by more than this fraction of the box's "
        "width (left, right) or height (top, bottom); 0.1 = 10 %. With --min-confidence, the two replace the "
        "stored gate together (the one not given sets no limit).",
    )


@boxes_app.command("synth")
def synth(
    out: Path = typer.Argument(
        ..., help="Folder to write: images/, train.json and val.json (COCO detection)."
    ),
    train: int = typer.Option(200, "--train", min=0, help="Training images."),
    val: int = typer.Option(50, "--val", min=0, help="Validation images."),
    size: int = typer.Option(128, "--size", help="Image side in pixels (at least 16)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
) -> None:
    """Write a synthetic COCO box set: textured backgrounds, varied shapes with exact boxes, some touching or overlapping."""
    from segladder.data.boxes_synth import write_box_synth

    r = write_box_synth(out, train, val, size, seed)
    typer.echo(f"{r.boxes['train']} training and {r.boxes['val']} validation boxes")
    typer.echo(
        f"train with: segladder train snapper --set data.coco.images={r.images} data.coco.train={r.train} "
        f"data.coco.val={r.val}"
    )


@boxes_app.command("photos")
def photos(
    out: Path = typer.Argument(
        ..., help="Folder to write: images/, train.json, val.json and test.json (COCO)."
    ),
    scales: str = typer.Option(
        "1,0.75,0.5", "--scales", help="Scales each photo is written at, comma-separated."
    ),
    crops: bool = typer.Option(
        True, "--crops/--no-crops", help="Also write four corner crops at each scale."
    ),
) -> None:
    """Write a small real-photograph COCO box set: scikit-image's bundled photos with hand-written boxes.

    It is split by photo (train: coins, rocket; val: astronaut, coffee; test: camera, chelsea).
    """
    from segladder.data.box_photos import write_box_photos
    from segladder.errors import DataError

    try:
        values = tuple(float(v) for v in scales.split(","))
    except ValueError:
        raise DataError(
            f"--scales '{scales}': expected numbers separated by commas, e.g. 1,0.75,0.5."
        ) from None
    r = write_box_photos(out, values, crops)
    typer.echo(
        ", ".join(f"{split}: {r.boxes[split]} boxes on {r.images_written[split]} images" for split in r.boxes)
    )
    typer.echo(
        f"train with: segladder train snapper --set data.coco.images={r.images} data.coco.train={r.train} "
        f"data.coco.val={r.val}"
    )
    typer.echo(
        f"held-out photos: segladder boxes evaluate RUN/checkpoints/best.ckpt --images {r.images} --annotations {r.test} --out OUT"
    )


@boxes_app.command("jitter")
def jitter(
    gt: Path = typer.Argument(..., help="Ground-truth COCO detection file."),
    out: Path = typer.Option(..., "--out", help="Rough boxes to write (COCO, same annotation ids)."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives the same rough boxes."),
) -> None:
    """Rough boxes as in the paper: centre moved up to 10% of each side, width and height scaled in [0.9, 1.1]."""
    from segladder.inference.boxes import jitter_file
    from segladder.io import refuse_overwriting_inputs

    refuse_overwriting_inputs({"--out": out}, {"GT": gt})
    typer.echo(f"{jitter_file(gt, out, seed)} rough boxes written to {out}")


@boxes_app.command("score")
def score(
    gt: Path = typer.Argument(..., help="Ground-truth COCO detection file."),
    boxes: Path = typer.Argument(
        ..., help="Boxes to score: a COCO file or a list of {id, bbox}, matched by annotation id."
    ),
    json_out: Path = typer.Option(None, "--json", help="Also write the scores as JSON here."),
) -> None:
    """The paper's Table 1: mIoU, IoU > 0.9, edges and corners within 1 and 3 px."""
    from segladder.inference.boxes import score_files
    from segladder.io import atomic_write_json, refuse_folders_as_files, refuse_overwriting_inputs
    from segladder.metrics import BOX_KEYS

    if json_out is not None:
        refuse_folders_as_files({"--json": json_out})
        refuse_overwriting_inputs({"--json": json_out}, {"GT": gt, "BOXES": boxes})
    result = score_files(gt, boxes)
    before = result.get("before")
    if before is not None:  # a file written by `boxes adjust`: its rough boxes travel with it
        typer.echo(f"{'':<20} {'rough':>7} {'adjusted':>9} {'change':>7}")
    for k in BOX_KEYS:
        if before is None:
            typer.echo(f"{k:<20} {100 * result[k]:6.2f}%")
        else:
            typer.echo(
                f"{k:<20} {100 * before[k]:6.2f}% {100 * result[k]:8.2f}% {100 * (result[k] - before[k]):+6.2f}"
            )
    typer.echo(
        f"{'boxes':<20} {result['boxes']}"
        + (f" ({result['missing']} ground-truth boxes had none)" if result["missing"] else "")
    )
    if "edges" in result:
        e = result["edges"]
        typer.echo(f"{'edges':<20} {e['moved']} moved, {e['kept']} kept at the rough position")
    if json_out is not None:
        atomic_write_json(json_out, result)


@boxes_app.command("adjust")
def adjust(
    checkpoint: Path = typer.Argument(..., help="A best.ckpt or last.ckpt of a `boxes` run."),
    image: Path = typer.Argument(None, help="One image, with --box (otherwise give --images and --boxes)."),
    box: str = typer.Option(None, "--box", help="One rough box x,y,w,h on IMAGE."),
    images: Path = typer.Option(None, "--images", help="Image folder of the --boxes file."),
    boxes: Path = typer.Option(None, "--boxes", help="Rough boxes (COCO) to adjust."),
    out: Path = typer.Option(
        None,
        "--out",
        help="Adjusted boxes JSON (with --boxes) or PNG (with --box; default: IMAGE's name + .snapped.png).",
    ),
    batch_size: int = typer.Option(64, "--batch-size", help="Crops per batch."),
    refine: int = typer.Option(
        None, "--refine", help="Run the snapped box through again this often (default: config)."
    ),
    device: str = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: cuda when present)."),
    min_confidence: float = _min_confidence_option(),
    max_move: float = _max_move_option(),
) -> None:
    """Snap rough boxes onto object edges: a whole COCO file (batched) or one box on one image.

    An edge the do-no-harm gate does not let move (default: the gate stored in the checkpoint; or
    --min-confidence / --max-move) keeps its rough position; the output says how many edges moved.
    """
    from segladder.inference.box_gate import check_max_move, check_min_confidence
    from segladder.io import refuse_overwriting_inputs

    check_min_confidence(min_confidence)
    check_max_move(max_move)
    reads = {"CHECKPOINT": checkpoint, "IMAGE": image, "--boxes": boxes}
    if image is not None:
        if box is None:
            raise typer.BadParameter("IMAGE needs --box x,y,w,h.")
        from segladder.inference.boxes import adjust_single

        png = out or image.with_suffix(".snapped.png")
        refuse_overwriting_inputs({"--out" if out else "the default --out": png}, reads)
        snapped, conf, gate = adjust_single(
            checkpoint,
            image,
            _parse_box(box),
            png,
            device=device,
            refine_steps=refine,
            min_confidence=min_confidence,
            max_move=max_move,
        )
        typer.echo(_fmt(snapped))
        moved = ", ".join(
            f"{name} {'moved' if m else 'kept'}"
            for name, m in zip(("left", "top", "right", "bottom"), gate["moved"], strict=True)
        )
        typer.echo(f"edge confidence (left, top, right, bottom): {_fmt(conf)}; picture: {png}", err=True)
        typer.echo(
            f"do-no-harm gate: {gate['describe']}, {gate['source']}; {moved}",
            err=True,
        )
        return
    if images is None or boxes is None or out is None:
        raise typer.BadParameter(
            "give --images DIR --boxes ROUGH.json --out ADJUSTED.json, or IMAGE --box x,y,w,h."
        )
    from segladder.inference.boxes import adjust_file

    refuse_overwriting_inputs({"--out": out}, reads)
    r = adjust_file(
        checkpoint,
        images,
        boxes,
        out,
        batch_size=batch_size,
        device=device,
        refine_steps=refine,
        min_confidence=min_confidence,
        max_move=max_move,
    )
    typer.echo(f"do-no-harm gate: {r.gate.describe()}, {r.gate_source}")
    typer.echo(
        f"{r.boxes} boxes adjusted: {r.edges_moved} edges moved, {r.edges_kept} kept at the rough position: {out}"
    )


@boxes_app.command("evaluate")
def evaluate(
    checkpoint: Path = typer.Argument(..., help="A best.ckpt or last.ckpt of a `boxes` run."),
    images: Path = typer.Option(..., "--images", help="Image folder."),
    annotations: Path = typer.Option(
        ..., "--annotations", help="Ground-truth COCO file to jitter and score."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Folder for metrics.json, table.md, rough/adjusted JSON, examples.png."
    ),
    seed: int = typer.Option(0, "--seed", help="Jitter seed."),
    batch_size: int = typer.Option(64, "--batch-size", help="Crops per batch."),
    refine: int = typer.Option(None, "--refine", help="Refinement passes (default: config)."),
    decode: str = typer.Option(None, "--decode", help="expectation or argmax (default: config)."),
    device: str = typer.Option(None, "--device", help="cpu, cuda or cuda:N."),
    min_confidence: float = _min_confidence_option(),
    max_move: float = _max_move_option(),
) -> None:
    """Jitter → adjust → score: rough boxes, adjusted ones, and adjusted ones with the gate.

    Writes JSON, the calibration of edge confidence (calibration.json, reliability.png) and a PNG of the best
    and worst boxes.
    """
    from segladder.inference.box_gate import check_max_move, check_min_confidence
    from segladder.inference.boxes import EVALUATION_FILES, before_after_table, evaluate_boxes
    from segladder.io import refuse_overwriting_inputs

    check_min_confidence(min_confidence)
    check_max_move(max_move)
    refuse_overwriting_inputs(
        {f"OUT/{name}": out / name for name in EVALUATION_FILES},
        {"--annotations": annotations, "CHECKPOINT": checkpoint},
    )
    r = evaluate_boxes(
        checkpoint,
        images,
        annotations,
        out,
        seed=seed,
        batch_size=batch_size,
        device=device,
        refine_steps=refine,
        decode=decode,
        min_confidence=min_confidence,
        max_move=max_move,
    )
    g, c = r.gate, r.calibration
    typer.echo(f"{r.boxes} boxes, jitter seed {seed}")
    typer.echo(f"do-no-harm gate: {g['describe']}, {g['source']}")
    typer.echo(before_after_table(r.before, r.after, r.reachable, r.gated).rstrip())
    typer.echo(f"with the gate: {g['edges_moved']} edges moved, {g['edges_kept']} kept at the rough position")
    auc = "n/a" if c["auc"] is None else f"{c['auc']:.3f}"
    typer.echo(
        f"calibration (edge within {c['tolerance_px']:g} px): {100 * c['within']:.1f}% of edges within at "
        f"mean confidence {c['mean_confidence']:.3f}; ECE {c['ece']:.3f}, AUC {auc}"
    )
    shown = ("metrics.json", "table.md", "examples.png", "calibration.json", "reliability.png")
    typer.echo(f"written: {json.dumps([str(r.out / f) for f in shown])}")


@boxes_app.command("calibrate")
def calibrate(
    checkpoint: Path = typer.Argument(..., help="A best.ckpt or last.ckpt of a `boxes` run (never changed)."),
    images: Path = typer.Option(..., "--images", help="Image folder."),
    annotations: Path = typer.Option(
        ..., "--annotations", help="Your validation boxes (COCO): the true boxes, jittered here."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Folder for calibrated.ckpt (the checkpoint with the new gate), JSON and PNG."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the first jitter draw."),
    draws: int = typer.Option(4, "--draws", min=1, help="Jittered copies of each box."),
    batch_size: int = typer.Option(64, "--batch-size", help="Crops per batch."),
    device: str = typer.Option(None, "--device", help="cpu, cuda or cuda:N."),
) -> None:
    """Choose the do-no-harm gate on your validation boxes (no training) and write a checkpoint carrying it.

    The gate is kept only when its cross-validated gain on these boxes clears the noise; otherwise the
    new checkpoint keeps every rough edge, and this says so.
    """
    from segladder.inference.box_gate import gate_from_checkpoint_section
    from segladder.inference.boxes import CALIBRATION_FILES, calibrate_gate
    from segladder.io import refuse_overwriting_inputs

    refuse_overwriting_inputs(
        {f"OUT/{name}": out / name for name in CALIBRATION_FILES},
        {"CHECKPOINT": checkpoint, "--annotations": annotations},
    )
    r = calibrate_gate(
        checkpoint, images, annotations, out, seed=seed, draws=draws, batch_size=batch_size, device=device
    )
    ch, c = r.choice, r.calibration
    gate = gate_from_checkpoint_section(ch)
    typer.echo(f"{ch['boxes']} boxes ({draws} jitter draw{'s' if draws != 1 else ''}): {ch['reason']}")
    typer.echo(
        f"do-no-harm gate: {gate.describe()}; validation mIoU rough {ch['miou_rough']:.4f}, adjusted "
        f"{ch['miou_adjusted']:.4f}, gated {ch['miou_gated']:.4f} ({100 * ch['edges_moved']:.1f}% of edges moved)"
    )
    auc = "n/a" if c["auc"] is None else f"{c['auc']:.3f}"
    typer.echo(f"calibration (edge within {c['tolerance_px']:g} px): ECE {c['ece']:.3f}, AUC {auc}")
    typer.echo(f"written: {json.dumps([str(out / f) for f in CALIBRATION_FILES])}")


@boxes_app.command("export")
def export(
    checkpoint: Path = typer.Argument(..., help="A best.ckpt or last.ckpt of a `boxes` run."),
    out: Path = typer.Argument(..., help="ONNX file to write."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset."),
) -> None:
    """Export the box model to ONNX ((batch, 3, S, S) crops → (batch, 4, S) edge logits) with a parity check."""
    from segladder.inference.boxes import export_box_onnx
    from segladder.io import refuse_overwriting_inputs

    refuse_overwriting_inputs({"OUT": out}, {"CHECKPOINT": checkpoint})
    r = export_box_onnx(checkpoint, out, opset=opset)
    typer.echo(
        f"written {r.path}: parity with PyTorch: probabilities within {r.max_prob_diff:.1e}, "
        f"decoded edges within {r.max_edge_diff:.1e} crop px"
    )

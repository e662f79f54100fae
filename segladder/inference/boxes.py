"""Box adjustment without a Trainer: snap rough boxes with a `boxes` checkpoint, score boxes, jitter → adjust → score."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from segladder.data.box_datasets import BoxCrops
from segladder.data.boxes import (
    BoxRecord,
    crop_image,
    crop_region,
    jitter_records,
    normalise,
    open_image,
    read_boxes,
    read_coco,
    to_crop,
    to_image,
    write_boxes,
    xywh_to_xyxy,
    xyxy_to_xywh,
)
from segladder.errors import DataError
from segladder.inference.box_gate import (
    EdgeGate,
    calibration,
    check_max_move,
    check_min_confidence,
    edge_errors,
    moved_edges,
    reliability_png,
)
from segladder.inference.checkpoint import load_checkpoint
from segladder.inference.errors import CheckpointError, InferenceError
from segladder.io import atomic_write_json, atomic_write_text
from segladder.metrics import BOX_KEYS, BoxMetrics, box_iou
from segladder.models.snapper import decode
from segladder.progress import progress_bar


def pick_device(device: str | None) -> torch.device:
    """The torch device for `--device` (None: CUDA when there is one, else the CPU)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InferenceError(f"--device {device}: no CUDA device here; use --device cpu.")
    return torch.device(device)


@dataclass
class BoxAdjuster:
    """A box model with its crop geometry and decoding: rough boxes in, snapped boxes and per-edge confidence out.

    Args:
        model: a model of output kind "box" ((B, 3, S, S) → (B, 4, S) logits), in eval mode.
        crop_size, buffer_ratio: the crop geometry the model was trained with.
        decode: "expectation" or "argmax"; window: positions either side of the peak for the expectation.
        refine_steps: how often the snapped box is cropped and snapped again.
        device: where the model runs.
        gate: which snapped edges may move (`EdgeGate`: a minimum confidence and a largest move); the
            others keep their rough position. `gate_source` says where the gate came from.
    """

    model: torch.nn.Module
    crop_size: int
    buffer_ratio: float
    decode: str = "expectation"
    window: int = 2
    refine_steps: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    gate: EdgeGate = field(default_factory=EdgeGate)
    gate_source: str = "none"

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | None = None,
        refine_steps: int | None = None,
        decode: str | None = None,
        min_confidence: float | None = None,
        max_move: float | None = None,
    ) -> BoxAdjuster:
        """The checkpoint's model, crop geometry and decoding, with its stored gate or the one given.

        Giving `min_confidence` or `max_move` makes the gate those two alone (the one not given sets no
        limit). A checkpoint trained before the gate has none: every edge moves.
        """
        if decode not in (None, "expectation", "argmax"):
            raise InferenceError(f"--decode {decode}: use expectation or argmax.")
        check_min_confidence(min_confidence)
        check_max_move(max_move)
        ck = load_checkpoint(path)
        if ck.task != "boxes":
            raise CheckpointError(
                f"{path}: a {ck.task} checkpoint; box adjustment needs one trained with task boxes "
                "(segladder train snapper)."
            )
        dev = pick_device(device)
        b, d = ck.config.boxes, ck.config.data
        if min_confidence is not None or max_move is not None:
            given = [
                o
                for o, v in (("--min-confidence", min_confidence), ("--max-move", max_move))
                if v is not None
            ]
            gate = EdgeGate(
                0.0 if min_confidence is None else float(min_confidence),
                math.inf if max_move is None else float(max_move),
            )
            source = " and ".join(given)
        elif ck.box_gate is not None:
            gate, source = ck.box_gate, "stored in the checkpoint (chosen on its validation boxes)"
        else:
            gate, source = EdgeGate(), NO_STORED_GATE
        return cls(
            ck.model.to(dev).eval(),
            d.section("coco").crop_size,
            d.section("coco").buffer_ratio,
            decode or b.decode,
            b.window,
            b.refine_steps if refine_steps is None else refine_steps,
            dev,
            gate,
            source,
        )

    def gate_line(self) -> str:
        """One line saying which gate is used and where it came from."""
        return f"do-no-harm gate: {self.gate.describe()}, {self.gate_source}"

    @torch.no_grad()
    def snap_crops(self, crops: torch.Tensor, regions: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(B, 3, S, S) normalised crops and their (B, 4) regions → ((B, 4) xyxy image boxes, (B, 4) confidence)."""
        logits = self.model(crops.to(self.device)).float().cpu()
        edges, conf = decode(logits, self.decode, self.window)
        return to_image(edges.double(), regions.double(), self.crop_size).numpy(), conf.numpy()

    def adjust_records(
        self,
        records: Sequence[BoxRecord],
        images: str | Path,
        batch_size: int = 64,
        num_workers: int = 0,
        progress: bool = True,
        gate: EdgeGate | None = None,
    ) -> tuple[dict[int, tuple], dict[int, list[float]]]:
        """Snap each record's box (taken as the rough box): (xywh by annotation id, per-edge confidence by id).

        Each pass keeps the edges of its input box that `gate` (default: the adjuster's) does not let move;
        the confidence returned is the last pass's, of the model's edges before the gate.
        """
        gate = self.gate if gate is None else gate
        rough = {r.ann_id: r.box for r in records}
        conf: dict[int, list[float]] = {}
        steps = 1 + self.refine_steps
        with progress_bar(disable=not progress) as bar:
            task = bar.add_task("adjusting boxes", total=len(records) * steps)
            for _ in range(steps):
                ds = BoxCrops(records, images, self.crop_size, self.buffer_ratio, "none", rough=rough)
                snapped: dict[int, tuple] = {}
                for batch in DataLoader(ds, batch_size=batch_size, num_workers=num_workers):
                    boxes, c = self.snap_crops(batch["image"], batch["region"])
                    boxes, _ = gate.apply(batch["rough"].numpy(), boxes, c)
                    for aid, box, cc in zip(batch["ann_id"].tolist(), boxes, c, strict=True):
                        snapped[aid] = xyxy_to_xywh(box)
                        conf[aid] = [float(v) for v in cc]
                    bar.advance(task, len(boxes))
                rough = snapped
        return rough, conf

    def adjust_one(self, image, box: Sequence[float]) -> tuple[tuple[float, ...], np.ndarray]:
        """Snap one (x, y, w, h) box on a PIL image, gated: (snapped xywh, (4,) confidence)."""
        for _ in range(1 + self.refine_steps):
            region = crop_region(box, self.buffer_ratio)
            crop = torch.from_numpy(normalise(crop_image(image, region, self.crop_size)))[None]
            boxes, conf = self.snap_crops(crop, torch.from_numpy(region)[None])
            boxes, _ = self.gate.apply(xywh_to_xyxy(box)[None], boxes, conf)
            box = xyxy_to_xywh(boxes[0])
        return box, conf[0]


def gate_fields(adjuster: BoxAdjuster) -> dict:
    """The adjuster's gate as JSON: `min_confidence`, `max_move` (None: no limit), `source`, `describe`."""
    g = adjuster.gate
    return {
        "min_confidence": g.min_confidence,
        "max_move": None if math.isinf(g.max_move) else g.max_move,
        "source": adjuster.gate_source,
        "describe": g.describe(),
    }


NO_STORED_GATE = (
    "none stored in this checkpoint (trained before the gate existed): every edge moves; "
    "pass --min-confidence C and/or --max-move M to gate them, or `segladder boxes calibrate` to choose a "
    "gate on your validation boxes"
)


# ------------------------------------------------------------------------------------------------ scoring


def score(true: dict[int, Sequence[float]], boxes: dict[int, Sequence[float]], where: str = "boxes") -> dict:
    """The paper's Table 1 for `boxes` against `true` (both xywh by annotation id), over the ids in both.

    Returns the six fractions (keys `BOX_KEYS`), `boxes` (how many were scored) and `missing` (ground-truth
    ids without a box). A DataError when no id is shared.
    """
    ids = [i for i in true if i in boxes]
    if not ids:
        raise DataError(
            f"{where}: none of its annotation ids is in the ground truth; boxes are matched by 'id' "
            "(write them with `segladder boxes jitter` or `boxes adjust`, which keep the ids)."
        )
    m = BoxMetrics()
    m.update(np.stack([xywh_to_xyxy(boxes[i]) for i in ids]), np.stack([xywh_to_xyxy(true[i]) for i in ids]))
    out = {k: float(v) for k, v in m.compute().items()}
    out["boxes"] = len(ids)
    out["missing"] = len(true) - len(ids)
    return out


def reachable_boxes(
    true: dict[int, Sequence[float]], rough: dict[int, Sequence[float]], buffer_ratio: float
) -> dict[int, tuple[float, float, float, float]]:
    """The best boxes one pass can give: each true box (xywh) clipped to the crop around its rough box.

    The model only sees, and only places edges inside, the rough box enlarged by `buffer_ratio`; with the
    paper's jitter and a buffer of 1.1 (BUFFER_RATIO in github.com/Kobamiyannnn/reproduct_snapper
    src/config.py) about a quarter of the true edges lie outside it, so the score of these boxes is the
    ceiling of a single pass (`--refine` can move past it).
    """
    out = {}
    for aid, r in rough.items():
        region = crop_region(r, buffer_ratio)
        t = xywh_to_xyxy(true[aid])
        out[aid] = xyxy_to_xywh(np.clip(t, region[[0, 1, 0, 1]], region[[2, 3, 2, 3]]))
    return out


def score_files(gt: str | Path, boxes: str | Path) -> dict:
    """`score` of a boxes file (COCO or a list of {id, bbox}) against a ground-truth COCO file.

    A box of negative width or height is refused (its IoU would be computed on a flipped box): it is most
    often an [x0, y0, x1, y1] box where [x, y, w, h] belongs.
    A file written by `boxes adjust` also holds each box's rough box and which edges moved: the result
    then has `before` (the rough boxes' scores) and `edges` (`moved` and `kept` counts) beside the scores.
    """
    true = {r.ann_id: r.box for r in read_coco(gt)}
    candidates = read_boxes(boxes)
    for aid, (x, y, w, h) in candidates.items():
        if w < 0 or h < 0:
            raise DataError(
                f"{boxes}: annotation id {aid}: bbox [{x:g}, {y:g}, {w:g}, {h:g}] has a negative "
                f"{'width' if w < 0 else 'height'}; boxes are [x, y, width, height] (COCO), not corners."
            )
    out = score(true, candidates, str(boxes))
    rough, moved = read_adjustment(boxes)
    ids = [i for i in true if i in candidates and i in rough]
    if ids:
        out["before"] = score(true, {i: rough[i] for i in ids}, str(boxes))
        if len(ids) < out["boxes"]:
            out["before"]["note"] = f"{out['boxes'] - len(ids)} boxes without their rough box"
    if moved:
        n = sum(sum(moved[i]) for i in ids if i in moved)
        edges = 4 * sum(1 for i in ids if i in moved)
        out["edges"] = {"moved": n, "kept": edges - n}
    return out


def read_adjustment(path: str | Path) -> tuple[dict[int, tuple], dict[int, list[bool]]]:
    """The rough boxes (`rough_bbox`) and moved edges (`edge_moved`) `boxes adjust` wrote, by annotation id.

    Empty for other boxes files.
    """
    from segladder.data.boxes import load_json

    data = load_json(path, "boxes file")
    anns = data.get("annotations") if isinstance(data, dict) else data
    rough, moved = {}, {}
    for ann in anns if isinstance(anns, list) else []:
        if not isinstance(ann, dict) or "id" not in ann:
            continue
        try:
            if "rough_bbox" in ann:
                rough[int(ann["id"])] = tuple(float(v) for v in ann["rough_bbox"])
            if "edge_moved" in ann:
                moved[int(ann["id"])] = [bool(v) for v in ann["edge_moved"]]
        except (TypeError, ValueError):
            raise DataError(
                f"{path}: annotation id {ann['id']}: 'rough_bbox' must be [x, y, w, h] and 'edge_moved' "
                "four booleans (as `boxes adjust` writes them)."
            ) from None
    return rough, moved


# --------------------------------------------------------------------------------------------- commands


def jitter_file(gt: str | Path, out: str | Path, seed: int = 0) -> int:
    """Write the paper's seeded rough boxes for every non-crowd box of `gt`, keeping annotation ids; returns the count."""
    records = read_coco(gt)
    write_boxes(out, gt, jitter_records(records, seed))
    return len(records)


def adjust_file(
    checkpoint: str | Path,
    images: str | Path,
    rough: str | Path,
    out: str | Path,
    *,
    batch_size: int = 64,
    device: str | None = None,
    refine_steps: int | None = None,
    min_confidence: float | None = None,
    max_move: float | None = None,
    progress: bool = True,
) -> AdjustSummary:
    """Snap every box of the COCO file `rough` and write it as `out`: same ids, bbox replaced.

    Beside each box go `edge_confidence`, `rough_bbox` (the input box) and `edge_moved` (left, top, right,
    bottom; false where the gate kept the rough edge). The gate is the checkpoint's unless `min_confidence` or
    `max_move` is given.
    """
    adjuster = BoxAdjuster.from_checkpoint(
        checkpoint, device, refine_steps, min_confidence=min_confidence, max_move=max_move
    )
    records = read_coco(rough, images, check_inside=False)
    snapped, conf = adjuster.adjust_records(records, images, batch_size, progress=progress)
    extra, moved_total = {}, 0
    for r in records:
        moved = moved_edges(xywh_to_xyxy(r.box), xywh_to_xyxy(snapped[r.ann_id]))
        moved_total += int(moved.sum())
        extra[r.ann_id] = {
            "edge_confidence": [round(v, 4) for v in conf[r.ann_id]],
            "rough_bbox": [round(float(v), 4) for v in r.box],
            "edge_moved": [bool(v) for v in moved],
        }
    write_boxes(out, rough, snapped, extra)
    return AdjustSummary(
        len(snapped),
        moved_total,
        4 * len(snapped) - moved_total,
        adjuster.gate,
        adjuster.gate_source,
    )


@dataclass
class AdjustSummary:
    """What `adjust_file` did: boxes snapped, edges moved and kept by the gate, and the gate and its source."""

    boxes: int
    edges_moved: int
    edges_kept: int  # kept at the rough position by the gate
    gate: EdgeGate
    gate_source: str


def adjust_single(
    checkpoint: str | Path,
    image: str | Path,
    box: Sequence[float],
    png: str | Path | None = None,
    *,
    device: str | None = None,
    refine_steps: int | None = None,
    min_confidence: float | None = None,
    max_move: float | None = None,
) -> tuple[tuple[float, ...], np.ndarray, dict]:
    """Snap one box on one image (gated): (snapped xywh, (4,) confidence, the gate).

    The gate is `gate_fields` and `moved` per edge. Writes a PNG with the rough (yellow) and snapped (magenta)
    boxes when `png` is given.
    """
    from segladder.viz import draw_boxes, save_image

    if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
        raise DataError(f"--box {','.join(map(str, box))}: expected x,y,w,h with w and h > 0.")
    im = open_image(image)
    x, y, w, h = box
    width, height = im.size
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise DataError(
            f"--box {','.join(f'{v:g}' for v in box)}: wholly outside {image} ({width}×{height} px); "
            "give x,y,w,h in that image's pixels, overlapping the object."
        )
    adjuster = BoxAdjuster.from_checkpoint(
        checkpoint, device, refine_steps, min_confidence=min_confidence, max_move=max_move
    )
    snapped, conf = adjuster.adjust_one(im, box)
    if png is not None:
        save_image(
            draw_boxes(
                np.asarray(im),
                {"rough": xywh_to_xyxy(box), "snapped": xywh_to_xyxy(snapped)},
                max(1, 512 // max(im.size)),
            ),
            png,
        )
    gate = {
        **gate_fields(adjuster),
        "moved": [bool(v) for v in moved_edges(xywh_to_xyxy(box), xywh_to_xyxy(snapped))],
    }
    return snapped, conf, gate


# What `evaluate_boxes` writes into its folder.
EVALUATION_FILES = (
    "rough.json",
    "adjusted.json",
    "gated.json",
    "metrics.json",
    "table.md",
    "examples.png",
    "calibration.json",
    "reliability.png",
)


@dataclass
class BoxEvaluation:
    """What `evaluate_boxes` measured: Table 1 of the rough, adjusted and gated boxes, and where it wrote."""

    before: dict
    after: dict  # adjusted without the gate (every edge moved)
    out: Path
    boxes: int
    reachable: dict  # the score of the true boxes clipped to their crops: a single pass's ceiling
    gated: dict | None = None  # adjusted with the gate
    gate: dict | None = None  # `gate_fields`, edges moved and kept
    calibration: dict | None = None


def evaluate_boxes(
    checkpoint: str | Path,
    images: str | Path,
    annotations: str | Path,
    out: str | Path,
    *,
    seed: int = 0,
    batch_size: int = 64,
    device: str | None = None,
    refine_steps: int | None = None,
    decode: str | None = None,
    min_confidence: float | None = None,
    max_move: float | None = None,
    examples: int = 8,
    progress: bool = True,
) -> BoxEvaluation:
    """Jitter the ground truth (seeded), snap the rough boxes without and with the gate, score all three.

    Writes `metrics.json` (`before`, `after` (no gate), `gated`, `reachable`, `gate`, `calibration`),
    `table.md`, `rough.json`, `adjusted.json` (no gate), `gated.json`, `examples.png`, and the calibration
    of edge confidence as `calibration.json` and `reliability.png`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    adjuster = BoxAdjuster.from_checkpoint(checkpoint, device, refine_steps, decode, min_confidence, max_move)
    records = read_coco(annotations, images)
    true = {r.ann_id: r.box for r in records}
    rough = jitter_records(records, seed)
    rough_records = [
        BoxRecord(r.ann_id, r.image_id, r.file_name, r.width, r.height, rough[r.ann_id]) for r in records
    ]
    snapped, conf = adjuster.adjust_records(
        rough_records, images, batch_size, progress=progress, gate=EdgeGate()
    )
    ids = [r.ann_id for r in records]
    rough_xyxy = np.stack([xywh_to_xyxy(rough[i]) for i in ids])
    snapped_xyxy = np.stack([xywh_to_xyxy(snapped[i]) for i in ids])
    conf_arr = np.array([conf[i] for i in ids], np.float64)
    gated = _gated_pass(
        adjuster, rough_records, images, batch_size, progress, snapped, (rough_xyxy, snapped_xyxy, conf_arr)
    )
    moved = moved_edges(rough_xyxy, np.stack([xywh_to_xyxy(gated[i]) for i in ids]))
    gate = {
        **gate_fields(adjuster),
        "edges_moved": int(moved.sum()),
        "edges_kept": int(moved.size - moved.sum()),
    }
    true_xyxy = np.stack([xywh_to_xyxy(true[i]) for i in ids])
    cal = calibration(conf_arr, edge_errors(snapped_xyxy, true_xyxy))
    before, after, gated_score = score(true, rough), score(true, snapped), score(true, gated)
    reachable = score(true, reachable_boxes(true, rough, adjuster.buffer_ratio))
    _write_box_files(out, annotations, rough, snapped, gated, conf, dict(zip(ids, moved, strict=True)))
    atomic_write_json(out / "calibration.json", {"checkpoint": str(checkpoint), "seed": seed, **cal})
    reliability_png(cal, out / "reliability.png", f"{Path(annotations).name}, jitter seed {seed}")
    summary = {
        "checkpoint": str(checkpoint),
        "annotations": str(annotations),
        "seed": seed,
        "decode": adjuster.decode,
        "refine_steps": adjuster.refine_steps,
        "before": before,
        "after": after,
        "gated": gated_score,
        "reachable": reachable,
        "gate": gate,
        "calibration": {k: v for k, v in cal.items() if k != "bins"},
    }
    atomic_write_json(out / "metrics.json", summary)
    atomic_write_text(out / "table.md", before_after_table(before, after, reachable, gated_score))
    _write_examples(records, images, rough, gated, out / "examples.png", examples)
    return BoxEvaluation(before, after, out, len(records), reachable, gated_score, gate, cal)


def _gated_pass(
    adjuster: BoxAdjuster,
    rough_records: list[BoxRecord],
    images: str | Path,
    batch_size: int,
    progress: bool,
    snapped: dict,
    ungated: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> dict:
    """The rough boxes adjusted with the adjuster's gate (xywh by id), reusing the ungated pass where it can.

    `ungated` is that pass as arrays in `rough_records`' order: (rough xyxy, snapped xyxy, confidence).
    """
    if adjuster.gate.moves_all:
        return snapped
    if adjuster.refine_steps == 0:  # one pass: the gate applied to the ungated boxes is the gated pass
        g, _ = adjuster.gate.apply(*ungated)
        return {r.ann_id: xyxy_to_xywh(b) for r, b in zip(rough_records, g, strict=True)}
    gated, _ = adjuster.adjust_records(rough_records, images, batch_size, progress=progress)
    return gated


def _write_box_files(
    out: Path, annotations, rough: dict, snapped: dict, gated: dict, conf: dict, moved: dict
):
    """Write rough.json, adjusted.json (no gate, with edge confidence) and gated.json into `out`.

    gated.json has beside each box the rough box and which edges moved.
    """
    write_boxes(out / "rough.json", annotations, rough)
    write_boxes(
        out / "adjusted.json",
        annotations,
        snapped,
        {aid: {"edge_confidence": [round(v, 4) for v in c]} for aid, c in conf.items()},
    )
    write_boxes(
        out / "gated.json",
        annotations,
        gated,
        {
            i: {
                "edge_confidence": [round(v, 4) for v in conf[i]],
                "rough_bbox": [round(float(v), 4) for v in rough[i]],
                "edge_moved": [bool(v) for v in m],
            }
            for i, m in moved.items()
        },
    )


def before_after_table(
    before: dict, after: dict, reachable: dict | None = None, gated: dict | None = None
) -> str:
    """The paper's Table 1 as Markdown: each metric in % before and after adjustment, and the change.

    With `gated`, a column for the adjusted boxes with the do-no-harm gate follows `adjusted`, and the
    change is the gated boxes' against the jittered ones. With `reachable`, a last column gives the
    single-pass ceiling (true boxes clipped to their crops).
    """
    extra = reachable is not None
    rows = [
        "| metric | jittered | adjusted |"
        + (" adjusted + gate |" if gated is not None else "")
        + " change |"
        + (" reachable |" if extra else ""),
        "|---|---:|---:|" + ("---:|" if gated is not None else "") + "---:|" + ("---:|" if extra else ""),
    ]
    for k in BOX_KEYS:
        final = after if gated is None else gated
        rows.append(
            f"| {k} | {100 * before[k]:.1f} | {100 * after[k]:.1f} |"
            + (f" {100 * gated[k]:.1f} |" if gated is not None else "")
            + f" {100 * (final[k] - before[k]):+.1f} |"
            + (f" {100 * reachable[k]:.1f} |" if extra else "")
        )
    return "\n".join(rows) + "\n"


def _write_examples(
    records: Sequence[BoxRecord], images: str | Path, rough: dict, snapped: dict, path: Path, n: int
) -> None:
    """A PNG grid: the `n` best (top rows) and `n` worst adjusted boxes by IoU, each with rough, true and snapped."""
    from segladder.viz import box_grid, draw_boxes, save_image

    if n <= 0:
        return
    ious = box_iou(
        np.stack([xywh_to_xyxy(snapped[r.ann_id]) for r in records]),
        np.stack([xywh_to_xyxy(r.box) for r in records]),
    ).numpy()
    order = np.argsort(-ious)
    picks = list(order[:n]) + [i for i in order[::-1][:n] if i not in order[:n]]
    size, panels = 128, []
    for i in picks:
        r = records[i]
        region = crop_region(r.box, 1.5)  # wide enough to show where the rough and snapped boxes went
        crop = crop_image(open_image(Path(images) / r.file_name), region, size)
        boxes = {
            name: to_crop(xywh_to_xyxy(b), region, size)
            for name, b in (("rough", rough[r.ann_id]), ("true", r.box), ("snapped", snapped[r.ann_id]))
        }
        panels.append(draw_boxes(crop, boxes, 2))
    save_image(box_grid(panels, columns=n), path)


# ---------------------------------------------------------------------------------------------- benchmark


def bench_box_adjustment(
    checkpoint: str | Path,
    images: str | Path,
    annotations: str | Path,
    *,
    batch_size: int = 64,
    boxes: int = 256,
    single: int = 32,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Adjusted boxes per second: a whole file batched (image reading and crops included) and one box at a time.

    Jitters the first `boxes` boxes of `annotations` (seeded), snaps them once untimed (warm-up) and once
    timed with `batch_size`; then snaps the first `single` of them one by one on already opened images, as
    `boxes adjust IMAGE --box` does after loading. Returns boxes/s for both and ms per single box.
    """
    import time

    adjuster = BoxAdjuster.from_checkpoint(checkpoint, device, 0)
    records = read_coco(annotations, images)[:boxes]
    rough = jitter_records(records, seed)
    rough_records = [
        BoxRecord(r.ann_id, r.image_id, r.file_name, r.width, r.height, rough[r.ann_id]) for r in records
    ]
    sync = torch.cuda.synchronize if adjuster.device.type == "cuda" else (lambda: None)
    adjuster.adjust_records(rough_records[:batch_size], images, batch_size, progress=False)
    sync()
    t0 = time.perf_counter()
    adjuster.adjust_records(rough_records, images, batch_size, progress=progress)
    sync()
    batched = time.perf_counter() - t0
    singles = rough_records[: max(1, single)]
    opened = {r.file_name: open_image(Path(images) / r.file_name) for r in singles}
    adjuster.adjust_one(opened[singles[0].file_name], singles[0].box)
    sync()
    t0 = time.perf_counter()
    for r in singles:
        adjuster.adjust_one(opened[r.file_name], r.box)
    sync()
    one = time.perf_counter() - t0
    return {
        "device": str(adjuster.device),
        "threads": torch.get_num_threads(),
        "crop_size": adjuster.crop_size,
        "batch_size": batch_size,
        "boxes": len(rough_records),
        "batch_boxes_per_s": len(rough_records) / batched,
        "single_boxes": len(singles),
        "single_boxes_per_s": len(singles) / one,
        "single_ms_per_box": 1000 * one / len(singles),
    }


# ------------------------------------------------------------------------------------------------- export


@dataclass
class BoxExport:
    """What `export_box_onnx` wrote, and how far ONNX runtime's outputs lie from PyTorch's."""

    path: Path
    max_prob_diff: float  # largest |Δ| of the per-edge position probabilities, ONNX vs PyTorch
    max_edge_diff: float  # largest |Δ| of the decoded edges, in crop pixels


def export_box_onnx(
    checkpoint: str | Path, out: str | Path, *, opset: int = 17, atol: float = 1e-4
) -> BoxExport:
    """A `boxes` checkpoint as ONNX: (batch, 3, S, S) normalised crops → (batch, 4, S) edge logits, parity-checked.

    The crop geometry, decoding and gate travel in the metadata (`segladder.crop_size`, `buffer_ratio`,
    `decode`, `window`, `min_confidence`, `max_move` ("inf": no limit)); on a parity failure nothing is written.
    """
    from segladder.inference.errors import ExportError
    from segladder.inference.segmenters import (
        INPUT_NAME,
        ONNX_FORMAT_VERSION,
        OUTPUT_NAME,
        onnx_session,
        trace_onnx,
    )
    from segladder.io import atomic_path

    adjuster = BoxAdjuster.from_checkpoint(checkpoint, "cpu")
    model, size, out = adjuster.model, adjuster.crop_size, Path(out)
    meta = {
        "format_version": str(ONNX_FORMAT_VERSION),
        "task": "boxes",
        "source": str(checkpoint),
        "crop_size": str(size),
        "buffer_ratio": repr(adjuster.buffer_ratio),
        "decode": adjuster.decode,
        "window": str(adjuster.window),
        # The do-no-harm gate, applied by whoever decodes the logits (an edge moves only when its
        # confidence ≥ min_confidence and its move ≤ max_move × the box side).
        "min_confidence": repr(adjuster.gate.min_confidence),
        "max_move": repr(adjuster.gate.max_move),
    }
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    try:
        with atomic_path(out) as tmp:
            trace_onnx(model, x[:1], tmp, meta, opset, "the box model")
            got = torch.from_numpy(
                onnx_session(tmp, torch.device("cpu")).run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
            )
            with torch.no_grad():
                expected = model(x).float()
            prob_diff = float((got.softmax(-1) - expected.softmax(-1)).abs().max())
            edge_diff = float(
                (
                    decode(got, adjuster.decode, adjuster.window)[0]
                    - decode(expected, adjuster.decode, adjuster.window)[0]
                )
                .abs()
                .max()
            )
            if not prob_diff <= atol:
                raise ExportError(
                    f"ONNX and PyTorch edge probabilities differ by up to {prob_diff:.2e} "
                    f"(allowed {atol:g}); {out} was not written."
                )
    except OSError as exc:
        raise ExportError(f"cannot write {out} ({exc.strerror or exc}).") from None
    return BoxExport(out, prob_diff, edge_diff)


# -------------------------------------------------------------------------------------------- calibrate

CALIBRATION_FILES = ("calibrated.ckpt", "box_calibration.json", "reliability.png")


@dataclass
class GateCalibration:
    """What `calibrate_gate` wrote and chose."""

    checkpoint: Path  # the copy of the input checkpoint that carries the new gate
    choice: dict  # `GateChoice.as_dict()`
    calibration: dict  # `calibration(...)` of the ungated edges


def calibrate_gate(
    checkpoint: str | Path,
    images: str | Path,
    annotations: str | Path,
    out: str | Path,
    *,
    seed: int = 0,
    draws: int = 4,
    batch_size: int = 64,
    device: str | None = None,
    progress: bool = True,
) -> GateCalibration:
    """Choose the do-no-harm gate of a `boxes` checkpoint on your own validation boxes, without training.

    Jitters each true box of `annotations` `draws` times (seeds `seed`, `seed` + 1, …), snaps the rough
    boxes in one pass, and runs `choose_gate` with the copies of one box as one object. Writes into the
    folder `out` a copy of the checkpoint carrying that gate (`calibrated.ckpt`; the input is never
    changed), `box_calibration.json` and `reliability.png`. Typical use: a model trained on the synthetic
    box world, gated on a few real validation boxes (docs/boxes.md).
    """
    from segladder.inference.box_gate import choose_gate, gate_summary
    from segladder.inference.checkpoint import CHECKPOINT_KEY, read_checkpoint_file
    from segladder.io import atomic_path

    if draws < 1:
        raise InferenceError(f"--draws {draws}: jitter each box at least once.")
    out = Path(out)
    adjuster = BoxAdjuster.from_checkpoint(checkpoint, device, refine_steps=0, min_confidence=0.0)
    records = read_coco(annotations, images)
    parts: dict[str, list] = {"rough": [], "snapped": [], "conf": [], "true": [], "groups": []}
    for d in range(draws):
        rough = jitter_records(records, seed + d)
        rough_records = [
            BoxRecord(r.ann_id, r.image_id, r.file_name, r.width, r.height, rough[r.ann_id]) for r in records
        ]
        snapped, conf = adjuster.adjust_records(rough_records, images, batch_size, progress=progress)
        for r in records:
            parts["rough"].append(xywh_to_xyxy(rough[r.ann_id]))
            parts["snapped"].append(xywh_to_xyxy(snapped[r.ann_id]))
            parts["conf"].append(conf[r.ann_id])
            parts["true"].append(xywh_to_xyxy(r.box))
            parts["groups"].append(r.ann_id)
    a = {k: np.asarray(v, np.float64) if k != "groups" else np.asarray(v) for k, v in parts.items()}
    choice = choose_gate(a["rough"], a["snapped"], a["conf"], a["true"], a["groups"])
    cal = calibration(a["conf"], edge_errors(a["snapped"], a["true"]))
    summary = {
        **gate_summary(choice, cal),
        "calibrated_on": {"annotations": str(annotations), "seed": seed, "draws": draws},
    }
    ckpt = read_checkpoint_file(Path(checkpoint))
    section = dict(ckpt.get(CHECKPOINT_KEY) or {})
    section.update(min_confidence=choice.min_confidence, max_move=summary["max_move"], box_gate=summary)
    ckpt[CHECKPOINT_KEY] = section
    out.mkdir(parents=True, exist_ok=True)
    target = out / CALIBRATION_FILES[0]
    with atomic_path(target) as tmp:
        torch.save(ckpt, tmp)
    atomic_write_json(
        out / "box_calibration.json", {"checkpoint": str(target), "source": str(checkpoint), **summary}
    )
    reliability_png(cal, out / "reliability.png", f"{Path(annotations).name}, {draws} jitter draws")
    return GateCalibration(target, choice.as_dict(), cal)

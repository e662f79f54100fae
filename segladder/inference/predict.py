"""`predict`: probability maps, masks, submission.csv and overlays from an ensemble of checkpoints or an ONNX model."""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from segladder.inference.errors import InferenceError
from segladder.inference.inputs import Batch, Inputs
from segladder.inference.postprocess import (
    Float16Histogram,
    binarize,
    check_threshold_options,
    remove_small_components,
    resolve_threshold,
)
from segladder.inference.segmenters import Ensemble, OnnxSegmenter, Segmenter, load_segmenters, resolve_device
from segladder.inference.submission import SUBMISSION_HEADER, rle_encode, split_shapes
from segladder.io import atomic_path, atomic_save_npy, atomic_write_json
from segladder.progress import progress_bar

PROBS_DIR = "probs"  # <record_id>.npy: float16 (H, W) probabilities
MASKS_DIR = "masks"  # <record_id>.npy: uint8 (H, W) {0, 1}, after thresholding and component removal
OVERLAYS_DIR = "overlays"
SUBMISSION_FILE = "submission.csv"
SUMMARY_FILE = "predict.json"
OVERLAY_ROWS = 8  # records per overlay PNG


def prepare_output(out: str | Path, subfolders: Sequence[str] = (PROBS_DIR, MASKS_DIR)) -> Path:
    """Create the output folder, prove it writable, and refuse a file where one of its `subfolders` goes.

    A bad --out then fails before any inference.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InferenceError(f"--out {out} is a file; give a folder (new or existing) for the outputs.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise InferenceError(f"output folder {out} is not writable ({exc.strerror or exc}).") from None
    for folder in (out / s for s in subfolders):
        if folder.exists() and not folder.is_dir():
            raise InferenceError(
                f"{folder} is a file where the output folder {folder.name}/ goes; remove it or choose "
                "another --out."
            )
    return out


# ------------------------------------------------------------------------------------------ writing


@dataclass
class Prediction:
    """What `predict` wrote: records and positives, the threshold and where it came from, and any Dice."""

    out: Path
    records: int
    threshold: float
    threshold_source: str
    positive_records: int
    positive_pixels: int
    dice: float | None = None  # global Dice on a labelled split, before component removal
    submission_problems: list[str] = field(default_factory=list)  # records whose size the masks do not have

    @property
    def submission(self) -> Path:
        """The path of the submission CSV."""
        return self.out / SUBMISSION_FILE


ProbFn = Callable[[Batch], torch.Tensor]  # a batch → (B, 1, H, W) probabilities


def write_probabilities(
    prob_fn: ProbFn,
    inputs: Inputs,
    folder: Path,
    *,
    description: str,
    progress: bool = True,
    observe: Callable[[np.ndarray, Batch], None] | None = None,
    sizes: Mapping[str, tuple[int, int]] | None = None,
) -> None:
    """Pass 1: run `prob_fn` over the split, writing `folder/<record_id>.npy` (float16, H × W) per record.

    `observe(probs, batch)` sees each batch's float16 probabilities (B, H, W) at the models' size. With
    `sizes` (record_id → (H, W)), each map is resized (bilinear) to its record's own size before it is
    saved.
    """
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task(description, total=len(inputs))
        for batch in inputs.batches():
            p16 = prob_fn(batch)[:, 0].numpy().astype(np.float16)
            if observe is not None:
                observe(p16, batch)
            for rid, p in zip(batch.record_ids, p16, strict=True):
                atomic_save_npy(folder / f"{rid}.npy", at_size(p, sizes.get(rid) if sizes else None))
            bar.advance(task, len(batch.record_ids))


def at_size(probs: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """An (H, W) float16 map resized (bilinear) to `size`, or as it is when that is its size already."""
    if size is None or probs.shape == tuple(size):
        return probs
    h, w = size
    return cv2.resize(probs.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float16)


class _PixelHistograms:
    """Pass 1's view of the probabilities: histograms that give the exact global Dice at any threshold.

    One of all pixels (for a percentile threshold, or a Dice) and, on a labelled split, one of the positive
    pixels; together they give the global Dice before component removal without keeping any map in memory.
    """

    def __init__(self, all_pixels: bool, positives: bool):
        self.all = Float16Histogram() if all_pixels else None
        self.positive = Float16Histogram() if positives else None

    def observe(self, p16: np.ndarray, batch: Batch) -> None:
        self.all.update(p16)
        if self.positive is not None:
            self.positive.update(p16[batch.mask[:, 0].numpy() > 0.5])

    def dice(self, threshold: float) -> float | None:
        if self.positive is None:
            return None
        denom = self.all.count_above(threshold) + self.positive.total
        return 1.0 if denom == 0 else 2 * self.positive.count_above(threshold) / denom


def _write_masks(
    inputs: Inputs, out: Path, th: float, min_component: int, sizes: Mapping, progress: bool
) -> tuple[int, int, list[str]]:
    """Pass 2: each record's mask from its saved float16 map, and submission.csv.

    Returns the records and pixels predicted positive, and the records whose mask does not fit their size in
    the split.
    """
    pos_records = pos_pixels = 0
    problems = []
    with (
        atomic_path(out / SUBMISSION_FILE) as tmp,
        open(tmp, "w", newline="") as fh,
        progress_bar(disable=not progress) as bar,
    ):
        writer = csv.writer(fh)
        writer.writerow(SUBMISSION_HEADER)
        task = bar.add_task("writing masks", total=len(inputs))
        for rid in inputs.record_ids:
            mask = remove_small_components(
                binarize(np.load(out / PROBS_DIR / f"{rid}.npy"), th), min_component
            )
            atomic_save_npy(out / MASKS_DIR / f"{rid}.npy", mask)
            if rid in sizes and mask.shape != sizes[rid]:
                problems.append(
                    f"record {rid} is {sizes[rid][0]}x{sizes[rid][1]} but its mask is "
                    f"{mask.shape[0]}x{mask.shape[1]}"
                )
            writer.writerow([rid, rle_encode(mask)])
            n = int(mask.sum())
            pos_pixels += n
            pos_records += n > 0
            bar.advance(task)
    return pos_records, pos_pixels, problems


def write_predictions(
    prob_fn: ProbFn,
    inputs: Inputs,
    out: Path,
    *,
    stored_threshold: float,
    stored_source: str = "stored with the checkpoint(s)",
    threshold: float | None = None,
    percentile: float | None = None,
    min_component: int = 0,
    overlays: int = 0,
    progress: bool = True,
    summary: dict | None = None,
) -> Prediction:
    """Probabilities (pass 1), then the threshold, then masks + submission.csv from the saved float16 maps (pass 2).

    Pass 2 binarises exactly the probabilities on disk, so `probs/` thresholded and cleaned reproduces
    `masks/`, and decoding submission.csv reproduces `masks/`. On a labelled split, histograms of the
    probabilities of all and of positive pixels give the exact global Dice at the chosen threshold
    (before component removal) without keeping any map in memory.
    """
    hists = _PixelHistograms(percentile is not None or inputs.has_mask, inputs.has_mask)
    # Masks and submission rows at each record's own size, so submission.csv fits the split even where
    # records were resized for the models.
    sizes = split_shapes(inputs.data, inputs.split)
    write_probabilities(
        prob_fn,
        inputs,
        out / PROBS_DIR,
        description=f"predicting {inputs.split}",
        progress=progress,
        observe=hists.observe if hists.all is not None else None,
        sizes=sizes,
    )
    th, source = resolve_threshold(stored_threshold, threshold, percentile, hists.all, stored_source)
    dice = hists.dice(th)
    pos_records, pos_pixels, problems = _write_masks(inputs, out, th, min_component, sizes, progress)
    if overlays > 0:
        _write_overlays(inputs, out, th, overlays)
    result = Prediction(out, len(inputs), th, source, pos_records, pos_pixels, dice, problems)
    atomic_write_json(
        out / SUMMARY_FILE,
        {
            **(summary or {}),
            "data": str(inputs.data),
            "split": inputs.split,
            "records": len(inputs),
            "input": inputs.specs[0].as_dict(),
            "threshold": th,
            "threshold_source": source,
            "min_component": min_component,
            "positive_records": pos_records,
            "positive_pixels": pos_pixels,
            "dice_before_component_removal": dice,
            "submission_problems": problems,
            "files": {
                "probabilities": f"{PROBS_DIR}/<record_id>.npy (float16, H x W)",
                "masks": f"{MASKS_DIR}/<record_id>.npy (uint8 0/1, H x W)",
                "submission": SUBMISSION_FILE,
            },
        },
    )
    return result


def _write_overlays(inputs: Inputs, out: Path, threshold: float, n: int) -> None:
    from segladder.viz import overlay_grid

    n = min(n, len(inputs))
    for start in range(0, n, OVERLAY_ROWS):
        items = [inputs.item(i) for i in range(start, min(start + OVERLAY_ROWS, n))]
        images = torch.stack([it["image"] for it in items])
        masks = torch.stack([it["mask"] for it in items]) if "mask" in items[0] else None
        # The maps are at each record's own size; the overlay draws them over the models' input.
        probs = torch.stack(
            [
                torch.from_numpy(
                    at_size(
                        np.load(out / PROBS_DIR / f"{it['record_id']}.npy"), tuple(it["image"].shape[-2:])
                    ).astype(np.float32)
                )[None]
                for it in items
            ]
        )
        picture = overlay_grid(images, masks, probs, threshold)
        ok, png = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        with atomic_path(out / OVERLAYS_DIR / f"overlay_{start:05d}.png") as tmp:
            tmp.write_bytes(png.tobytes())


# ------------------------------------------------------------------------------------------ predict


def predict(
    checkpoints: Sequence[str | Path],
    data: str | Path,
    out: str | Path,
    *,
    split: str = "test",
    onnx: str | Path | None = None,
    weights: Sequence[float] | None = None,
    threshold: float | None = None,
    percentile: float | None = None,
    tta: bool = False,
    tta_shift: int = 0,
    min_component: int | None = None,
    overlays: int = 0,
    batch_size: int = 8,
    device: str | None = None,
    workers: int = 0,
    progress: bool = True,
    default_threshold: tuple[float, str] | None = None,
) -> Prediction:
    """Predict a split with one checkpoint, an ensemble of checkpoints, or an exported ONNX model.

    Without `threshold` or `percentile`, the threshold is `default_threshold` (value, where it comes from,
    e.g. a fold ensemble's out-of-fold one), else the models' stored one. `min_component` None means the
    size an ONNX model stores, else 0; an explicit 0 keeps every component.

    Every check (options, device, output folder, checkpoints, data against what the models read)
    happens before the first batch. Outputs: see `write_predictions` and docs/inference.md.
    """
    check_threshold_options(threshold, percentile)
    if (min_component or 0) < 0 or overlays < 0:
        raise InferenceError("--min-component and --overlays cannot be negative.")
    if bool(checkpoints) == (onnx is not None):
        raise InferenceError("give checkpoint(s) or --onnx MODEL, not both and not neither.")
    dev = resolve_device(device)
    out = prepare_output(out)
    if onnx is not None:
        exported = OnnxSegmenter(onnx, dev, tta, tta_shift)
        members: list[Segmenter] = [exported]
        if min_component is None:
            min_component = exported.min_component
    else:
        members = list(load_segmenters(checkpoints, dev, tta, tta_shift))
    ens = Ensemble(members, weights)
    min_component = min_component or 0
    stored, stored_source = default_threshold or (ens.threshold, "stored with the checkpoint(s)")
    inputs = Inputs(ens.specs, data, split, batch_size=batch_size, workers=workers)
    summary = {
        "command": "predict",
        "tta": tta,
        "tta_shift": tta_shift,
        "models": [
            {"model": m.name, "weight": w, "threshold": m.threshold}
            for m, w in zip(ens.members, ens.weights, strict=True)
        ],
    }
    return write_predictions(
        lambda b: ens.probs(b.images),
        inputs,
        out,
        stored_threshold=stored,
        stored_source=stored_source,
        threshold=threshold,
        percentile=percentile,
        min_component=min_component,
        overlays=overlays,
        progress=progress,
        summary=summary,
    )

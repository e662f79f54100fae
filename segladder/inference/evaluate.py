"""`evaluate`: global Dice of a checkpoint or a fold ensemble at its stored and its best threshold, per-record Dice, curve PNG."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segladder.errors import DataError
from segladder.inference.checkpoint import load_checkpoint
from segladder.inference.errors import CheckpointError
from segladder.inference.inputs import Batch, Inputs
from segladder.inference.postprocess import binarize, remove_small_components
from segladder.inference.segmenters import Ensemble, TorchSegmenter, resolve_device
from segladder.io import atomic_path, atomic_write_json
from segladder.metrics import ThresholdSweepDice, per_record_dice
from segladder.progress import progress_bar
from segladder.viz import save_figure, threshold_curve_figure


@dataclass
class Evaluation:
    """What `evaluate` measured: global Dice at the stored and at the best threshold, and where it wrote."""

    dice_stored: float
    stored_threshold: float
    dice_best: float
    best_threshold: float
    records: int
    out: Path
    # Fold ensembles only: Dice at the out-of-fold threshold after removing the OOF-chosen small components.
    min_component: int = 0
    dice_postprocessed: float | None = None


def scored_batches(
    ensemble: Ensemble, inputs: Inputs, threshold: float
) -> Iterator[tuple[Batch, torch.Tensor, np.ndarray]]:
    """(batch, probabilities (B, 1, H, W), per-record Dice at `threshold`) for each batch of a labelled split.

    The one place evaluated records are fed to models: `evaluate` and the ladder report's pictures and
    worst records both read them here, so they agree record by record.
    """
    for batch in inputs.batches():
        probs = ensemble.probs(batch.images)
        yield batch, probs, per_record_dice(probs, batch.mask, threshold)


@dataclass
class RecordScores:
    """One checkpoint's predictions on the first records of a labelled split, as `evaluate` scores them."""

    record_ids: list[str]
    probs: torch.Tensor  # (N, 1, H, W)
    dice: np.ndarray  # (N,) per-record Dice at `threshold`
    threshold: float
    inputs: Inputs  # what the model read (decoded images and masks, via `inputs.item(i)`)


def score_records(
    checkpoint: str | Path,
    data: str | Path,
    split: str = "validation",
    *,
    limit: int | None = None,
    batch_size: int = 16,
    device: str | None = None,
) -> RecordScores:
    """Probabilities and per-record Dice of `checkpoint` on `split` of `data`, at its stored threshold.

    Scores the first `limit` records; these are the figures `evaluate` writes to per_record.csv.
    """
    ck = load_checkpoint(checkpoint)
    if ck.task != "segmentation":
        raise CheckpointError(f"{checkpoint}: a {ck.task} checkpoint; only segmentation masks are scored.")
    ensemble = Ensemble([TorchSegmenter(ck, resolve_device(device))])
    inputs = Inputs(ensemble.specs, data, split, batch_size=batch_size)
    if not inputs.has_mask:
        raise DataError(f"split '{split}' of {data} has no masks to score against.")
    n = len(inputs) if limit is None else min(limit, len(inputs))
    ids, probs, dice = [], [], []
    for batch, p, per in scored_batches(ensemble, inputs, ensemble.threshold):
        ids += batch.record_ids
        probs.append(p)
        dice.append(per)
        if len(ids) >= n:
            break
    return RecordScores(ids[:n], torch.cat(probs)[:n], np.concatenate(dice)[:n], ensemble.threshold, inputs)


@dataclass
class _Members:
    """What `evaluate` scores: the checkpoints, their ensemble and its stored choices, and where it writes."""

    paths: list
    ensemble: Ensemble
    threshold: float
    min_component: int
    default_out: Path


def _members(checkpoint: str | Path, split: str, folds: bool, device: torch.device) -> _Members:
    """One checkpoint, or the fold ensemble of a `train --folds` run directory with its out-of-fold choices."""
    min_component = 0
    if folds:
        from segladder.inference.folds import read_fold_ensemble

        fold_ensemble = read_fold_ensemble(checkpoint)
        paths = fold_ensemble.checkpoints
        min_component = fold_ensemble.min_component
        default_out = Path(checkpoint) / f"eval-{split}"
    else:
        paths = [checkpoint]
        default_out = Path(checkpoint).resolve().parent.parent / f"eval-{split}"
    members = []
    for path in paths:
        ck = load_checkpoint(path)
        if ck.task != "segmentation":
            raise CheckpointError(f"{path}: a {ck.task} checkpoint; evaluate scores segmentation masks.")
        members.append(TorchSegmenter(ck, device))
    ensemble = Ensemble(members)
    threshold = fold_ensemble.threshold if folds else ensemble.threshold
    return _Members(paths, ensemble, threshold, min_component, default_out)


class _Scores:
    """What `evaluate` accumulates batch by batch.

    The Dice sweep over thresholds, one per_record.csv row a record, and with `postprocess` the global Dice
    after removing components under `min_component`.
    """

    CSV_HEADER = ("record_id", "dice", "max_prob", "pred_pixels", "true_pixels")

    def __init__(self, threshold: float, min_component: int, postprocess: bool):
        self.threshold, self.min_component, self.postprocess = threshold, min_component, postprocess
        # The default 0.01 grid plus the stored threshold, so both figures come from one pass.
        grid = sorted({round(k / 100, 2) for k in range(1, 100)} | {threshold})
        self.sweep = ThresholdSweepDice(thresholds=grid)
        self.rows: list[tuple[str, float, float, int, int]] = []
        self.overlap = self.predicted = self.true = 0

    def update(self, batch: Batch, probs: torch.Tensor, per: np.ndarray) -> None:
        self.sweep.update(probs, batch.mask)
        for rid, dice, p, m in zip(batch.record_ids, per, probs, batch.mask, strict=True):
            self.rows.append(
                (rid, float(dice), float(p.max()), int((p > self.threshold).sum()), int(m.sum()))
            )
            if self.postprocess:
                kept = remove_small_components(binarize(p[0].numpy(), self.threshold), self.min_component) > 0
                truth = m[0].numpy() > 0.5
                self.overlap += int((kept & truth).sum())
                self.predicted, self.true = self.predicted + int(kept.sum()), self.true + int(truth.sum())

    def dice_postprocessed(self) -> float | None:
        if not self.postprocess:
            return None
        total = self.predicted + self.true
        return 2 * self.overlap / total if total else 1.0

    def write_csv(self, path: Path) -> None:
        """per_record.csv, the worst record first."""
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(self.CSV_HEADER)
            w.writerows(sorted(self.rows, key=lambda r: r[1]))


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    split: str = "validation",
    out: Path | None = None,
    batch_size: int = 16,
    device: str | None = None,
    progress: bool = True,
    folds: bool = False,
) -> Evaluation:
    """Score one checkpoint, or with `folds` the fold ensemble of a `train --folds` run directory.

    A fold ensemble averages its folds' probabilities; its stored threshold and minimum component size
    are the out-of-fold choices, so the figures are those `predict RUN --folds` would reach.
    """
    m = _members(checkpoint, split, folds, resolve_device(device))
    inputs = Inputs(m.ensemble.specs, data, split, batch_size=batch_size)
    if not inputs.has_mask:
        raise DataError(f"split '{split}' of {data} has no masks to evaluate against.")
    out = Path(out) if out else m.default_out
    out.mkdir(parents=True, exist_ok=True)
    scores = _Scores(m.threshold, m.min_component, postprocess=folds)
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task(f"evaluating {split}", total=len(inputs))
        for batch, probs, per in scored_batches(m.ensemble, inputs, m.threshold):
            scores.update(batch, probs, per)
            bar.advance(task, len(batch.record_ids))
    res = scores.sweep.compute()
    th, curve = res["thresholds"].numpy(), res["curve"].numpy()
    stored = float(curve[np.argmin(np.abs(th - m.threshold))])
    post = scores.dice_postprocessed()
    result = Evaluation(
        stored,
        m.threshold,
        float(res["dice_best"]),
        float(res["threshold"]),
        len(inputs),
        out,
        m.min_component,
        post,
    )
    scores.write_csv(out / "per_record.csv")
    atomic_write_json(
        out / "metrics.json",
        {
            "checkpoint": str(checkpoint),
            "checkpoints": [str(p) for p in m.paths],
            "fold_ensemble": folds,
            "data": str(data),
            "split": split,
            "records": len(inputs),
            "dice_at_stored_threshold": stored,
            "stored_threshold": m.threshold,
            "dice_best": result.dice_best,
            "best_threshold": result.best_threshold,
            "min_component": m.min_component,
            "dice_after_min_component": post,
            "curve": {"thresholds": th.tolist(), "dice": curve.tolist()},
        },
    )
    import matplotlib.pyplot as plt

    title = f"{split}, fold ensemble of {len(m.paths)}" if folds else f"{split}, {Path(checkpoint).name}"
    fig = threshold_curve_figure(th, curve, title, stored=m.threshold)
    save_figure(fig, out / "threshold_curve.png")
    plt.close(fig)
    return result

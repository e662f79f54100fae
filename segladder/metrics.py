"""Validation metrics: global Dice (the competition metric) with a threshold sweep, per-record Dice, classifier and box scores.

A pixel is predicted positive when `prob > threshold` (strictly, as torchmetrics does), compared in the
probabilities' own dtype; a target pixel is positive when `target > 0.5` (so a soft annotator mean
counts where the majority marked it, like `human_pixel_masks`). Global Dice pools all pixels of all
records, and is 1 when both prediction and target are empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.utilities import dim_zero_cat

__all__ = [
    "BoxMetrics",
    "ClassificationMetrics",
    "FiniteMean",
    "StepMeans",
    "ThresholdSweepDice",
    "box_iou",
    "global_dice",
    "per_record_dice",
]


def _as_tensor(x: Any) -> Tensor:
    return x.detach() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


def _binarize_target(target: Tensor) -> Tensor:
    return target if target.dtype == torch.bool else target > 0.5


def _checked_pair(probs: Any, targets: Any) -> tuple[Tensor, Tensor]:
    p, t = _as_tensor(probs), _as_tensor(targets)
    if p.shape != t.shape:
        raise ValueError(
            f"probabilities {tuple(p.shape)} and targets {tuple(t.shape)} must have the same shape"
        )
    return p, _binarize_target(t)


def _dice(tp: Tensor, pred_sum: Tensor, target_sum: Tensor) -> Tensor:
    denom = (pred_sum + target_sum).double()
    return torch.where(denom > 0, 2.0 * tp.double() / denom.clamp_min(1), torch.ones_like(denom))


def global_dice(probs: Any, targets: Any, threshold: float = 0.5) -> float:
    """Dice `2|P∩G| / (|P| + |G|)` over all pixels of `probs` and `targets` (arrays or tensors, same shape)."""
    p, t = _checked_pair(probs, targets)
    pred = p > threshold
    tp = (pred & t).sum()
    return float(_dice(tp, pred.sum(), t.sum()))


def per_record_dice(probs: Any, targets: Any, threshold: float = 0.5) -> np.ndarray:
    """Dice of each record along the first axis, as a float64 array of length N (empty and empty give 1)."""
    p, t = _checked_pair(probs, targets)
    pred = (p > threshold).reshape(p.shape[0], -1)
    t = t.reshape(t.shape[0], -1)
    return _dice((pred & t).sum(1), pred.sum(1), t.sum(1)).cpu().numpy()


class FiniteMean(Metric):
    """The weighted mean of the finite values given, accumulated on their device without a host sync.

    The epoch's training loss: a skipped non-finite step neither counts nor turns the mean into NaN
    (torchmetrics' `MeanMetric` checks for NaN on the host at every update). NaN when nothing was finite.

    Args:
        **kwargs: passed on to torchmetrics' `Metric`.
    """

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("weight", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: Tensor, weight: float = 1.0) -> None:
        """Add the finite elements of `value`, each weighted by `weight`."""
        value = value.detach().float()
        finite = torch.isfinite(value)
        self.total += torch.where(finite, value, 0.0).sum() * weight
        self.weight += finite.sum() * weight

    def compute(self) -> Tensor:
        """The weighted mean of the finite values so far (NaN when there were none)."""
        return self.total / self.weight


class StepMeans(nn.Module):
    """Weighted means by name of values given once a step (the epoch's training loss and its parts).

    A step only keeps a reference to its values: every `FOLD` steps, and when read, they are stacked and
    folded into one `FiniteMean` per name and weight, so a training step launches no device work for them
    (each kernel launch is host time a launch-bound GPU step waits for).
    """

    FOLD = 256

    def __init__(self):
        super().__init__()
        self.means = nn.ModuleDict()
        self._pending: list[tuple[float, dict[str, Tensor]]] = []

    def update(self, values: dict[str, Tensor], weight: float = 1.0) -> None:
        """Keep this step's `values` (name → scalar tensor) with `weight`; fold every `FOLD` steps."""
        self._pending.append((float(weight), values))
        if len(self._pending) >= self.FOLD:
            self.fold()

    def fold(self) -> None:
        """Fold the kept steps into the means: one stack and one update per name and weight."""
        groups: dict[tuple[str, float], list[Tensor]] = {}
        for weight, values in self._pending:
            for name, value in values.items():
                groups.setdefault((name, weight), []).append(value.detach().reshape(()))
        self._pending.clear()
        for (name, weight), stacked in groups.items():
            if name not in self.means:
                self.means[name] = FiniteMean().to(stacked[0].device)
            self.means[name].update(torch.stack(stacked), weight)

    def compute(self) -> dict[str, Tensor]:
        """The means so far, reduced over processes, of the names that had a value."""
        self.fold()
        return {name: m.compute() for name, m in self.means.items() if m.update_called}

    def reset(self) -> None:
        """Forget the kept steps and reset every mean."""
        self._pending.clear()
        for m in self.means.values():
            m.reset()


def _threshold_grid(thresholds: int | Sequence[float]) -> tuple[float, ...]:
    if isinstance(thresholds, int):
        if thresholds < 2:
            raise ValueError(f"thresholds as a count must be >= 2, got {thresholds}")
        grid = [k / thresholds for k in range(1, thresholds)]
    else:
        grid = [float(v) for v in thresholds]
    if not all(0.0 <= v <= 1.0 for v in grid):
        raise ValueError(f"thresholds must lie in [0, 1], got {grid}")
    return tuple(sorted(set(grid) | {0.5}))


class ThresholdSweepDice(Metric):
    """Global Dice at every threshold of a sweep; picks the best threshold for checkpointing and inference.

    `update(preds, target)` takes probabilities (or logits with `from_logits=True`) and binary or
    soft targets of any equal shape. Each batch is bucketised once against the sorted thresholds
    (`torch.bucketize`, O(n log T)) and counted with `torch.bincount`, so the sweep costs about
    as much as one threshold, is exact for any list of thresholds (not only bin edges), and stays
    deterministic on CUDA (`histc` is not). States are int64 counts reduced by sum: validation
    sums reach 1,856 × 65,536 pixels, beyond float32's exact integers (2**24).

    `thresholds`: an int `n` means the grid k/n for k = 1..n-1 (default: steps of 0.01), or give a
    list; 0.5 is always added. `compute()` returns a dict of tensors: scalars `dice_best`,
    `threshold` (ties go to the threshold nearest 0.5), `dice_at_0.5`, `iou_at_best`,
    `iou_at_0.5`, and the vectors `curve` (Dice per threshold) and `thresholds` — log the scalars,
    plot the vectors.

    Args:
        thresholds: `n` for the grid k/n, or a list of thresholds; 0.5 is always added.
        from_logits: apply a sigmoid to `preds` first.
        **kwargs: passed on to torchmetrics' `Metric`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    tp: Tensor
    pred_sum: Tensor
    target_sum: Tensor

    def __init__(self, thresholds: int | Sequence[float] = 100, from_logits: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.thresholds = _threshold_grid(thresholds)
        self.from_logits = from_logits
        n = len(self.thresholds)
        self.add_state("tp", default=torch.zeros(n, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("pred_sum", default=torch.zeros(n, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("target_sum", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Count true positives, predicted and true pixels of a batch at every threshold."""
        p, t = _checked_pair(preds, target)
        p = p.float()
        if self.from_logits:
            p = torch.sigmoid(p)
        # bucketize sorts NaN above every threshold; `>` (global_dice) never counts it as positive.
        p = p.nan_to_num(nan=0.0)
        n = len(self.thresholds)
        # bucket b = number of thresholds strictly below p: the pixel is positive at thresholds 0..b-1.
        bounds = torch.tensor(self.thresholds, dtype=p.dtype, device=p.device)
        bucket = torch.bucketize(p.reshape(-1), bounds)
        counts = torch.bincount(bucket + (n + 1) * t.reshape(-1).long(), minlength=2 * (n + 1))
        neg, pos = counts.view(2, n + 1)
        pos_above = pos.flip(0).cumsum(0).flip(0)[1:]
        all_above = (pos + neg).flip(0).cumsum(0).flip(0)[1:]
        self.tp += pos_above
        self.pred_sum += all_above
        self.target_sum += pos.sum()

    def compute(self) -> dict[str, Tensor]:
        """Dice and IoU at the best threshold and at 0.5, with the Dice curve; see the class docstring."""
        thresholds = torch.tensor(self.thresholds, dtype=torch.float64, device=self.tp.device)
        dice = _dice(self.tp, self.pred_sum, self.target_sum)
        union = (self.pred_sum + self.target_sum - self.tp).double()
        iou = torch.where(union > 0, self.tp.double() / union.clamp_min(1), torch.ones_like(union))
        best_candidates = (dice == dice.max()).nonzero().flatten()
        best = best_candidates[(thresholds[best_candidates] - 0.5).abs().argmin()]
        half = self.thresholds.index(0.5)
        return {
            "dice_best": dice[best].float(),
            "threshold": thresholds[best].float(),
            "dice_at_0.5": dice[half].float(),
            "iou_at_best": iou[best].float(),
            "iou_at_0.5": iou[half].float(),
            "curve": dice.float(),
            "thresholds": thresholds.float(),
        }


class ClassificationMetrics(Metric):
    """Accuracy (at `threshold`) and ROC-AUC of a per-record "has contrail" classifier.

    `update(preds, target)` takes one score per record: probabilities, or logits with
    `from_logits=True` (explicitly, because torchmetrics' own guess — sigmoid only when a batch
    leaves [0, 1] — can differ between batches). `compute()` returns `{"acc", "auc"}`; `auc` is
    NaN while the targets hold one class only. Scores are kept per record (gathered with "cat"
    across processes), which is cheap at one float per record.

    Args:
        threshold: the score above which a record counts as "has contrail" for accuracy.
        from_logits: apply a sigmoid to `preds` first.
        **kwargs: passed on to torchmetrics' `Metric`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: Tensor
    total: Tensor
    scores: list[Tensor]
    labels: list[Tensor]

    def __init__(self, threshold: float = 0.5, from_logits: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.threshold = threshold
        self.from_logits = from_logits
        self.add_state("correct", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Count correct records and keep the scores and labels of a batch (one score per record)."""
        p, t = _checked_pair(preds, target)
        p = p.float().reshape(-1)
        if self.from_logits:
            p = torch.sigmoid(p)
        t = t.reshape(-1)
        self.correct += ((p > self.threshold) == t).sum()
        self.total += t.numel()
        self.scores.append(p)
        self.labels.append(t.long())

    def compute(self) -> dict[str, Tensor]:
        """`{"acc", "auc"}` over the records so far; `auc` is NaN while the targets hold one class only."""
        acc = self.correct.double() / self.total.clamp_min(1)
        auc = torch.tensor(float("nan"), device=acc.device)
        if int(self.total) > 0:
            labels = dim_zero_cat(self.labels)
            if labels.unique().numel() == 2:
                auc = binary_auroc(dim_zero_cat(self.scores), labels)
        return {"acc": acc.float(), "auc": auc.float()}


# ------------------------------------------------------------------------------------------------ boxes

BOX_KEYS = (
    "miou",
    "iou_over_0.9",
    "edges_within_1px",
    "edges_within_3px",
    "corners_within_1px",
    "corners_within_3px",
)
_EPS = 1e-6  # an edge exactly 1 px away counts as within 1 px despite float rounding


def box_iou(pred: Any, true: Any) -> Tensor:
    """IoU of each pair of (N, 4) boxes (x0, y0, x1, y1), row by row, in float64."""
    p, t = _as_tensor(pred).double().reshape(-1, 4), _as_tensor(true).double().reshape(-1, 4)
    iw = (torch.minimum(p[:, 2], t[:, 2]) - torch.maximum(p[:, 0], t[:, 0])).clamp_min(0)
    ih = (torch.minimum(p[:, 3], t[:, 3]) - torch.maximum(p[:, 1], t[:, 1])).clamp_min(0)
    inter = iw * ih
    area = lambda b: (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)  # noqa: E731
    union = area(p) + area(t) - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(union))


class BoxMetrics(Metric):
    """The Snapper paper's Table 1 over (N, 4) xyxy boxes in image pixels; sums are reduced across processes.

    `compute()` gives `miou`, `iou_over_0.9` (fraction of boxes with IoU > 0.9), `edges_within_1px` /
    `edges_within_3px` (fraction of the 4·N edges with |Δ| ≤ 1 / ≤ 3 px), `corners_within_1px` /
    `corners_within_3px` (fraction of the 4·N corners with Euclidean distance ≤ 1 / ≤ 3 px), all in [0, 1],
    and `boxes` (N).

    Args:
        **kwargs: passed on to torchmetrics' `Metric`.
    """

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("iou_sum", *BOX_KEYS[1:]):
            self.add_state(
                name.replace(".", "_"), default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum"
            )
        self.add_state("boxes", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, pred: Any, true: Any) -> None:
        """Add the IoU and edge and corner errors of predicted boxes `pred` against `true`, both (N, 4) xyxy."""
        p, t = _as_tensor(pred).double().reshape(-1, 4), _as_tensor(true).double().reshape(-1, 4)
        p, t = p.to(self.device), t.to(self.device)
        iou = box_iou(p, t)
        self.iou_sum += iou.sum()
        self.iou_over_0_9 += (iou > 0.9).sum()
        d = (p - t).abs()
        self.edges_within_1px += (d <= 1 + _EPS).sum()
        self.edges_within_3px += (d <= 3 + _EPS).sum()
        # Corners (x0, y0), (x1, y0), (x0, y1), (x1, y1): distance from the x and y errors of their two edges.
        dist = torch.stack([torch.hypot(d[:, i], d[:, j]) for i in (0, 2) for j in (1, 3)], 1)
        self.corners_within_1px += (dist <= 1 + _EPS).sum()
        self.corners_within_3px += (dist <= 3 + _EPS).sum()
        self.boxes += p.shape[0]

    def compute(self) -> dict[str, Tensor]:
        """The means over the boxes so far; see the class docstring."""
        n = self.boxes.clamp_min(1).double()
        return {
            "miou": self.iou_sum / n,
            "iou_over_0.9": self.iou_over_0_9 / n,
            "edges_within_1px": self.edges_within_1px / (4 * n),
            "edges_within_3px": self.edges_within_3px / (4 * n),
            "corners_within_1px": self.corners_within_1px / (4 * n),
            "corners_within_3px": self.corners_within_3px / (4 * n),
            "boxes": self.boxes.clone(),
        }

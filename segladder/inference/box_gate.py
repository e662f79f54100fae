"""The edge-confidence gate of box adjustment and the calibration of edge confidence.

Box adjustment (the Snapper paper, Williams et al., IUI 2024) moves each edge of a rough box to where the model
puts it; the model also gives each edge a confidence (the peak probability of its position distribution).
The gate keeps the rough edge wherever that confidence is below a minimum C, edge by edge (left, top, right,
bottom), so a model that is unsure of an edge leaves it as the person or detector drew it:

- C = 0 moves every edge (what box adjustment did before the gate);
- C = 1 keeps every rough edge (the adjusted box is the rough box): always as good as the rough boxes.

`choose_min_confidence` picks C on validation boxes: the C with the highest mean IoU among those whose mean
IoU is not below the rough boxes' (C = 1 always qualifies). Training stores it in the checkpoint.

`calibration` measures how well the confidence predicts an edge within `tolerance` (1 px) of the truth:
per confidence bin the fraction of edges within it, the expected calibration error (ECE: the bins' mean
|fraction within − mean confidence|, weighted by their share of edges) and the AUC of the confidence for the
event (the probability that an edge within 1 px has a higher confidence than one outside; 0.5: no better
than chance).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

MAX_CANDIDATES = 512  # thresholds tried by `choose_min_confidence` (quantiles of the confidences beyond that)
CALIBRATION_BINS = 10


def check_min_confidence(value: float | None, where: str = "--min-confidence") -> None:
    """An InferenceError naming `where` for a minimum confidence outside [0, 1] (or not a number)."""
    from segladder.inference.errors import InferenceError

    if value is not None and not (0.0 <= float(value) <= 1.0):
        raise InferenceError(
            f"{where} {value:g}: an edge confidence is a probability; give a value in [0, 1] "
            "(0 moves every edge, 1 keeps every rough edge)."
        )


def gate_edges(
    rough: np.ndarray, snapped: np.ndarray, conf: np.ndarray, min_confidence: float
) -> tuple[np.ndarray, np.ndarray]:
    """Keep each rough edge whose confidence is below `min_confidence`: ((N, 4) xyxy boxes, (N, 4) bool moved).

    `rough` and `snapped` are (N, 4) xyxy boxes (left, top, right, bottom), `conf` the (N, 4) confidence of
    the snapped edges in the same order. `min_confidence` 1 keeps every edge, even one of confidence 1.
    A kept edge beyond its moved partner (a right edge left of the left one) swaps with it, as in decoding.
    """
    rough, snapped = np.asarray(rough, np.float64), np.asarray(snapped, np.float64)
    conf = np.asarray(conf, np.float64)
    if min_confidence >= 1.0:
        moved = np.zeros(conf.shape, bool)
    else:
        moved = conf >= min_confidence
    out = np.where(moved, snapped, rough)
    lo, hi = np.minimum(out[..., :2], out[..., 2:]), np.maximum(out[..., :2], out[..., 2:])
    return np.concatenate([lo, hi], -1), moved


def moved_edges(rough: np.ndarray, final: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """(N, 4) bool: which edges of the (N, 4) xyxy `final` boxes differ from the `rough` ones by more than `tol` px."""
    return np.abs(np.asarray(final, np.float64) - np.asarray(rough, np.float64)) > tol


def box_ious(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """IoU of (…, N, 4) xyxy boxes against (N, 4) true boxes, pair by pair (float64)."""
    p, t = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    iw = np.clip(np.minimum(p[..., 2], t[..., 2]) - np.maximum(p[..., 0], t[..., 0]), 0, None)
    ih = np.clip(np.minimum(p[..., 3], t[..., 3]) - np.maximum(p[..., 1], t[..., 1]), 0, None)
    inter = iw * ih
    area_p = np.clip(p[..., 2] - p[..., 0], 0, None) * np.clip(p[..., 3] - p[..., 1], 0, None)
    area_t = np.clip(t[..., 2] - t[..., 0], 0, None) * np.clip(t[..., 3] - t[..., 1], 0, None)
    union = area_p + area_t - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


@dataclass
class GateChoice:
    """The gate chosen on validation boxes and what it did there (mean IoU of the rough, the adjusted boxes
    without the gate and with it; the fraction of edges it moved)."""

    min_confidence: float
    boxes: int
    miou_rough: float
    miou_adjusted: float
    miou_gated: float
    edges_moved: float
    candidates: int

    def as_dict(self) -> dict:
        return asdict(self)


def choose_min_confidence(
    rough: np.ndarray,
    snapped: np.ndarray,
    conf: np.ndarray,
    true: np.ndarray,
    max_candidates: int = MAX_CANDIDATES,
) -> GateChoice:
    """The minimum confidence that maximises the mean IoU of the gated boxes without lowering it below the rough boxes'.

    Tries C = 0, 1 and the edge confidences themselves (quantiles of them past `max_candidates`); every C
    tried is scored exactly, so the choice never scores below the rough boxes on these boxes (C = 1 gives
    exactly the rough boxes). Among equal scores the lowest C (the one that moves most edges) wins; a C
    between 0 and 1 is returned as the midpoint between the winning confidence and the next lower one,
    which moves the same edges.
    """
    rough, snapped = np.asarray(rough, np.float64), np.asarray(snapped, np.float64)
    conf, true = np.asarray(conf, np.float64), np.asarray(true, np.float64)
    all_values = np.unique(conf)
    values = all_values
    if len(values) > max_candidates:
        values = np.unique(np.quantile(values, np.linspace(0, 1, max_candidates)))
    cands = np.unique(np.concatenate([[0.0, 1.0], values[(values > 0) & (values < 1)]]))
    mious = np.empty(len(cands))
    for start in range(0, len(cands), 64):  # (K, N, 4) at a time, K ≤ 64
        chunk = cands[start : start + 64]
        moved = conf[None] >= chunk[:, None, None]
        moved[chunk >= 1.0] = False
        boxes = np.where(moved, snapped[None], rough[None])
        boxes = np.concatenate(
            [np.minimum(boxes[..., :2], boxes[..., 2:]), np.maximum(boxes[..., :2], boxes[..., 2:])], -1
        )
        mious[start : start + len(chunk)] = box_ious(boxes, true).mean(-1)
    base = float(box_ious(rough, true).mean())
    # C = 1 (the rough boxes) is a candidate, so the best candidate is never below them: "the best among
    # those that do not lower mIoU" is the best overall. np.argmax takes the first (lowest) of equal ones.
    best = int(np.argmax(mious))
    c = float(cands[best])
    if 0.0 < c < 1.0:
        # Any C above the next lower confidence moves the same edges here: the midpoint keeps the choice
        # when the same boxes are scored again with confidences that differ in the last float bits.
        below = all_values[all_values < c]
        c = float((c + (below.max() if len(below) else 0.0)) / 2)
    _, moved = gate_edges(rough, snapped, conf, c)
    return GateChoice(
        min_confidence=c,
        boxes=len(true),
        miou_rough=base,
        miou_adjusted=float(box_ious(snapped, true).mean()),
        miou_gated=float(mious[best]),
        edges_moved=float(moved.mean()) if moved.size else 0.0,
        candidates=len(cands),
    )


# ------------------------------------------------------------------------------------------- calibration


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x`, ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def auc_of(score: np.ndarray, event: np.ndarray) -> float | None:
    """ROC AUC of `score` for the boolean `event` (Mann–Whitney, ties count half); None when one class is empty."""
    score, event = np.asarray(score, np.float64).ravel(), np.asarray(event, bool).ravel()
    pos, neg = int(event.sum()), int((~event).sum())
    if pos == 0 or neg == 0:
        return None
    ranks = _average_ranks(score)
    return float((ranks[event].sum() - pos * (pos + 1) / 2) / (pos * neg))


def calibration(
    conf: np.ndarray, error_px: np.ndarray, tolerance: float = 1.0, bins: int = CALIBRATION_BINS
) -> dict:
    """How well edge confidence predicts |error| ≤ `tolerance` px: per-bin fractions, ECE and AUC.

    `conf` and `error_px` hold one value per edge (any shape, flattened together). Bins split [0, 1] into
    `bins` equal widths (a confidence of 1 falls in the last). Returns `edges`, `within` (overall fraction),
    `mean_confidence`, `ece`, `auc` (None when every edge is within, or none is) and `bins`: for each
    `lo`, `hi`, `edges`, `mean_confidence` and `within` (None for an empty bin).
    """
    conf = np.asarray(conf, np.float64).ravel()
    hit = np.asarray(error_px, np.float64).ravel() <= tolerance + 1e-6
    n = len(conf)
    idx = np.clip((conf * bins).astype(int), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        sel = idx == b
        k = int(sel.sum())
        mc = float(conf[sel].mean()) if k else None
        fw = float(hit[sel].mean()) if k else None
        if k:
            ece += k / n * abs(fw - mc)
        table.append({"lo": b / bins, "hi": (b + 1) / bins, "edges": k, "mean_confidence": mc, "within": fw})
    return {
        "tolerance_px": tolerance,
        "edges": n,
        "within": float(hit.mean()) if n else None,
        "mean_confidence": float(conf.mean()) if n else None,
        "ece": float(ece) if n else None,
        "auc": auc_of(conf, hit),
        "bins": table,
    }


def reliability_png(cal: dict, path: str | Path, title: str = "edge confidence") -> None:
    """A reliability diagram of `calibration(...)`: fraction within tolerance against mean confidence per bin
    (the diagonal is perfect calibration), and below it how many edges each bin holds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from segladder.viz import save_figure

    bins = cal["bins"]
    centres = [(b["lo"] + b["hi"]) / 2 for b in bins]
    width = bins[0]["hi"] - bins[0]["lo"] if bins else 0.1
    fig, (ax, hx) = plt.subplots(
        2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, constrained_layout=True
    )
    full = [(c, b) for c, b in zip(centres, bins, strict=True) if b["edges"]]
    ax.bar(
        [c for c, _ in full],
        [b["within"] for _, b in full],
        width=width * 0.9,
        color="tab:blue",
        alpha=0.7,
        label=f"edges within {cal['tolerance_px']:g} px",
    )
    ax.plot([b["mean_confidence"] for _, b in full], [b["within"] for _, b in full], "o", color="tab:orange")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    auc = "n/a" if cal["auc"] is None else f"{cal['auc']:.3f}"
    ece = "n/a" if cal["ece"] is None else f"{cal['ece']:.3f}"
    ax.set_title(f"{title}\n{cal['edges']} edges · ECE {ece} · AUC {auc}", fontsize=10)
    ax.set_ylabel(f"fraction within {cal['tolerance_px']:g} px")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    hx.bar(centres, [b["edges"] for b in bins], width=width * 0.9, color="grey")
    hx.set_xlabel("edge confidence (peak probability)")
    hx.set_ylabel("edges")
    save_figure(fig, path)
    plt.close(fig)


def gate_summary(choice: GateChoice, cal: dict) -> dict:
    """What training stores beside the gate (checkpoint section `box_gate`) and writes as box_calibration.json."""
    return {**choice.as_dict(), "calibration": cal}


def edge_errors(snapped: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(N, 4) |snapped − true| of each edge in image pixels."""
    return np.abs(np.asarray(snapped, np.float64) - np.asarray(true, np.float64))


# ---------------------------------------------------------------------------------- validation records


class EdgeRecords(Metric):
    """The validation boxes kept whole (rough, snapped, true xyxy and the per-edge confidence) to choose the
    gate and measure calibration at the end of a validation epoch; concatenated across processes."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("rough", "snapped", "true", "conf"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, rough: Tensor, snapped: Tensor, true: Tensor, conf: Tensor) -> None:
        self.rough.append(rough.double().reshape(-1, 4))
        self.snapped.append(snapped.double().reshape(-1, 4))
        self.true.append(true.double().reshape(-1, 4))
        self.conf.append(conf.double().reshape(-1, 4))

    def compute(self) -> dict[str, np.ndarray]:
        def cat(x) -> np.ndarray:
            if isinstance(x, Tensor):
                return x.reshape(-1, 4).cpu().numpy()
            return torch.cat(x).reshape(-1, 4).cpu().numpy() if x else np.zeros((0, 4))

        return {k: cat(getattr(self, k)) for k in ("rough", "snapped", "true", "conf")}

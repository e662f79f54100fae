"""The do-no-harm gate of box adjustment (which snapped edges may move) and the calibration of edge confidence.

Box adjustment (the Snapper paper, Williams et al., IUI 2024) moves each edge of a rough box to where the model
puts it; the model also gives each edge a confidence (the peak probability of its position distribution).
The gate (`EdgeGate`) keeps the rough edge, edge by edge (left, top, right, bottom), unless both

- its confidence is at least `min_confidence` (C), and
- its move is at most `max_move` (M) of the rough box's side along that edge's axis (width for left and
  right, height for top and bottom).

C = 0 and M = inf move every edge (box adjustment without the gate); C = 1 keeps every rough edge (the
adjusted box is the rough box). Both conditions earn their place on real photographs: edge confidence alone
barely predicts an edge within 1 px there (AUC 0.44–0.60), while a model that is right about most edges to a
pixel is wrong about a few by a large fraction of the box, and those few set the mean IoU (docs/boxes.md).

`choose_gate` picks (C, M) on validation boxes and only keeps it when it helps beyond noise:

1. every (C, M) on a grid (quantiles of the confidences and of the relative moves, plus "move nothing") is
   scored on every box: its IoU gain over the rough box;
2. repeated K-fold cross-validation (by object: jittered copies of one box share a fold) chooses (C, M) on
   K−1 folds and scores it on the held-out fold, so each box gets a gain measured out of sample;
3. the gate is accepted only when that cross-validated mean gain exceeds `z` standard errors (one-sided,
   z = 1.645: 95 %); then (C, M) is chosen once more on all boxes. Otherwise the gate keeps every rough
   edge and says why: on validation the model could not be shown to help.

Choosing on the same boxes that score the choice would always find some (C, M) that helps a little by luck:
on 72 validation photo boxes such a gate lost 0.5 mIoU on held-out photos (docs/benchmarks.md).

`calibration` measures how well the confidence predicts an edge within `tolerance` (1 px) of the truth:
per confidence bin the fraction of edges within it, the expected calibration error (ECE: the bins' mean
|fraction within − mean confidence|, weighted by their share of edges) and the AUC of the confidence for the
event (the probability that an edge within 1 px has a higher confidence than one outside; 0.5: no better
than chance).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

GRID_LEVELS = 24  # quantiles of the confidences and of the relative moves tried by `choose_gate`
CV_FOLDS = 5
CV_REPEATS = 5
GATE_Z = 1.645  # one-sided 95 %: the cross-validated gain must exceed this many standard errors
CALIBRATION_BINS = 10


def check_min_confidence(value: float | None, where: str = "--min-confidence") -> None:
    """An InferenceError naming `where` for a minimum confidence outside [0, 1] (or not a number)."""
    from segladder.inference.errors import InferenceError

    if value is not None and not (0.0 <= float(value) <= 1.0):
        raise InferenceError(
            f"{where} {value:g}: an edge confidence is a probability; give a value in [0, 1] "
            "(0 moves every edge, 1 keeps every rough edge)."
        )


def check_max_move(value: float | None, where: str = "--max-move") -> None:
    """An InferenceError naming `where` for a maximum move that is negative or not a number."""
    from segladder.inference.errors import InferenceError

    if value is not None and not (float(value) >= 0.0):
        raise InferenceError(
            f"{where} {value:g}: the largest move an edge may make, as a fraction of the box side; give a "
            "value ≥ 0 (0.1: at most 10 % of the width or height; inf: no limit)."
        )


def relative_moves(rough: np.ndarray, snapped: np.ndarray) -> np.ndarray:
    """(…, 4) |snapped − rough| of each edge over the rough box's side on that axis.

    The side is the width for x edges and the height for y edges, at least 1 px.
    """
    rough, snapped = np.asarray(rough, np.float64), np.asarray(snapped, np.float64)
    side = np.maximum(np.abs(rough[..., 2:] - rough[..., :2]), 1.0)
    return np.abs(snapped - rough) / np.concatenate([side, side], -1)


def gate_edges(
    rough: np.ndarray,
    snapped: np.ndarray,
    conf: np.ndarray,
    min_confidence: float,
    max_move: float = math.inf,
) -> tuple[np.ndarray, np.ndarray]:
    """Keep each rough edge below `min_confidence` or moving over `max_move` of its side; move the rest.

    Returns ((N, 4) xyxy boxes, (N, 4) bool moved).

    `rough` and `snapped` are (N, 4) xyxy boxes (left, top, right, bottom), `conf` the (N, 4) confidence of
    the snapped edges in the same order. `min_confidence` 1 keeps every edge, even one of confidence 1.
    A kept edge beyond its moved partner (a right edge left of the left one) swaps with it, as in decoding.
    """
    rough, snapped = np.asarray(rough, np.float64), np.asarray(snapped, np.float64)
    conf = np.asarray(conf, np.float64)
    if min_confidence >= 1.0:
        moved = np.zeros(conf.shape, bool)
    else:
        moved = (conf >= min_confidence) & (relative_moves(rough, snapped) <= max_move)
    return _ordered(np.where(moved, snapped, rough)), moved


def _ordered(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [np.minimum(boxes[..., :2], boxes[..., 2:]), np.maximum(boxes[..., :2], boxes[..., 2:])], -1
    )


@dataclass(frozen=True)
class EdgeGate:
    """Which snapped edges may move (see the module docstring).

    Args:
        min_confidence: an edge below this confidence keeps its rough position (0: no limit; 1: keep all).
        max_move: an edge that would move more than this fraction of its box side keeps its rough position.
    """

    min_confidence: float = 0.0
    max_move: float = math.inf

    def apply(
        self, rough: np.ndarray, snapped: np.ndarray, conf: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """((N, 4) gated xyxy boxes, (N, 4) bool moved)."""
        return gate_edges(rough, snapped, conf, self.min_confidence, self.max_move)

    @property
    def moves_all(self) -> bool:
        """Whether the gate lets every edge move (no confidence floor, no limit on the move)."""
        return self.min_confidence <= 0.0 and math.isinf(self.max_move)

    def describe(self) -> str:
        """The gate in words, for messages and reports."""
        if self.min_confidence >= 1.0:
            return "keeps every rough edge"
        if self.moves_all:
            return "moves every edge"
        move = (
            "any move"
            if math.isinf(self.max_move)
            else f"moves up to {100 * self.max_move:.3g}% of the box side"
        )
        return f"min confidence {self.min_confidence:.4g}, {move}"


KEEP_ROUGH = EdgeGate(1.0, 0.0)


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
    """The gate chosen on validation boxes and what it did there.

    `miou_rough`, `miou_adjusted`, `miou_gated`: mean IoU of the rough boxes, the adjusted ones without the
    gate and with it; `edges_moved`: the fraction of edges the gate let move; `cv_gain`, `cv_se`: the
    cross-validated mean IoU gain of choosing a gate on these boxes and its standard error; `accepted`:
    whether that gain cleared `z` standard errors (else the gate keeps every rough edge); `reason`: why.
    """

    min_confidence: float
    max_move: float
    boxes: int
    miou_rough: float
    miou_adjusted: float
    miou_gated: float
    edges_moved: float
    candidates: int
    cv_gain: float
    cv_se: float
    accepted: bool
    reason: str

    @property
    def gate(self) -> EdgeGate:
        """The chosen gate."""
        return EdgeGate(self.min_confidence, self.max_move)

    def as_dict(self) -> dict:
        """The choice as JSON, with no limit on the move (`max_move` infinite) stored as None."""
        # JSON has no infinity: "no limit on the move" is stored as None.
        d = asdict(self)
        d["max_move"] = None if math.isinf(self.max_move) else self.max_move
        return d


def _grid(values: np.ndarray, levels: int) -> np.ndarray:
    """Up to `levels` thresholds taken from `values` themselves (quantiles), ascending and distinct."""
    v = np.unique(values)
    if len(v) > levels:
        v = np.unique(np.quantile(v, np.linspace(0, 1, levels), method="nearest"))
    return v


def _candidates(conf: np.ndarray, rel: np.ndarray, levels: int) -> list[tuple[float, float]]:
    """(C, M) pairs, "move nothing" first so that ties go to the rough boxes."""
    cs = np.concatenate([[0.0], _grid(conf[(conf > 0) & (conf < 1)], levels)])
    ms = np.concatenate([_grid(rel, levels), [math.inf]])
    return [(1.0, 0.0)] + [(float(c), float(m)) for c in cs for m in ms]


def _gain_matrix(rough, snapped, conf, true, rel, cands) -> np.ndarray:
    """(K, N) IoU gain over the rough box of every candidate gate on every box."""
    base = box_ious(rough, true)
    out = np.empty((len(cands), len(true)))
    c = np.array([k[0] for k in cands])[:, None, None]
    m = np.array([k[1] for k in cands])[:, None, None]
    for start in range(0, len(cands), 64):  # (64, N, 4) at a time
        sl = slice(start, start + 64)
        moved = (conf[None] >= c[sl]) & (rel[None] <= m[sl]) & (c[sl] < 1.0)
        out[sl] = box_ious(_ordered(np.where(moved, snapped[None], rough[None])), true) - base
    return out


def _cross_validated_gain(gains: np.ndarray, groups: np.ndarray, folds: int, repeats: int, seed: int):
    """Per-group out-of-fold gain of choosing the best candidate on the other folds, averaged over repeats."""
    ids, inverse = np.unique(groups, return_inverse=True)
    oof = np.zeros(len(ids))
    rng = np.random.default_rng(seed)
    for _ in range(repeats):
        fold_of_group = rng.permutation(len(ids)) % folds
        fold = fold_of_group[inverse]
        for k in range(folds):
            held = fold == k
            best = int(np.argmax(gains[:, ~held].mean(1)))
            oof += np.bincount(inverse[held], weights=gains[best, held], minlength=len(ids))
    per_box = np.bincount(inverse, minlength=len(ids))
    return oof / repeats / per_box


def choose_gate(
    rough: np.ndarray,
    snapped: np.ndarray,
    conf: np.ndarray,
    true: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    folds: int = CV_FOLDS,
    repeats: int = CV_REPEATS,
    z: float = GATE_Z,
    levels: int = GRID_LEVELS,
    seed: int = 0,
) -> GateChoice:
    """The gate (C, M) for these validation boxes, or "keep every rough edge" when no gain clears the noise.

    `rough`, `snapped`, `true`: (N, 4) xyxy; `conf`: (N, 4); `groups`: (N,) object ids (jittered copies of
    one box share an id; default: every box its own). See the module docstring for the procedure. The choice
    never scores below the rough boxes on these boxes: "move nothing" is a candidate and wins ties.
    """
    rough, snapped = np.asarray(rough, np.float64), np.asarray(snapped, np.float64)
    conf, true = np.asarray(conf, np.float64), np.asarray(true, np.float64)
    groups = np.arange(len(true)) if groups is None else np.asarray(groups)
    rel = relative_moves(rough, snapped)
    cands = _candidates(conf, rel, levels)
    gains = _gain_matrix(rough, snapped, conf, true, rel, cands)
    n_groups = len(np.unique(groups))
    base = float(box_ious(rough, true).mean()) if len(true) else 0.0
    adjusted = float(box_ious(snapped, true).mean()) if len(true) else 0.0
    if n_groups < 2 * folds:
        cv_gain, cv_se = 0.0, math.inf
        accepted = False
        reason = f"{n_groups} validation objects are too few to test a gate ({2 * folds} at least)"
    else:
        per_group = _cross_validated_gain(gains, groups, folds, repeats, seed)
        cv_gain = float(per_group.mean())
        cv_se = float(per_group.std(ddof=1) / math.sqrt(n_groups))
        accepted = cv_gain > 0 and cv_gain > z * cv_se
        verdict = "above" if accepted else "not above"
        reason = (
            f"cross-validated mIoU gain {cv_gain:+.4f} ± {cv_se:.4f} ({folds} folds × {repeats}) is "
            f"{verdict} {z:g} standard errors"
        )
    best = int(np.argmax(gains.mean(1))) if accepted else 0
    c, m = cands[best]
    if accepted:
        c, m = _between(c, conf, below=True), _between(m, rel, below=False)
        reason += f"; chosen on all {len(true)} boxes"
    else:
        reason += ": the rough boxes are kept (the model could not be shown to help on validation)"
    gate = EdgeGate(c, m)
    gated_boxes, moved = gate.apply(rough, snapped, conf)
    gated = float(box_ious(gated_boxes, true).mean()) if len(true) else 0.0
    return GateChoice(
        min_confidence=c,
        max_move=m,
        boxes=len(true),
        miou_rough=base,
        miou_adjusted=adjusted,
        miou_gated=gated,
        edges_moved=float(moved.mean()) if moved.size else 0.0,
        candidates=len(cands),
        cv_gain=cv_gain,
        cv_se=cv_se,
        accepted=bool(accepted),
        reason=reason,
    )


def _between(value: float, data: np.ndarray, below: bool) -> float:
    """A threshold between `value` and the nearest data value on the far side, which selects the same edges.

    The midpoint keeps the choice when the boxes are scored again with values that differ in the last bits.
    """
    if not (0.0 < value < math.inf) or (below and value >= 1.0):
        return value
    other = data[data < value] if below else data[data > value]
    if not len(other):
        return value if not below else value / 2
    return float((value + (other.max() if below else other.min())) / 2)


def gate_from_checkpoint_section(section: dict) -> EdgeGate | None:
    """The gate stored in a checkpoint's section (None: trained before the gate existed)."""
    if section.get("min_confidence") is None:
        return None
    m = section.get("max_move")
    return EdgeGate(float(section["min_confidence"]), math.inf if m is None else float(m))


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
    """Draw a reliability diagram of `calibration(...)` to `path`.

    Fraction within tolerance against mean confidence per bin (the diagonal is perfect calibration), and below
    it how many edges each bin holds.
    """
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
    """The validation boxes kept whole, to choose the gate and measure calibration at the end of an epoch.

    Each box keeps its rough, snapped and true xyxy and the per-edge confidence; concatenated across
    processes.

    Args:
        **kwargs: passed on to torchmetrics' `Metric`.
    """

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("rough", "snapped", "true", "conf"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, rough: Tensor, snapped: Tensor, true: Tensor, conf: Tensor) -> None:
        """Keep a batch's rough, snapped and true boxes and their edge confidence, each (N, 4)."""
        self.rough.append(rough.double().reshape(-1, 4))
        self.snapped.append(snapped.double().reshape(-1, 4))
        self.true.append(true.double().reshape(-1, 4))
        self.conf.append(conf.double().reshape(-1, 4))

    def compute(self) -> dict[str, np.ndarray]:
        """All the kept boxes, as (N, 4) float64 arrays by name: rough, snapped, true and conf."""

        def cat(x) -> np.ndarray:
            if isinstance(x, Tensor):
                return x.reshape(-1, 4).cpu().numpy()
            return torch.cat(x).reshape(-1, 4).cpu().numpy() if x else np.zeros((0, 4))

        return {k: cat(getattr(self, k)) for k in ("rough", "snapped", "true", "conf")}

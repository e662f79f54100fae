"""Synthetic vs real records (`segladder synth compare`): statistics, distances, tolerances from the real set's halves, figures.

Every row compares one statistic of two datasets in the competition layout by a distance (Wasserstein-1
between distributions, |Δ| between shares). Its tolerance comes from the real records alone: split
them into two halves (sorted by split and record id, alternating), take the same distance between the
halves, multiply by `factor` (1 to 2) and keep at least the row's floor. Synthetic data passes a row
when it sits as close to the real set as the real set sits to itself. See docs/data.md.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.stats import wasserstein_distance

from segladder.data.contrails import (
    RecordRef,
    ash_from_bands,
    discover_records,
    load_mask,
    native_size,
    present_splits,
    read_bands,
)
from segladder.data.layout import INDIVIDUAL_MASKS_FILE, LABELED_FRAME
from segladder.errors import DataError
from segladder.progress import parallel_map

PIXEL_SAMPLE = 4096  # pixels per record kept for the pixel distributions: every record weighs the same
MIN_COMPONENTS = 4  # contrail shape rows need at least this many contrails in REAL (2 per half)
GRID_COLUMNS = 6
FACTOR_RANGE = (1.0, 2.0)
BANDS_READ = (11, 13, 14, 15)
_EIGHT = np.ones((3, 3), bool)  # 8-connectivity: a diagonal 1-px line is one contrail


@dataclass
class RecordStats:
    """What one record contributes to the comparison."""

    record_id: str
    split: str
    path: Path
    pixels: dict[str, np.ndarray]  # pixel-row name → sampled values at the labelled frame
    frame_change: float  # mean |ΔT14| between consecutive frames, K
    positive_fraction: float | None = None  # None: no pixel mask (test split)
    components: np.ndarray | None = None  # (K, 3): width px, length px, orientation ° (NaN if undefined)
    agreement: float | None = None  # mean pairwise IoU of the annotators; None without marks or masks


def _pixel_values(bands: dict[int, np.ndarray], sample: np.ndarray) -> dict[str, np.ndarray]:
    t = {b: bands[b][LABELED_FRAME].reshape(-1)[sample] for b in BANDS_READ}
    ash = ash_from_bands(t[11], t[14], t[15])
    return {
        "bt_11": t[11],
        "bt_13": t[13],
        "bt_14": t[14],
        "bt_15": t[15],
        "diff_15_14": t[15] - t[14],
        "diff_14_11": t[14] - t[11],
        "ash_r": ash[:, 0],
        "ash_g": ash[:, 1],
        "ash_b": ash[:, 2],
    }


def contrail_components(mask: np.ndarray) -> np.ndarray:
    """(K, 3) width, length and orientation of each 8-connected component of a (H, W) mask.

    Length is the extent of the pixel centres along the component's principal axis plus one pixel, width
    its area over that length (a straight 1-px line has width 1), orientation the principal axis in
    degrees counter-clockwise from the image's x axis in [0, 180), NaN for components under 3 px or round.
    """
    labels, n = ndimage.label(mask > 0, structure=_EIGHT)
    out = np.empty((n, 3), np.float64)
    for k, sl in enumerate(ndimage.find_objects(labels)):
        ys, xs = np.nonzero(labels[sl] == k + 1)
        pts = np.stack([xs, -ys], axis=1).astype(np.float64)  # y up, so angles read as on a map
        pts -= pts.mean(0)
        area = len(pts)
        if area < 3:
            out[k] = (1.0, float(area), math.nan)
            continue
        evals, evecs = np.linalg.eigh(pts.T @ pts)
        axis = evecs[:, 1]
        proj = pts @ axis
        length = float(proj.max() - proj.min() + 1)
        angle = math.degrees(math.atan2(axis[1], axis[0])) % 180.0
        out[k] = (area / length, length, angle if evals[1] > 1.5 * evals[0] else math.nan)
    return out


def annotator_agreement(individual: np.ndarray) -> float | None:
    """Mean IoU over pairs of annotators of whom at least one marked something; None if nobody did."""
    masks = individual[:, :, 0, :].reshape(-1, individual.shape[-1]) > 0
    ious = []
    for i in range(masks.shape[1]):
        for j in range(i + 1, masks.shape[1]):
            union = np.count_nonzero(masks[:, i] | masks[:, j])
            if union:
                ious.append(np.count_nonzero(masks[:, i] & masks[:, j]) / union)
    return float(np.mean(ious)) if ious else None


def record_stats(ref: RecordRef) -> RecordStats:
    """Read one record (bands 11, 13, 14, 15 and its masks) and measure it."""
    bands = read_bands(ref.path, BANDS_READ)
    n_pix = bands[14][0].size
    # The same pixels of every record for a given size: deterministic and cheap.
    sample = np.random.default_rng(0).permutation(n_pix)[: min(PIXEL_SAMPLE, n_pix)]
    stats = RecordStats(
        ref.record_id,
        ref.split,
        ref.path,
        _pixel_values(bands, sample),
        float(np.abs(np.diff(bands[14], axis=0)).mean()),
    )
    mask = load_mask(ref.path)
    if mask is not None:
        stats.positive_fraction = float(mask.mean())
        stats.components = contrail_components(mask)
    ind_path = ref.path / INDIVIDUAL_MASKS_FILE
    if ind_path.exists():
        ind = np.load(ind_path, allow_pickle=False)
        if ind.ndim == 4 and ind.shape[3] >= 2:
            stats.agreement = annotator_agreement(ind)
    return stats


def dataset_refs(root: str | Path) -> list[RecordRef]:
    """Every record of the present splits, sorted by split and id; a DataError when there is none."""
    root = Path(root)
    if not root.is_dir():
        what = "is a file" if root.exists() else "does not exist"
        raise DataError(
            f"{root} {what}: give a folder in the competition layout (ROOT/train/<record_id>/band_08.npy ...)."
        )
    splits = present_splits(root)
    refs = [r for s in splits for r in discover_records(root, s)]
    if not refs:
        raise DataError(
            f"{root} holds no records: expected the competition layout ROOT/train/<record_id>/band_08.npy ..."
        )
    return refs


def collect(
    root: str | Path, *, workers: int | None = 1, progress: bool = True, label: str = "reading"
) -> list[RecordStats]:
    """Measure every record under `root` (see `record_stats`), sorted by split and id."""
    refs = dataset_refs(root)
    stats = list(parallel_map(record_stats, refs, workers=workers, description=label, progress=progress))
    return sorted(stats, key=lambda s: (s.split, s.record_id))


# ---- rows -------------------------------------------------------------------------------------------


def circular_wasserstein(a: np.ndarray, b: np.ndarray, period: float = 180.0, bins: int = 180) -> float:
    """Wasserstein-1 on a circle (orientations are the same at 0° and 180°): ∫|F − G − median(F − G)|."""
    edges = np.linspace(0.0, period, bins + 1)
    fa = np.cumsum(np.histogram(np.mod(a, period), edges)[0]) / len(a)
    fb = np.cumsum(np.histogram(np.mod(b, period), edges)[0]) / len(b)
    d = fa - fb
    return float(np.abs(d - np.median(d)).sum() * period / bins)


def _w1(a: np.ndarray, b: np.ndarray) -> float:
    return float(wasserstein_distance(a, b))


def _share_distance(a: np.ndarray, b: np.ndarray) -> float:
    return abs(float(np.mean(a)) - float(np.mean(b)))


def _pixels(name: str) -> Callable[[list[RecordStats]], np.ndarray]:
    def values(records: list[RecordStats]) -> np.ndarray:
        return np.concatenate([r.pixels[name] for r in records]) if records else np.empty(0)

    return values


def _per_record(getter: Callable[[RecordStats], float | None]) -> Callable[[list[RecordStats]], np.ndarray]:
    def values(records: list[RecordStats]) -> np.ndarray:
        return np.array([v for r in records if (v := getter(r)) is not None], np.float64)

    return values


def _components(col: int) -> Callable[[list[RecordStats]], np.ndarray]:
    def values(records: list[RecordStats]) -> np.ndarray:
        parts = [r.components[:, col] for r in records if r.components is not None]
        v = np.concatenate(parts) if parts else np.empty(0)
        return v[np.isfinite(v)]

    return values


@dataclass(frozen=True)
class RowSpec:
    """One statistic: how to get its values from records, their distance, and the tolerance's floor."""

    name: str
    title: str
    unit: str
    values: Callable[[list[RecordStats]], np.ndarray]
    floor: float
    needs: str  # what a record must hold, named in the skip message
    distance: Callable[[np.ndarray, np.ndarray], float] = _w1
    summary: str = "mean"  # what the real/synthetic columns show: the mean, or the share
    min_count: int = 1

    def summarise(self, v: np.ndarray) -> float:
        """The value the real/synthetic columns show for `v`: its mean, or circular mean for orientations."""
        if self.distance is circular_wasserstein:  # a circular mean of orientations, in [0, 180)
            return float(np.degrees(np.angle(np.exp(2j * np.radians(v)).mean())) / 2 % 180)
        return float(np.mean(v))


ROWS: tuple[RowSpec, ...] = (
    RowSpec("bt_11", "T11 (8.4 µm)", "K", _pixels("bt_11"), 0.5, "bands"),
    RowSpec("bt_13", "T13 (10.3 µm)", "K", _pixels("bt_13"), 0.5, "bands"),
    RowSpec("bt_14", "T14 (11.2 µm)", "K", _pixels("bt_14"), 0.5, "bands"),
    RowSpec("bt_15", "T15 (12.3 µm)", "K", _pixels("bt_15"), 0.5, "bands"),
    RowSpec("diff_15_14", "T15 − T14 (ash R)", "K", _pixels("diff_15_14"), 0.1, "bands"),
    RowSpec("diff_14_11", "T14 − T11 (ash G)", "K", _pixels("diff_14_11"), 0.1, "bands"),
    RowSpec("ash_r", "ash R", "", _pixels("ash_r"), 0.01, "bands"),
    RowSpec("ash_g", "ash G", "", _pixels("ash_g"), 0.01, "bands"),
    RowSpec("ash_b", "ash B", "", _pixels("ash_b"), 0.01, "bands"),
    RowSpec(
        "positive_fraction",
        "positive pixels per record",
        "",
        _per_record(lambda r: r.positive_fraction),
        0.001,
        "pixel masks",
    ),
    RowSpec(
        "records_with_contrails",
        "records with contrails",
        "",
        _per_record(lambda r: None if r.positive_fraction is None else float(r.positive_fraction > 0)),
        0.1,
        "pixel masks",
        _share_distance,
        "share",
    ),
    RowSpec(
        "contrails_per_record",
        "contrails per record",
        "",
        _per_record(lambda r: None if r.components is None else float(len(r.components))),
        0.5,
        "pixel masks",
    ),
    RowSpec(
        "contrail_width", "contrail width", "px", _components(0), 0.25, "contrails", min_count=MIN_COMPONENTS
    ),
    RowSpec(
        "contrail_length", "contrail length", "px", _components(1), 1.0, "contrails", min_count=MIN_COMPONENTS
    ),
    RowSpec(
        "contrail_orientation",
        "contrail orientation",
        "°",
        _components(2),
        5.0,
        "contrails",
        circular_wasserstein,
        min_count=MIN_COMPONENTS,
    ),
    RowSpec(
        "annotator_agreement",
        "annotator agreement (pairwise IoU)",
        "",
        _per_record(lambda r: r.agreement),
        0.05,
        "individual masks",
    ),
    RowSpec(
        "frame_change", "frame change, mean |ΔT14|", "K", _per_record(lambda r: r.frame_change), 0.05, "bands"
    ),
)


@dataclass
class Row:
    """One line of the comparison (what `--json` writes, less the values)."""

    name: str
    title: str
    unit: str
    real: float | None
    synthetic: float | None
    distance: float | None
    tolerance: float | None
    ok: bool | None
    half_distance: float | None = None
    n_real: int = 0
    n_synthetic: int = 0
    skipped: str | None = None
    real_values: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    synthetic_values: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)

    def as_dict(self) -> dict:
        """The row as `--json` writes it, without the values."""
        keys = ("name", "title", "unit", "real", "synthetic", "distance", "tolerance", "ok")
        extra = ("half_distance", "n_real", "n_synthetic", "skipped")
        return {k: getattr(self, k) for k in keys + extra}


def halves(records: Sequence[RecordStats]) -> tuple[list[RecordStats], list[RecordStats]]:
    """The real set's two halves: records sorted by split and id, alternating."""
    ordered = sorted(records, key=lambda r: (r.split, r.record_id))
    return ordered[0::2], ordered[1::2]


def _check_factor(factor: float) -> None:
    lo, hi = FACTOR_RANGE
    if not lo <= factor <= hi:
        raise DataError(
            f"--factor {factor}: a tolerance is {lo:g} to {hi:g} times the real halves' distance."
        )


def compare_rows(
    real: Sequence[RecordStats], synthetic: Sequence[RecordStats], factor: float = 1.0
) -> list[Row]:
    """Every row of ROWS for these two sets, with its distance, tolerance and verdict (or why it is skipped)."""
    lo, hi = FACTOR_RANGE
    if not lo <= factor <= hi:
        raise DataError(
            f"--factor {factor}: a tolerance is {lo:g} to {hi:g} times the real halves' distance."
        )
    real, synthetic = list(real), list(synthetic)
    half_a, half_b = halves(real)
    rows = []
    for spec in ROWS:
        rv, sv = spec.values(real), spec.values(synthetic)
        row = Row(
            spec.name,
            spec.title,
            spec.unit,
            None,
            None,
            None,
            None,
            None,
            n_real=len(rv),
            n_synthetic=len(sv),
        )
        row.real_values, row.synthetic_values = rv, sv
        if len(rv) < spec.min_count:
            row.skipped = (
                f"REAL has {len(rv)} contrail(s), fewer than {spec.min_count}"
                if spec.min_count > 1
                else f"no {spec.needs} in REAL"
            )
        elif len(sv) == 0:
            row.skipped = f"no {spec.needs} in SYNTH"
        if row.skipped:
            rows.append(row)
            continue
        row.real, row.synthetic = spec.summarise(rv), spec.summarise(sv)
        row.distance = spec.distance(rv, sv)
        ha, hb = spec.values(half_a), spec.values(half_b)
        if len(ha) and len(hb):
            row.half_distance = spec.distance(ha, hb)
            row.tolerance = max(factor * row.half_distance, spec.floor)
        else:  # one half lacks the data (e.g. every record with individual masks fell in one half)
            row.tolerance = spec.floor
        row.ok = bool(row.distance <= row.tolerance)
        rows.append(row)
    return rows


# ---- figures ----------------------------------------------------------------------------------------


def draw_stats(rows: Sequence[Row], path: Path) -> None:
    """One panel per compared row: the real and synthetic distributions (or shares) and the verdict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from segladder.io import atomic_path

    shown = [r for r in rows if r.skipped is None]
    cols = 4
    nrows = max(1, math.ceil(len(shown) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.8 * nrows), squeeze=False)
    for ax in axes.ravel()[len(shown) :]:
        ax.axis("off")
    for ax, row in zip(axes.ravel(), shown, strict=False):
        rv, sv = row.real_values, row.synthetic_values
        if row.name == "records_with_contrails":
            ax.bar(["real", "synthetic"], [rv.mean(), sv.mean()], color=["tab:blue", "tab:orange"])
            ax.set_ylim(0, 1)
        else:
            lo, hi = np.percentile(np.concatenate([rv, sv]), [0.5, 99.5])
            if hi <= lo:
                lo, hi = lo - 0.5, hi + 0.5
            bins = np.linspace(lo, hi, 41)
            for v, label, colour in ((rv, "real", "tab:blue"), (sv, "synthetic", "tab:orange")):
                ax.hist(
                    np.clip(v, lo, hi), bins, density=True, histtype="step", lw=1.5, label=label, color=colour
                )
            ax.set_yticks([])
            ax.set_xlabel(row.unit)
        verdict = "ok" if row.ok else "OUT"
        ax.set_title(
            f"{row.title}\nd {row.distance:.3g} / tol {row.tolerance:.3g}: {verdict}",
            fontsize=9,
            color="black" if row.ok else "tab:red",
        )
    axes.ravel()[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def _grid_records(records: Sequence[RecordStats], n: int) -> list[RecordStats]:
    """Records with contrails first (most pixels first), then the rest, in id order."""
    pos = sorted(
        (r for r in records if (r.positive_fraction or 0) > 0), key=lambda r: -(r.positive_fraction or 0)
    )
    rest = [r for r in records if not (r.positive_fraction or 0) > 0]
    return (pos + rest)[:n]


def _panel(rec: RecordStats, size: int) -> np.ndarray:
    import cv2

    bands = read_bands(rec.path, (11, 14, 15), [LABELED_FRAME])
    rgb = ash_from_bands(bands[11][0], bands[14][0], bands[15][0])
    mask = load_mask(rec.path)
    rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_NEAREST)
    if mask is not None and mask.any():
        m = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
        edge = m.astype(bool) & ~ndimage.binary_erosion(m.astype(bool), _EIGHT)
        rgb[edge] = (1.0, 1.0, 0.0)  # contour in yellow: the ash colour inside stays visible
    return rgb


def draw_grid(
    real: Sequence[RecordStats], synthetic: Sequence[RecordStats], path: Path, columns: int = GRID_COLUMNS
) -> None:
    """Ash RGB at the labelled frame with the pixel mask's outline: real records above, synthetic below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from segladder.io import atomic_path

    sets = (("real", _grid_records(real, columns)), ("synthetic", _grid_records(synthetic, columns)))
    fig, axes = plt.subplots(2, columns, figsize=(2.4 * columns, 5.6), squeeze=False)
    for r, (label, recs) in enumerate(sets):
        for c in range(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(recs):
                ax.axis("off")
                continue
            rec = recs[c]
            ax.imshow(_panel(rec, 256))
            px = "" if rec.positive_fraction is None else f", {rec.positive_fraction:.2%}"
            ax.set_title(f"{rec.record_id[-8:]}{px}", fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=11)
    fig.suptitle("ash RGB at the labelled frame, pixel mask outlined (yellow)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


# ---- the command ------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """A real dataset beside a synthetic one, statistic by statistic, with the figures drawn."""

    rows: list[Row]
    real: Path
    synthetic: Path | str  # a folder, or a description of the temporary set that was generated
    n_real: int
    n_synthetic: int
    figures: list[Path]
    # The patch classifier's AUC, synthetic against real and real against itself (`realism_classifier`).
    classifier: dict | None = None

    @property
    def ok(self) -> bool:
        """Whether every statistic compared is within its tolerance (skipped ones do not count)."""
        return all(r.ok is not False for r in self.rows)


# A distance between two empirical distributions carries both samples' noise. A contrail mask's rarest,
# widest components weigh most in the width and length rows, and 32 synthetic records hold too few of them:
# their distances ran 1.0–1.1 × the tolerance where 256 records of the same generator gave 0.7 (128: ≤ 0.9).
DEFAULT_SYNTH_RECORDS = 128


def compare_datasets(
    real: str | Path,
    synthetic: str | Path | None = None,
    *,
    out: str | Path = "runs/synth-compare",
    json_path: str | Path | None = None,
    factor: float = 1.0,
    synth_records: int = DEFAULT_SYNTH_RECORDS,
    seed: int = 0,
    workers: int | None = 1,
    progress: bool = True,
    classifier: bool = True,
) -> Comparison:
    """Measure REAL and SYNTH (or a fresh synthetic set of the current generator), compare, draw, write JSON.

    With `classifier`, a small CNN also tries to tell SYNTH's patches from REAL's (`realism_classifier`).
    """
    _check_factor(factor)
    real = Path(real)
    n_real = len(dataset_refs(real))
    if n_real < 2:
        raise DataError(
            f"{real} holds 1 record: the tolerances need at least 2 (the distance between two halves of REAL)."
        )
    if synthetic is not None and (sizes := (native_size(real), native_size(synthetic)))[0] != sizes[1]:
        # Widths, lengths and textures are measured in pixels: across sizes the rows compare scales.
        raise DataError(
            f"REAL {real} holds {sizes[0]}² records and SYNTH {synthetic} {sizes[1]}² ones: the rows measure "
            f"in pixels, so they would compare two scales; make SYNTH at REAL's size (`segladder synth "
            f"contrails OUT --size {sizes[0]}`) or leave SYNTH out to generate it at that size."
        )
    real_stats = collect(real, workers=workers, progress=progress, label="reading REAL")
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="segladder-synth-") as tmp:
        if synthetic is None:
            from segladder.data.synth import generate_contrails

            size = native_size(real)
            generate_contrails(
                Path(tmp) / "synth",
                records=synth_records,
                val_records=0,
                test_records=0,
                size=size,
                seed=seed,
                progress=progress,
            )
            synth_root: Path = Path(tmp) / "synth"
            described: Path | str = (
                f"{synth_records} records of `segladder synth contrails` (seed {seed}, {size}²)"
            )
        else:
            synth_root = described = Path(synthetic)
        synth_stats = collect(synth_root, workers=workers, progress=progress, label="reading SYNTH")
        rows = compare_rows(real_stats, synth_stats, factor)
        aucs = classifier_aucs(real, synth_root, seed) if classifier else None
        out.mkdir(parents=True, exist_ok=True)
        figures = [out / "stats.png", out / "grid.png"]
        draw_stats(rows, figures[0])
        draw_grid(real_stats, synth_stats, figures[1])
    result = Comparison(rows, real, described, len(real_stats), len(synth_stats), figures, aucs)
    if json_path is not None:
        from segladder.io import atomic_write_text

        doc = {
            "real": str(real),
            "synthetic": str(described),
            "records": {"real": len(real_stats), "synthetic": len(synth_stats)},
            "factor": factor,
            "ok": result.ok,
            "rows": [r.as_dict() for r in rows],
            "classifier": aucs,
        }
        atomic_write_text(json_path, json.dumps(doc, indent=1) + "\n")
    return result


def classifier_aucs(real: Path, synthetic: Path, seed: int = 0) -> dict:
    """The patch classifier's AUC for SYNTH against REAL and for REAL against itself (the floor)."""
    from segladder.data.realism_classifier import realism_auc, realism_floor
    from segladder.data.synth import injection_backgrounds

    real_refs, synth_refs = dataset_refs(real), dataset_refs(synthetic)
    # Injected records share their skies with the real records they were built on: compared with those,
    # the classifier would see the same clouds on both sides. It meets only the other real records.
    skies = injection_backgrounds(synthetic)
    others = [r for r in real_refs if r.record_id not in skies]
    enough = min(len(others), len(synth_refs)) >= 2  # one record to train on and one to score, each side
    result = realism_auc(others, synth_refs, seed=seed).as_dict() if enough else None
    if result is not None:
        result["real_records_left_out"] = len(real_refs) - len(others)
    return {
        "synthetic": result,
        "floor": realism_floor(real_refs, seed=seed).as_dict() if len(real_refs) >= 4 else None,
    }

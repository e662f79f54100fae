"""Contrail injection (`segladder synth inject`): synthetic contrails drawn into real records' skies.

A procedural sky loses to a real one on texture (issue 35: a model trained on `synth contrails` scored
0.03 Dice on real records). Injection keeps every pixel of a real record and adds contrails drawn as
`synth contrails` draws them (shapes, widths, lengths, growth, drift, spreading and fading over the 8
frames, the annotators' masks) in brightness-temperature space, with the cooling of each band measured on
real contrail pixels (`measure_signature`, `scripts/measure_contrails.py`). The record's own labels stay:
its real contrails stay positive.

The constants below were measured with `python scripts/measure_contrails.py` on the OpenContrails
sample of this project's docs (9 records of the Kaggle "Google Research - Identify Contrails to Reduce
Global Warming" data, 7 with contrails, 56 contrails of at least 10 px; Ng et al. 2023,
arXiv:2304.02122, CC BY 4.0). Each contrail is one 8-connected component of the pixel mask at the
labelled frame; its cooling is the median of its pixels minus the median of a ring 2–4 px outside it
(mask pixels excluded), per band.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from segladder.data import synth
from segladder.data.contrails import RecordRef, discover_records, load_mask, load_npy, read_bands
from segladder.data.layout import (
    BAND_FILES,
    BANDS,
    INDIVIDUAL_MASKS_FILE,
    LABELED_FRAME,
    N_FRAMES,
    PIXEL_MASK_FILE,
    band_file,
)
from segladder.errors import DataError
from segladder.progress import progress_bar

VERSION = 3  # bump when the same arguments would write different files (3: validation skies by rank)

# Band-14 cooling of a real contrail, K (median pixel minus its ring): quartiles 1.19 / 2.38 / 4.46 K,
# 5–95 % 0.54–9.0 K, over backgrounds of 283–295 K. A log-normal through the quartiles.
CONTRAST_MEDIAN_K = 2.38
CONTRAST_LOG_SD = 0.98  # (ln 4.46 − ln 1.19) / 1.349
CONTRAST_RANGE_K = (0.5, 12.0)  # drawn contrasts are kept inside the measured 5–95 % range, widened
# Each band's cooling over band 14's (least-squares slope through the origin, contrails weighted by
# pixels). Band 15 cools 9 % more than band 14 (the split window B15 − B14 falls: thin ice), band 11
# 33 % less (B14 − B11 falls); the water-vapour bands 8–10, above most of the contrail's contrast, least.
BAND_RATIO: dict[int, float] = {
    8: 0.216,
    9: 0.318,
    10: 0.408,
    11: 0.672,
    12: 0.332,
    13: 0.710,
    14: 1.0,
    15: 1.094,
    16: 0.851,
}
# Aged contrails, spread to 8 px or more (`synth contrails` draws one corridor in 12 so), cool more: the
# sample's two components at least 8 px wide cool band 14 by 3.66 and 5.82 K (12–15 px wide, 210 px long).
# A log-normal through both; annotators label a spread contrail only while it stays clearly visible.
WIDE_PX = 8.0
WIDE_CONTRAST_MEDIAN_K = 4.62  # √(3.66 × 5.82)
WIDE_CONTRAST_LOG_SD = 0.23  # ln(5.82 / 3.66) / 2
# A drawn line's band-14 cooling at its centre over the statistic above: the measured statistic averages
# the mask's edge pixels and the blur in, so lines are drawn this much stronger (calibrated by injecting
# and measuring back: `tests/data/test_inject.py` holds the round trip).
DRAWN_GAIN = 0.72
WIDE_DRAWN_GAIN = 0.82  # the same round trip, on components at least WIDE_PX wide
# The imager's blur, px (Gaussian σ): real contrails cool the pixel just outside their mask by 0.33 K where
# the mask's edge pixels cool by 1.31 K (medians over the 7 records, residuals from a 15 px median filter).
BLUR_SIGMA_PX = 0.6
REF_BELOW_K = synth._REF_BELOW_K  # the scene temperature the contrast is defined over (as `synth contrails`)
MAX_OPACITY = 0.95
DEFAULT_CORRIDORS = 1.0 + synth._EXTRA_CLUSTERS  # mean flight corridors in a 256² record that has any
_RING = (1, 4)  # px: the ring around a contrail its cooling is measured against


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class ContrailSignature:
    """What real contrails do to the bands: per-contrail band-14 cooling and each band's share of it."""

    contrails: int
    records: int
    contrast_quantiles_k: dict[str, float]  # "5", "25", "50", "75", "95": band-14 cooling, K (positive)
    band_ratio: dict[int, float]
    background_k: float  # median band 14 of the rings
    wide_contrails: int  # those at least WIDE_PX wide
    wide_cooling_k: list[float]  # their band-14 cooling, K, ascending

    def as_dict(self) -> dict:
        """JSON-ready."""
        d = asdict(self)
        d["band_ratio"] = {str(k): v for k, v in self.band_ratio.items()}
        return d


def _components(mask: np.ndarray, min_pixels: int = 10) -> list[np.ndarray]:
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return [c for i in range(1, n) if (c := labels == i).sum() >= min_pixels]


def _dilate(c: np.ndarray, px: int) -> np.ndarray:
    return cv2.dilate(c.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=px) > 0


@dataclass(frozen=True)
class ComponentCooling:
    """One contrail of a mask: its size, its width (px, as `synth compare` measures it), and its cooling."""

    pixels: int
    width: float
    background_k: float  # median band 14 of its ring
    cooling: dict[int, float]  # band → ring median minus contrail median, K (positive: colder)


def component_coolings(bands: dict[int, np.ndarray], mask: np.ndarray) -> list[ComponentCooling]:
    """Each contrail (8-connected component of ≥ 10 px) of `mask` with a clear ring; bands are (H, W) at the label."""
    from segladder.data.realism import contrail_components

    out = []
    for c in _components(mask):
        ring = _dilate(c, _RING[1]) & ~_dilate(c, _RING[0]) & (mask == 0)
        if ring.sum() < 10:
            continue
        cool = {b: float(np.median(x[ring]) - np.median(x[c])) for b, x in bands.items()}
        width = float(contrail_components(c)[0, 0])
        out.append(ComponentCooling(int(c.sum()), width, float(np.median(bands[14][ring])), cool))
    return out


def measure_signature(refs: Iterable[RecordRef]) -> ContrailSignature:
    """Measure the contrail signature on labelled records (the source of this module's constants)."""
    rows, records = [], 0
    for ref in refs:
        mask = load_mask(ref.path)
        if mask is None:
            continue
        if not mask.any():
            continue
        bands = {b: x[0] for b, x in read_bands(ref.path, BANDS, [LABELED_FRAME]).items()}
        found = component_coolings(bands, mask)
        records += bool(found)
        rows += found
    if not rows:
        raise DataError("no contrail of 10 px or more with a clear ring around it: nothing to measure.")
    weight = np.array([r.pixels for r in rows], float)
    c14 = np.array([r.cooling[14] for r in rows])
    ratio = {
        b: round(
            float((np.array([r.cooling[b] for r in rows]) * c14 * weight).sum() / (c14 * c14 * weight).sum()),
            3,
        )
        for b in BANDS
    }
    q = {
        str(p): round(float(v), 2)
        for p, v in zip((5, 25, 50, 75, 95), np.percentile(c14, [5, 25, 50, 75, 95]), strict=True)
    }
    wide = [r.cooling[14] for r in rows if r.width >= WIDE_PX]
    return ContrailSignature(
        len(rows),
        records,
        q,
        ratio,
        round(float(np.median([r.background_k for r in rows])), 1),
        len(wide),
        [round(w, 2) for w in sorted(wide)],
    )


# --------------------------------------------------------------------------- drawing


def _dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 rotations and flips of the image axes (0, 1): a new sky from the same record."""
    a = np.rot90(a, k % 4, axes=(0, 1))
    return np.ascontiguousarray(a[:, ::-1] if k >= 4 else a)


def _draw_contrast(rng: np.random.Generator, wide: bool = False) -> float:
    lo, hi = CONTRAST_RANGE_K
    if wide:
        value = rng.lognormal(math.log(WIDE_CONTRAST_MEDIAN_K * WIDE_DRAWN_GAIN), WIDE_CONTRAST_LOG_SD)
        return float(np.clip(value, lo * WIDE_DRAWN_GAIN, hi * WIDE_DRAWN_GAIN))
    return float(
        np.clip(
            rng.lognormal(math.log(CONTRAST_MEDIAN_K * DRAWN_GAIN), CONTRAST_LOG_SD),
            lo * DRAWN_GAIN,
            hi * DRAWN_GAIN,
        )
    )


def draw_lines(
    rng: np.random.Generator, size: int, corridors: float = DEFAULT_CORRIDORS
) -> tuple[list[synth._Contrail], list[synth._Contrail]]:
    """(labelled, unlabelled) contrails for a size² record, as `synth contrails` draws them.

    Each line's ice is then rescaled so that its band-14 cooling at the labelled frame follows the measured
    distribution, and the competition's labelling rules are applied again to the rescaled lines.
    """
    wind = synth._wind(rng, 0.8, synth._MAX_WIND)
    labelled, others = synth._contrails(
        rng, size, wind, extra_clusters=max(0.0, corridors - 1.0), with_look_alikes=False
    )
    lines = []
    for c in labelled + others:
        now = c.contrast(0.0) if c.visible_points(0.0) is not None else 0.0
        target = _draw_contrast(rng, wide=c.width >= WIDE_PX)
        scale = target / now if now > 0 else target / max(c.opacity * (REF_BELOW_K - c.top), 1e-6)
        lines.append(replace(c, opacity=min(MAX_OPACITY, c.opacity * scale)))
    keep = [c for c in lines if synth._labelled(c, size)]
    chosen = {id(c) for c in keep}
    return keep, [c for c in lines if id(c) not in chosen]


def band_cooling(b14: np.ndarray, lines: Sequence[synth._Contrail], size: int) -> np.ndarray:
    """(H, W, 8) band-14 cooling, K (≥ 0), the lines cause over the sky `b14` (H, W, 8).

    Their ice (anti-aliased, blurred by the imager) pulls band 14 towards its cold top; over a sky already
    colder than the top (thick cloud) a contrail adds nothing.
    """
    opacity, top_w, _, _ = synth._ice_frames(list(lines), size)
    cooling = np.zeros_like(b14, dtype=np.float32)
    for k in range(N_FRAMES):
        a, tw = opacity[..., k], top_w[..., k]
        if not a.any():
            continue
        a = cv2.GaussianBlur(a, (0, 0), BLUR_SIGMA_PX)
        tw = cv2.GaussianBlur(tw, (0, 0), BLUR_SIGMA_PX)
        # Where the blur leaves next to no ice there is no top to speak of: no cooling (+inf top).
        top = np.where(a > 1e-4, tw / np.maximum(a, 1e-6), np.inf)
        cooling[..., k] = np.minimum(a, MAX_OPACITY) * np.maximum(b14[..., k] - top, 0.0)
    return cooling


def inject_record(
    files: dict[str, np.ndarray],
    rng: np.random.Generator,
    *,
    corridors: float = DEFAULT_CORRIDORS,
    transform: int = 0,
) -> tuple[dict[str, np.ndarray], int]:
    """A real record's files (turned by `transform`, 0–7) with contrails injected; and how many are labelled.

    `files` holds every band file and the masks the record has. The output always holds individual masks
    (a record without them gets its pixel mask once per annotator, 4 of them) and a pixel mask that is their
    majority, united with the record's own pixel mask.
    """
    bands = {b: _dihedral(np.asarray(files[band_file(b)], np.float32), transform) for b in BANDS}
    size = bands[14].shape[0]
    if bands[14].shape[:2] != (size, size):
        raise DataError(f"records must be square to inject into; this one is {bands[14].shape[:2]}.")
    real_pixel = _dihedral(np.asarray(files[PIXEL_MASK_FILE]), transform)[..., 0].astype(np.uint8)
    if INDIVIDUAL_MASKS_FILE in files:
        real_ind = _dihedral(np.asarray(files[INDIVIDUAL_MASKS_FILE]), transform)[:, :, 0, :].astype(np.uint8)
    else:
        real_ind = np.repeat(real_pixel[:, :, None], 4, axis=2)
    labelled, others = draw_lines(rng, size, corridors)
    cooling = band_cooling(bands[14], labelled + others, size)
    out = {band_file(b): np.ascontiguousarray(bands[b] - BAND_RATIO[b] * cooling, np.float32) for b in BANDS}
    individual = real_ind | synth._annotators(rng, labelled, others, size, n=real_ind.shape[-1])
    votes = individual.sum(axis=-1, dtype=np.int32)
    pixel = ((2 * votes > individual.shape[-1]) | (real_pixel > 0)).astype(np.int32)
    out[PIXEL_MASK_FILE] = pixel[:, :, None]
    out[INDIVIDUAL_MASKS_FILE] = individual.astype(np.int32)[:, :, None, :]
    return out, len(labelled)


def read_record_files(ref: RecordRef) -> dict[str, np.ndarray]:
    """Every band file and mask of a labelled record, loaded; a DataError naming what is missing."""
    files = {}
    for name in (*BAND_FILES, PIXEL_MASK_FILE, INDIVIDUAL_MASKS_FILE):
        path = ref.path / name
        if not path.exists():
            if name == INDIVIDUAL_MASKS_FILE:
                continue
            raise DataError(
                f"{ref.path}: no {name}; injection needs a labelled record (train or validation) with all "
                f"9 band files. Leave it out with --exclude {ref.record_id}."
            )
        files[name] = np.asarray(load_npy(path, mmap=False))
    shape = files[BAND_FILES[0]].shape
    if len(shape) != 3 or shape[0] != shape[1] or shape[2] != N_FRAMES:
        raise DataError(
            f"{ref.path / BAND_FILES[0]}: shape {shape}, expected (H, H, {N_FRAMES}); injection needs square "
            f"records of the competition layout. Leave it out with --exclude {ref.record_id}."
        )
    return files


# --------------------------------------------------------------------------- writing a dataset

OUT_SPLITS = ("train", "validation")


@dataclass
class InjectSummary:
    """What `inject_contrails` wrote: counts per split, the real records used as skies, contrails drawn."""

    path: Path
    records: dict[str, int]
    backgrounds: dict[str, list[str]]  # split → real record ids its records were built on
    written: int
    skipped: int
    positive_records: dict[str, int]
    injected_contrails: int  # labelled contrails drawn into the records written now


def _ids_in(folder: Path) -> set[str]:
    """Record ids held by a dataset root (its split folders) or a split folder."""
    if not folder.is_dir():
        raise DataError(
            f"--exclude-like {folder} is not a folder; give a dataset root or one of its split folders."
        )
    subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if any((p / BAND_FILES[0]).exists() for p in subdirs):
        return {p.name for p in subdirs}
    return {r.name for s in subdirs for r in s.iterdir() if r.is_dir() and not r.name.startswith(".")}


def background_pool(
    real: Path, use: Sequence[str] = (), exclude: Sequence[str] = (), exclude_like: Path | None = None
) -> list[RecordRef]:
    """REAL's labelled records (train, then validation) chosen by `use`, less `exclude` and `exclude_like`'s ids."""
    refs = discover_records(real, "train", required=False) + discover_records(
        real, "validation", required=False
    )
    if not refs:
        raise DataError(
            f"{real} holds no train/ or validation/ records: injection needs labelled real records."
        )
    known = {r.record_id for r in refs}
    unknown = sorted(set(use) - known) + sorted(set(exclude) - known)
    if unknown:
        raise DataError(
            f"record {unknown[0]} (--use/--exclude) is not in {real}'s train/ or validation/; "
            f"give ids of its record folders (e.g. {refs[0].record_id})."
        )
    drop = set(exclude) | (_ids_in(exclude_like) if exclude_like is not None else set())
    pool = [r for r in refs if (not use or r.record_id in use) and r.record_id not in drop]
    if not pool:
        raise DataError(
            f"no record of {real} is left to inject into after --use/--exclude/--exclude-like "
            f"({len(refs)} found, {len(drop & known)} excluded); keep at least one."
        )
    return pool


def _positive_pixels(ref: RecordRef) -> int:
    return int(load_mask(ref.path).sum())


def split_backgrounds(
    pool: Sequence[RecordRef], val_records: int, val_backgrounds: int | None, seed: int
) -> dict[str, list[RecordRef]]:
    """Train and validation skies, disjoint: validation's threshold is then chosen on skies training never saw.

    `val_backgrounds` None: a quarter of the pool (at least 1) when there are 2 or more and validation
    records are asked for; 0 shares the train skies. The validation skies are spread evenly over the pool
    ranked by their own contrail pixels (ties by id), so neither split is left without real contrails: a
    random pick of 2 of 6 sample records once sent both contrail-rich skies to validation, and the model,
    trained on nearly none, chose a threshold of 0.06. `seed` is kept for the record ids; the pick is fixed.
    """
    n = len(pool)
    if val_backgrounds is None:
        val_backgrounds = max(1, round(n / 4)) if n >= 2 and val_records > 0 else 0
    if val_records > 0 and val_backgrounds != 0 and not 0 < val_backgrounds < n:
        raise DataError(
            f"--val-backgrounds is {val_backgrounds}: give 0 (validation shares the train skies) up to "
            f"{n - 1}, so that at least one of the {n} records is left for training."
        )
    ranked = sorted(pool, key=lambda r: (_positive_pixels(r), r.record_id))
    # The middle of each of `val_backgrounds` equal bins of ranks, rounded down: the richest sky stays in train.
    bins = range(val_backgrounds) if val_records > 0 else range(0)
    picks = {math.floor((i + 0.5) * n / val_backgrounds - 0.5 + 1e-9) for i in bins}
    val = [r for i, r in enumerate(ranked) if i in picks]
    train = [r for r in pool if r not in val]
    return {"train": train, "validation": (val or train) if val_records > 0 else []}


def _record_rng(seed: int, split: str, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, 1 + OUT_SPLITS.index(split), i, 7])


@functools.lru_cache(maxsize=16)
def _sky_files(ref: RecordRef) -> dict[str, np.ndarray]:
    """A real record's files, kept for the next records built on it (16 skies at most, ~20 MB each)."""
    return read_record_files(ref)


def _write_one(
    record_dir: Path, split: str, ref: RecordRef, rng: np.random.Generator, corridors: float
) -> tuple[synth.RecordStats, int]:
    """One output record built on `ref`, written atomically; its stats and its labelled injected contrails."""
    files, n = inject_record(_sky_files(ref), rng, corridors=corridors, transform=int(rng.integers(8)))
    if split != "train":  # validation records carry the pixel mask only, as real ones do
        files.pop(INDIVIDUAL_MASKS_FILE)
    synth.save_record(record_dir, files)
    return synth._stats(record_dir.name, split, files), n


def inject_contrails(
    real: str | os.PathLike,
    out: str | os.PathLike,
    *,
    records: int = 256,
    val_records: int = 32,
    seed: int = 0,
    corridors: float = DEFAULT_CORRIDORS,
    use: Sequence[str] = (),
    exclude: Sequence[str] = (),
    exclude_like: str | os.PathLike | None = None,
    val_backgrounds: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> InjectSummary:
    """Write `records` train and `val_records` validation records into OUT, in the competition layout.

    Record i of a split takes the split's real skies in turn (i mod their number), turned by one of the 8
    rotations and flips, and gets its own contrails: the same arguments give the same files, and an
    interrupted run resumes. The real records are only read.
    """
    real, out = Path(real), Path(out)
    if records < 1 or val_records < 0:
        raise DataError(
            f"--records {records}, --val-records {val_records}: give at least 1 train record and 0 or more validation ones."
        )
    if not 0.0 <= corridors <= 6.0:
        raise DataError(
            f"--corridors is {corridors:g}: give a mean number of flight corridors between 0 and 6."
        )
    if real.resolve() == out.resolve() or real.resolve() in out.resolve().parents:
        raise DataError(f"OUT {out} lies inside REAL {real}: give a folder outside the real dataset.")
    pool = background_pool(real, use, exclude, Path(exclude_like) if exclude_like else None)
    skies = split_backgrounds(pool, val_records, val_backgrounds, seed)
    counts = {"train": records, "validation": val_records}
    ids = {s: synth.record_ids(seed, s, counts[s]) for s in OUT_SPLITS}
    params = {
        "generator": "inject",
        "version": VERSION,
        "seed": int(seed),
        "real": str(real.resolve()),
        "corridors": float(corridors),
        "backgrounds": {s: [r.record_id for r in skies[s]] for s in OUT_SPLITS},
    }
    synth._prepare_out(out, params, overwrite)
    for split in OUT_SPLITS:
        synth._check_no_extra_records(out / split, split, ids[split])
    written = skipped = drawn = 0
    positive = {s: 0 for s in OUT_SPLITS}
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task("synth inject", total=sum(counts.values()))
        for split in OUT_SPLITS:
            (out / split).mkdir(exist_ok=True)
            for i, rid in enumerate(ids[split]):
                st = synth._existing_stats(out / split / rid, split)
                if st is None:
                    st, n = _write_one(
                        out / split / rid,
                        split,
                        skies[split][i % len(skies[split])],
                        _record_rng(seed, split, i),
                        corridors,
                    )
                    written, drawn = written + 1, drawn + n
                else:
                    skipped += 1
                positive[split] += st.positive_pixels > 0
                bar.advance(task)
    synth._write_split_files(out, seed, {**ids, "test": []})
    draw_examples(
        out,
        [
            (record_dir, *_sky_of(skies, seed, i))
            for i, record_dir in enumerate(out / "train" / rid for rid in ids["train"][:FIGURE_RECORDS])
        ],
    )
    return InjectSummary(out, counts, params["backgrounds"], written, skipped, positive, drawn)


FIGURE_RECORDS = 3
FIGURE_FILE = "injection.png"


def _sky_of(skies: dict[str, list[RecordRef]], seed: int, i: int) -> tuple[RecordRef, int]:
    """The real record and the turn train record i was built on (the first draw of its generator)."""
    return skies["train"][i % len(skies["train"])], int(_record_rng(seed, "train", i).integers(8))


def draw_examples(out: Path, examples: Sequence[tuple[Path, RecordRef, int]]) -> Path:
    """OUT/injection.png: per record, the real sky, the same sky with contrails, band-14 cooling and labels.

    Ash RGB at the labelled frame; labels white where the real record had them, red where injected.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from segladder.data.contrails import ash_from_bands
    from segladder.viz import save_figure

    fig, axes = plt.subplots(len(examples), 4, figsize=(13, 3.4 * len(examples)), squeeze=False)
    for row, (record_dir, ref, turn) in zip(axes, examples, strict=True):
        before = {
            b: _dihedral(x[0], turn) for b, x in read_bands(ref.path, (11, 14, 15), [LABELED_FRAME]).items()
        }
        after = {b: x[0] for b, x in read_bands(record_dir, (11, 14, 15), [LABELED_FRAME]).items()}
        real = _dihedral(load_mask(ref.path), turn) > 0
        label = load_mask(record_dir) > 0
        labels = np.zeros((*label.shape, 3), np.float32)
        labels[label & ~real] = (0.9, 0.15, 0.1)
        labels[real] = 1.0
        panels = [
            (ash_from_bands(before[11], before[14], before[15]), f"real sky {ref.record_id} (turn {turn})"),
            (ash_from_bands(after[11], after[14], after[15]), f"with contrails: {record_dir.name}"),
            (before[14] - after[14], "band-14 cooling, K"),
            (labels, "labels: real (white), injected (red)"),
        ]
        for ax, (image, title) in zip(row, panels, strict=True):
            kw = {"cmap": "magma", "vmin": 0.0, "vmax": 4.0} if image.ndim == 2 else {}
            shown = ax.imshow(image, **kw)
            if image.ndim == 2:
                fig.colorbar(shown, ax=ax, fraction=0.046)
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
    fig.tight_layout()
    path = out / FIGURE_FILE
    save_figure(fig, path)
    plt.close(fig)
    return path

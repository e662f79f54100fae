"""Synthetic contrail datasets in the exact competition layout, for tests, demos and benchmarks."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from segladder.data.layout import (
    BAND_FILES,
    BANDS,
    DEFAULT_SIZE,
    INDIVIDUAL_MASKS_FILE,
    LABELED_FRAME,
    METADATA_FILES,
    N_FRAMES,
    PIXEL_MASK_FILE,
    SAMPLE_SUBMISSION_FILE,
    SPLITS,
    band_file,
)
from segladder.errors import DataError
from segladder.io import atomic_write_json, atomic_write_text, guard_writes
from segladder.progress import progress_bar

PARAMS_FILE = ".synth.json"
GENERATOR = "contrails"
# Bump when the same seed would produce different files, so old datasets are refused instead of mixed.
GENERATOR_VERSION = 2  # 2: look-alikes that only time tells apart, contrails fading at the label
MIN_SIZE = 16
MAX_SIZE = 4096
MAX_RECORDS_PER_SPLIT = 10**15  # ids permute split·10**15 + index, so indices must stay below this

_SPLIT_INDEX = {split: i for i, split in enumerate(SPLITS)}
_ID_MODULUS = 9 * 10**18  # ids are 10**18 + (0 .. 9·10**18 − 1): 19 digits, never a leading 0
_MASK63 = (1 << 63) - 1
_T = (
    np.arange(N_FRAMES, dtype=np.float32) - LABELED_FRAME
)  # frame time relative to the label, in 10-min steps
_MAX_WIND = 3.5  # px per frame
_MARGIN = int(math.ceil(_MAX_WIND * LABELED_FRAME)) + 2  # drifting fields are drawn this much larger
_SUBPIXEL_BITS = 4  # cv2 drawing "shift": polyline vertices with 1/16 px precision


@dataclass(frozen=True)
class RecordStats:
    """What one written (or already present) record holds, for the run summary."""

    record_id: str
    split: str
    positive_pixels: int  # of the pixel mask; 0 for test records, which have none
    pixels: int
    annotators: int  # individual masks written; 0 outside train


@dataclass(frozen=True)
class SynthSummary:
    """Outcome of `generate_contrails`: counts per split and how much of the labels is positive."""

    path: Path
    seed: int
    size: int
    records: dict[str, int]
    written: int
    skipped: int
    positive_records: dict[str, int] = field(default_factory=dict)  # labelled splits only
    positive_pixel_fraction: dict[str, float] = field(default_factory=dict)  # mean over a split's records

    @property
    def positive_fraction(self) -> float:
        """Fraction of labelled (train + validation) records with at least one contrail pixel."""
        labelled = sum(self.records[s] for s in self.positive_records)
        return sum(self.positive_records.values()) / labelled if labelled else 0.0


# --------------------------------------------------------------------------- ids, seeds, metadata


def _id_key(seed: int) -> int:
    digest = hashlib.blake2b(f"segladder-synth-{GENERATOR}-{seed}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & _MASK63


def _mix63(x: int, key: int) -> int:
    # Each step (xor with a key, xor-shift right, multiply by an odd number mod 2**63) is invertible.
    x ^= key
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & _MASK63
    x ^= x >> 29
    x = (x * 0x94D049BB133111EB) & _MASK63
    return x ^ (x >> 32)


def record_ids(seed: int, split: str, n: int) -> list[str]:
    """The ids of the first `n` records of a split: random-looking 19-digit strings, unique per seed.

    A keyed bijection of the 63-bit integers, cycle-walked until it lands below 9·10**18, permutes
    0 .. 9·10**18 − 1; distinct (split, index) pairs therefore never collide, and a record's id does not
    depend on how many records are asked for.
    """
    key = _id_key(seed)
    ids = []
    for i in range(n):
        x = _SPLIT_INDEX[split] * MAX_RECORDS_PER_SPLIT + i
        x = _mix63(x, key)
        while x >= _ID_MODULUS:
            x = _mix63(x, key)
        ids.append(str(10**18 + x))
    return ids


def record_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator that draws one record's contents: independent of every other record."""
    return np.random.default_rng([seed, _SPLIT_INDEX[split], index])


def record_metadata(seed: int, split: str, index: int, record_id: str) -> dict:
    """A plausible metadata entry: a Lambert conformal conic tile over the GOES-East disk at 2 km pixels."""
    rng = np.random.default_rng([seed, _SPLIT_INDEX[split], index, 1])
    lat0 = float(np.round(rng.uniform(20.0, 50.0), 4))
    lon0 = float(np.round(rng.uniform(-125.0, -65.0), 4))
    pixel = float(np.round(rng.uniform(1950.0, 2100.0), 3))
    col_min = float(np.round(rng.uniform(-2.5e6, 2.5e6), 1))
    row_min = float(np.round(rng.uniform(-1.5e6, 1.5e6), 1))
    # Frame 4 time, on the 10-minute full-disk cadence, between 2019-04 and 2021-12.
    timestamp = float(600 * rng.integers(1554076800 // 600, 1640995200 // 600))
    wkt = (
        'PROJCS["unknown",GEOGCS["unknown",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
        'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],'
        'PROJECTION["Lambert_Conformal_Conic_2SP"],'
        f'PARAMETER["latitude_of_origin",{lat0}],PARAMETER["central_meridian",{lon0}],'
        f'PARAMETER["standard_parallel_1",{lat0 - 5.0:.4f}],PARAMETER["standard_parallel_2",{lat0 + 5.0:.4f}],'
        'PARAMETER["false_easting",0],PARAMETER["false_northing",0],UNIT["metre",1]]'
    )
    return {
        "record_id": record_id,
        "projection_wkt": wkt,
        "row_min": row_min,
        "row_size": -pixel,
        "col_min": col_min,
        "col_size": pixel,
        "timestamp": timestamp,
    }


# --------------------------------------------------------------------------- scene


@dataclass(frozen=True)
class _Contrail:
    points: np.ndarray  # (P, 2) x, y at the labelled frame, along the flight track
    formed: float  # frame time the aircraft started drawing it (−inf: formed long before frame 0)
    track_speed: float  # px per frame the line grows while forming
    length: float
    drift: np.ndarray  # (2,) px per frame
    width: int  # px at the labelled frame
    spread: float  # px of width gained per frame
    cooling: float  # K colder in band 14 at full coverage
    btd_drop: float  # K more negative band 15 − band 14 at full coverage
    strength: float  # 0..1, how visible; faint ones are missed by more annotators
    fade_to: float = 1.0  # signal at the labelled frame relative to a frame before it (< 1: fading out)
    window: tuple[float, float] = (-math.inf, math.inf)  # frame times it is present at all

    def visible_points(self, t: float) -> np.ndarray | None:
        """The part of the track present at frame time t, moved by the wind; None before it forms."""
        if not self.window[0] <= t <= self.window[1]:
            return None
        if math.isinf(self.formed):
            frac = 1.0
        else:
            frac = min(1.0, self.track_speed * (t - self.formed) / self.length)
        if frac <= 0.02:
            return None
        n = len(self.points)
        u = np.linspace(0.0, frac * (n - 1), n)
        idx = np.minimum(u.astype(int), n - 2)
        w = (u - idx)[:, None]
        pts = self.points[idx] * (1 - w) + self.points[idx + 1] * w
        return pts + self.drift * t

    def width_at(self, t: float) -> float:
        return max(0.6, self.width + self.spread * t)

    def intensity(self, t: float) -> float:
        """Signal relative to the contrail's full strength: fading ones lose it over the last frame step."""
        return 1.0 if t <= -1.0 else 1.0 + (self.fade_to - 1.0) * min(1.0, t + 1.0)


def _smooth(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """An (n, n) smooth random field of roughly unit variance: bicubic upsampling of a coarse grid."""
    grid = rng.standard_normal((cells + 1, cells + 1), dtype=np.float32)
    return cv2.resize(grid, (n, n), interpolation=cv2.INTER_CUBIC)


def _drift_frames(canvas: np.ndarray, wind: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 8): the central window of a margin-padded canvas, carried by `wind` px per frame."""
    frames = []
    for t in _T:
        shift = np.float32([[1, 0, wind[0] * t - _MARGIN], [0, 1, wind[1] * t - _MARGIN]])
        frames.append(
            cv2.warpAffine(canvas, shift, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        )
    return np.stack(frames, axis=-1)


def _wind(rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    angle = rng.uniform(0.0, 2 * math.pi)
    return rng.uniform(lo, hi) * np.array([math.cos(angle), math.sin(angle)])


def _contrail(rng: np.random.Generator, size: int, wind: np.ndarray, formed: float) -> _Contrail:
    centre = rng.uniform(0.1, 0.9, 2) * size
    angle = rng.uniform(0.0, math.pi)
    length = max(8.0, rng.uniform(0.2, 0.9) * size)
    bend = rng.uniform(-0.06, 0.06) * length  # slight curvature from the wind shear
    direction = np.array([math.cos(angle), math.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    u = np.linspace(-0.5, 0.5, 9)[:, None]
    points = centre + u * length * direction + bend * (1 - 4 * u**2) * normal
    if rng.random() < 0.5:  # flown in either direction: growth starts at either end
        points = points[::-1]
    strength = rng.uniform(0.25, 1.0)
    btd_drop = rng.uniform(1.5, 4.5) * (0.5 + 0.5 * strength)
    return _Contrail(
        points=points,
        formed=formed,
        track_speed=rng.uniform(30.0, 80.0),  # ~250 m/s over 10 min at ~2 km pixels
        length=length,
        drift=wind + rng.normal(0.0, 0.3, 2),
        width=int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25])),
        spread=rng.uniform(0.1, 0.45),
        cooling=btd_drop * rng.uniform(1.2, 2.2),
        btd_drop=btd_drop,
        strength=strength,
    )


def _contrails(
    rng: np.random.Generator, size: int, wind: np.ndarray
) -> tuple[list[_Contrail], list[_Contrail]]:
    """(labelled, unlabelled): contrails present at the labelled frame; ones that only form after it and
    look-alikes that only time tells apart from a contrail.

    In the labelled frame alone a look-alike is a contrail: the same thin line, cooling and split-window
    drop. Time separates them: a linear cloud edge that flashes up in the labelled frame only, or one
    that stays put while the upper-level wind carries every contrail. Some labelled contrails fade in the
    last frame step, faint in the labelled frame but clear before it (annotators saw the sequence).
    """
    labelled: list[_Contrail] = []
    if rng.random() >= 0.35:  # about a third of the records are empty at the labelled frame
        for _ in range(1 + min(7, int(rng.poisson(1.5)))):
            # Most are old; some form during the sequence and are shorter in the earlier frames.
            formed = -math.inf if rng.random() < 0.55 else rng.uniform(-LABELED_FRAME + 0.5, -0.3)
            c = _contrail(rng, size, wind, formed)
            if math.isinf(formed) and rng.random() < 0.45:
                c = replace(c, fade_to=rng.uniform(0.1, 0.25), strength=max(c.strength, 0.8))
            labelled.append(c)
    late = [_contrail(rng, size, wind, rng.uniform(0.1, 2.5))] if rng.random() < 0.2 else []
    for _ in range(int(rng.poisson(1.2))):
        c = _contrail(rng, size, wind, -math.inf)
        if rng.random() < 0.6:
            c = replace(c, window=(-0.5, math.inf))  # flashes up at the labelled frame
        else:
            c = replace(c, drift=np.zeros(2), spread=0.0)  # anchored to the ground, not carried by the wind
        late.append(c)
    return labelled, late


def _draw(canvas: np.ndarray, points: np.ndarray, value: int, width: int, line_type: int) -> None:
    pts = np.round(points * (1 << _SUBPIXEL_BITS)).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(
        canvas, [pts], False, value, thickness=max(1, width), lineType=line_type, shift=_SUBPIXEL_BITS
    )


def _contrail_frames(contrails: list[_Contrail], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(cooling, btd_drop), each (size, size, 8) K: the contrails' anti-aliased, drifting, widening lines."""
    # uint8 canvases keep cv2's anti-aliasing; 1/20 K and 1/40 K steps are far below the sensor noise.
    cool = np.zeros((N_FRAMES, size, size), np.uint8)
    btd = np.zeros((N_FRAMES, size, size), np.uint8)
    for k, t in enumerate(_T):
        for c in contrails:
            pts = c.visible_points(float(t))
            if pts is None:
                continue
            width = c.width_at(float(t))
            # Spreading dilutes the ice: a wider line is fainter.
            fade = min(1.3, math.sqrt(c.width / width)) * c.intensity(float(t))
            _draw(cool[k], pts, min(255, round(20 * c.cooling * fade)), round(width), cv2.LINE_AA)
            _draw(btd[k], pts, min(255, round(40 * c.btd_drop * fade)), round(width), cv2.LINE_AA)
    return cool.transpose(1, 2, 0) * np.float32(1 / 20), btd.transpose(1, 2, 0) * np.float32(1 / 40)


def _annotators(rng: np.random.Generator, contrails: list[_Contrail], size: int) -> np.ndarray:
    """(size, size, R) uint8: each annotator's take on the labelled frame, R in 4..7."""
    n = int(rng.integers(4, 8))
    masks = np.zeros((n, size, size), np.uint8)
    for a in range(n):
        style = int(rng.choice([-1, 0, 0, 1]))  # some draw thinner, some fatter
        for c in contrails:
            if rng.random() < 0.08 + 0.3 * (1.0 - c.strength):
                continue  # missed: faint contrails more often
            pts = c.visible_points(0.0)
            if pts is not None:
                _draw(masks[a], pts + rng.uniform(-0.4, 0.4, 2), 1, c.width + style, cv2.LINE_8)
        on = np.flatnonzero(masks[a])
        masks[a].flat[on[rng.random(on.size) < 0.02]] = 0  # a few stray missed pixels
    return masks.transpose(1, 2, 0)


def make_record(
    rng: np.random.Generator, size: int = DEFAULT_SIZE, split: str = "train"
) -> dict[str, np.ndarray]:
    """One record's files as arrays, {file name: array}, with the dtypes and shapes of the competition.

    Brightness temperatures come from a layered scene: a static surface, drifting water vapour, broad
    natural clouds (cold, split-window difference near 0 or positive), sometimes cirrus sheets (negative
    difference, but broad) and thin contrails, whose ice absorbs more at 12 µm than at 11 µm, hence a
    band 15 − band 14 of about −1 to −4 K. Only shape and that difference together identify a contrail.
    """
    if split not in _SPLIT_INDEX:
        raise DataError(f"unknown split '{split}': expected one of {', '.join(SPLITS)}.")
    n = size + 2 * _MARGIN
    cells = max(2, size // 40)
    wind_up, wind_low = _wind(rng, 0.8, _MAX_WIND), _wind(rng, 0.3, 2.0)

    surface = rng.uniform(278.0, 296.0) + 3.5 * _smooth(rng, size, max(2, size // 64))
    surface += _smooth(rng, size, cells * 4)
    surface = surface[:, :, None] + rng.uniform(-0.3, 0.3) * _T  # diurnal warming or cooling
    emissivity = 0.4 * _smooth(rng, size, cells * 2)[:, :, None]  # land surfaces differ at 8.4 µm
    wv_low = _drift_frames(_smooth(rng, n, cells), wind_low, size)
    wv_high = _drift_frames(_smooth(rng, n, cells), wind_up, size)
    btd_texture = (0.45 * _smooth(rng, size, cells * 3) + 0.3 * _smooth(rng, size, cells * 6))[:, :, None]

    cover = _smooth(rng, n, cells) + 0.5 * _smooth(rng, n, cells * 3)
    cloud = np.clip((cover - rng.uniform(-0.5, 1.8)) * rng.uniform(0.8, 2.5), 0.0, 1.0)
    cloud = _drift_frames(cloud.astype(np.float32), wind_low, size)
    cloud_top = rng.uniform(220.0, 265.0) + 3.0 * _drift_frames(_smooth(rng, n, cells * 2), wind_low, size)
    texture = _drift_frames(_smooth(rng, n, max(4, size // 6)), wind_low, size)

    cirrus = np.zeros((n, n), np.float32)
    if rng.random() < 0.5:
        _draw(cirrus, rng.uniform(0, n, (2, 2)), 1, int(rng.uniform(0.08, 0.2) * size), cv2.LINE_8)
        cirrus = cv2.GaussianBlur(cirrus, (0, 0), 0.04 * size) * np.clip(
            1 + 0.5 * _smooth(rng, n, cells), 0, 2
        )
    cirrus = _drift_frames(cirrus, wind_up, size)
    cirrus_cool, cirrus_btd = rng.uniform(1.0, 5.0), rng.uniform(0.5, 2.5)

    labelled, late = _contrails(rng, size, wind_up)
    cool, btd_drop = _contrail_frames(labelled + late, size)

    clear = 1.0 - cloud
    b14 = surface - 0.6 - 0.8 * wv_low
    b14 += cloud * (cloud_top - b14) + (0.3 + 0.8 * cloud) * texture - cirrus * cirrus_cool - cool
    btd = clear * (0.5 + btd_texture - 0.15 * wv_low) + cloud * rng.uniform(-0.3, 0.8)
    btd -= cirrus * cirrus_btd + btd_drop
    ice = 0.25 * cool + 0.2 * cirrus * cirrus_cool  # thin ice cools 10.3 and 8.4 µm less than 11.2 µm
    b13 = b14 + clear * (0.8 + 0.2 * wv_low) + 0.15 * cloud + ice
    b11 = b14 - clear * (2.2 + 0.6 * wv_low + emissivity) - cloud * rng.uniform(-0.5, 0.5) + 1.4 * ice
    b12 = 0.55 * b14 + 104.0 + 1.5 * wv_high
    b16 = 0.72 * b14 + 48.0 - 2.0 * wv_low
    wv_mid = 0.5 * (wv_low + wv_high)
    water_vapour = {
        8: 233.0 + 0.08 * (b14 - 285.0) - 7.0 * wv_high,
        9: 242.0 + 0.18 * (b14 - 285.0) - 6.0 * wv_mid,
        10: 251.0 + 0.30 * (b14 - 285.0) - 5.0 * wv_low,
    }
    bands = {**water_vapour, 11: b11, 12: b12, 13: b13, 14: b14, 15: b14 + btd, 16: b16}
    noise = rng.standard_normal((len(BANDS), size, size, N_FRAMES), dtype=np.float32)
    out: dict[str, np.ndarray] = {}
    for k, band in enumerate(BANDS):
        sigma = 0.15 if band <= 10 else 0.1
        out[band_file(band)] = np.ascontiguousarray(bands[band] + sigma * noise[k], dtype=np.float32)

    if split != "test":
        individual = _annotators(rng, labelled, size)
        votes = individual.sum(axis=-1, dtype=np.int32)
        # "More than half of the annotators", exactly as the competition defines the pixel mask.
        out[PIXEL_MASK_FILE] = (2 * votes > individual.shape[-1]).astype(np.int32)[:, :, None]
        if split == "train":
            out[INDIVIDUAL_MASKS_FILE] = individual.astype(np.int32)[:, :, None, :]
    return out


# --------------------------------------------------------------------------- writing


def expected_files(split: str) -> tuple[str, ...]:
    extra = {"train": (PIXEL_MASK_FILE, INDIVIDUAL_MASKS_FILE), "validation": (PIXEL_MASK_FILE,), "test": ()}
    return BAND_FILES + extra[split]


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def _stats(record_id: str, split: str, files: dict[str, np.ndarray]) -> RecordStats:
    mask = files.get(PIXEL_MASK_FILE)
    individual = files.get(INDIVIDUAL_MASKS_FILE)
    height, width = files[BAND_FILES[0]].shape[:2]
    return RecordStats(
        record_id=record_id,
        split=split,
        positive_pixels=int(mask.sum()) if mask is not None else 0,
        pixels=height * width,
        annotators=individual.shape[-1] if individual is not None else 0,
    )


def write_record(
    record_dir: str | os.PathLike, rng: np.random.Generator, *, size: int = DEFAULT_SIZE, split: str = "train"
) -> RecordStats:
    """Generate one record into `record_dir` (its name is the record id), all files or none.

    The files go into a hidden sibling `.<record_id>.tmp` that is renamed into place only once complete,
    so an interrupted run never leaves a record that looks whole; an existing `record_dir` is replaced.
    """
    record_dir = Path(record_dir)
    files = make_record(rng, size=size, split=split)
    tmp = record_dir.parent / f".{record_dir.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        with guard_writes(record_dir, needed=sum(a.nbytes + 128 for a in files.values())):
            for name, array in files.items():
                _save_npy(tmp / name, array)
        if record_dir.exists():
            shutil.rmtree(record_dir)
        os.replace(tmp, record_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _stats(record_dir.name, split, files)


def _existing_stats(record_dir: Path, split: str) -> RecordStats | None:
    """Stats of a complete record already on disk, or None when it must be (re)written."""
    if not record_dir.is_dir() or any(not (record_dir / f).is_file() for f in expected_files(split)):
        return None
    files = {BAND_FILES[0]: np.load(record_dir / BAND_FILES[0], mmap_mode="r")}
    for name in (PIXEL_MASK_FILE, INDIVIDUAL_MASKS_FILE):
        if name in expected_files(split):
            files[name] = np.load(record_dir / name, mmap_mode="r")
    return _stats(record_dir.name, split, files)


_COUNT_FLAGS = {"train": "--records", "validation": "--val-records", "test": "--test-records"}


def _check_counts(records: int, val_records: int, test_records: int, size: int, seed: int) -> None:
    if records < 1:
        raise DataError(f"--records is {records}: the train split needs at least 1 record.")
    counts = {"train": records, "validation": val_records, "test": test_records}
    for split, value in counts.items():
        flag = _COUNT_FLAGS[split]
        if value < 0:
            raise DataError(f"{flag} is {value}: give 0 or more records.")
        if value >= MAX_RECORDS_PER_SPLIT:
            raise DataError(f"{flag} is {value}: at most {MAX_RECORDS_PER_SPLIT - 1} records per split.")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise DataError(f"--size is {size}: give an image size in pixels between {MIN_SIZE} and {MAX_SIZE}.")
    if seed < 0:
        raise DataError(f"--seed is {seed}: give a seed of 0 or more.")


def _prepare_out(out: Path, params: dict, overwrite: bool) -> None:
    """Make `out` ready for this run, refusing anything that is not (this) synthetic dataset."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file; give a directory path for the dataset (it is created if missing).")
    marker = out / PARAMS_FILE
    if out.is_dir() and any(out.iterdir()):
        if not marker.is_file():
            raise DataError(
                f"{out} is not empty and holds no {PARAMS_FILE}, so it is not a synthetic dataset made here; "
                f"refusing to write into (or delete) it. Give a new or empty directory."
            )
        try:
            found = json.loads(marker.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(
                f"{marker} is unreadable ({exc}); delete {out} or give a fresh directory."
            ) from exc
        if found != params:
            if not overwrite:
                raise DataError(
                    f"{marker} says {out} was generated with {_describe(found)}, but this run asks for "
                    f"{_describe(params)}. Give a fresh output directory, or pass --overwrite to replace it."
                )
            _remove_dataset(out)
    out.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        atomic_write_json(marker, params)  # first, so an interrupted run is still recognised when resumed


def _describe(params: dict) -> str:
    if not isinstance(params, dict):
        return "unknown parameters"
    return ", ".join(f"{k}={params.get(k)}" for k in ("generator", "version", "seed", "size"))


def _remove_dataset(out: Path) -> None:
    # Only what this generator writes: anything else a user put beside it stays.
    for split in SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)
    for name in (*METADATA_FILES.values(), SAMPLE_SUBMISSION_FILE, PARAMS_FILE):
        (out / name).unlink(missing_ok=True)


def _check_no_extra_records(split_dir: Path, split: str, ids: list[str]) -> None:
    if not split_dir.is_dir():
        return
    for entry in split_dir.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(".tmp"):
            shutil.rmtree(entry, ignore_errors=True)  # left by an interrupted run
    wanted = set(ids)
    extra = sorted(p.name for p in split_dir.iterdir() if not p.name.startswith(".") and p.name not in wanted)
    if extra:
        raise DataError(
            f"{split_dir} holds {len(extra)} record(s) this run would not write (e.g. {extra[0]}), probably "
            f"from a run with more records. Ask for at least {len(ids) + len(extra)} with {_COUNT_FLAGS[split]}, "
            f"give a fresh output directory, or pass --overwrite to replace it."
        )


def generate_contrails(
    out: str | os.PathLike,
    records: int = 64,
    val_records: int = 16,
    test_records: int = 4,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> SynthSummary:
    """Write a synthetic contrail dataset in the competition layout under `out`.

    Deterministic: the same seed and size give byte-identical files, and record i of a split is the
    same whatever the counts. Re-running into the same `out` skips records already complete, so an
    interrupted run resumes; a dataset made with another seed or size is refused unless `overwrite`.
    """
    _check_counts(records, val_records, test_records, size, seed)
    out = Path(out)
    params = {"generator": GENERATOR, "version": GENERATOR_VERSION, "seed": int(seed), "size": int(size)}
    counts = {"train": records, "validation": val_records, "test": test_records}
    ids = {split: record_ids(seed, split, n) for split, n in counts.items()}
    _prepare_out(out, params, overwrite)
    for split in SPLITS:
        _check_no_extra_records(out / split, split, ids[split])

    stats: dict[str, list[RecordStats]] = {split: [] for split in SPLITS}
    written = skipped = 0
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task("synth contrails", total=sum(counts.values()))
        for split in SPLITS:
            (out / split).mkdir(exist_ok=True)
            for i, rid in enumerate(ids[split]):
                record_dir = out / split / rid
                st = _existing_stats(record_dir, split)
                if st is None:
                    st = write_record(record_dir, record_rng(seed, split, i), size=size, split=split)
                    written += 1
                else:
                    skipped += 1
                stats[split].append(st)
                bar.advance(task)

    for split, name in METADATA_FILES.items():
        atomic_write_json(
            out / name, [record_metadata(seed, split, i, rid) for i, rid in enumerate(ids[split])]
        )
    atomic_write_text(
        out / SAMPLE_SUBMISSION_FILE,
        "record_id,encoded_pixels\n" + "".join(f"{rid},-\n" for rid in ids["test"]),
    )

    labelled = [s for s in SPLITS if s in METADATA_FILES]
    return SynthSummary(
        path=out,
        seed=seed,
        size=size,
        records=counts,
        written=written,
        skipped=skipped,
        positive_records={s: sum(st.positive_pixels > 0 for st in stats[s]) for s in labelled},
        positive_pixel_fraction={
            s: float(np.mean([st.positive_pixels / st.pixels for st in stats[s]])) if stats[s] else 0.0
            for s in labelled
        },
    )

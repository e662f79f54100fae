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
GENERATOR_VERSION = 3  # 3: brightness-temperature world measured against real records (issue 24)
MIN_SIZE = 16
MIN_WIDTH_SCALE, MAX_WIDTH_SCALE = 0.5, 8.0
MIN_OPACITY_SCALE, MAX_OPACITY_SCALE = 0.25, 8.0
_MAX_OPACITY = 0.9  # a scaled contrail stays semi-transparent: it keeps its split-window signature
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
# Contrail widths at the labelled frame (px) and how often each is drawn, and how far (px) an annotator's
# line sits off the true one: together they set the width distribution of the majority mask's components.
_WIDTHS, _WIDTH_SHARES = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5), (0.1, 0.3, 0.28, 0.18, 0.09, 0.05)
_ANNOTATOR_JITTER = 0.6
_ANNOTATOR_STYLES = (-0.5, 0.0, 0.5, 1.0, 1.5)  # px an annotator draws wider than the line, drawn once each
_MASK_SUPERSAMPLE = 4
_NO_CLUSTER_SHARE = 0.2  # of records: with the labelling rules, about a fifth end up without a contrail
_EXTRA_CLUSTERS = 2.2  # mean clusters beyond the first in a 256² record that has any
_AGED_SHARE, _AGED_WIDTH, _AGED_LENGTH = 0.08, (8.0, 15.0), 180.0  # of clusters; px; median px
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
#
# Everything below is in brightness-temperature space and in pixel units of the ABI grid the competition
# tiles use (about 2 km): a contrail is 1–3 px wide at any `size`. `size` sets the field of view, not the
# resolution. A record below 256² still holds a contrail corridor as often as a full tile (a crop around a
# record's contrail activity, like the real-record test fixture), but fewer corridors and fewer lines each.

_CONTRAIL_LEVELS = (
    500.0  # uint8 opacity canvases: 1/500 steps (~0.15 K of contrast), cv2 anti-aliases uint8 only
)
_VISIBLE_K = 1.0  # K of band-14 contrast below which a line is not visible in an image
_REF_BELOW_K = 285.0  # a typical scene temperature under a contrail, for the visibility test


@dataclass(frozen=True)
class _Contrail:
    points: np.ndarray  # (P, 2) x, y of the whole track at the labelled frame
    formed: float  # frame time the aircraft passed the track's start (−inf: long before frame 0)
    track_speed: float  # px per frame the line grows while forming
    length: float
    drift: np.ndarray  # (2,) px per frame
    width: float  # px at the labelled frame
    spread: float  # px of width gained per frame
    opacity: float  # ice emissivity at the labelled frame (0..1)
    top: float  # K, the ice's own temperature
    btd_gain: float  # K more negative band 15 − band 14 per unit opacity (thin ice: split-window signature)
    g_gain: float  # K less band 14 − band 11 per unit opacity (ice emits relatively more at 8.4 µm)
    fade_to: float = 1.0  # signal at the labelled frame relative to a frame before it (< 1: fading out)
    window: tuple[float, float] = (-math.inf, math.inf)  # frame times it is present at all

    def visible_points(self, t: float) -> np.ndarray | None:
        """The part of the track present at frame time t, moved by the wind; None before it forms."""
        if not self.window[0] <= t <= self.window[1]:
            return None
        frac = (
            1.0 if math.isinf(self.formed) else min(1.0, self.track_speed * (t - self.formed) / self.length)
        )
        if frac <= 0.02:
            return None
        n = len(self.points)
        u = np.linspace(0.0, frac * (n - 1), n)
        idx = np.minimum(u.astype(int), n - 2)
        w = (u - idx)[:, None]
        pts = self.points[idx] * (1 - w) + self.points[idx + 1] * w
        return pts + self.drift * t

    def width_at(self, t: float) -> float:
        return max(0.8, self.width + self.spread * t)

    def opacity_at(self, t: float) -> float:
        """Spreading dilutes the ice (a wider line is fainter); a fading one loses it over the last step."""
        fade = 1.0 if t <= -1.0 else 1.0 + (self.fade_to - 1.0) * min(1.0, t + 1.0)
        return self.opacity * min(1.5, self.width / self.width_at(t)) * fade

    def contrast(self, t: float) -> float:
        """Band-14 cooling it causes over a typical scene, K."""
        return self.opacity_at(t) * (_REF_BELOW_K - self.top)


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


def _line(
    rng: np.random.Generator, centre: np.ndarray, angle: float, length: float, wind: np.ndarray, formed: float
) -> _Contrail:
    direction = np.array([math.cos(angle), math.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    bend = rng.uniform(-0.02, 0.02) * length  # nearly straight: young contrails have not been sheared yet
    u = np.linspace(-0.5, 0.5, 5)[:, None]
    points = centre + u * length * direction + bend * (1 - 4 * u**2) * normal
    if rng.random() < 0.5:  # flown in either direction: growth starts at either end
        points = points[::-1]
    return _Contrail(
        points=points,
        formed=formed,
        track_speed=rng.uniform(40.0, 110.0),  # ~250 m/s over 10 min at ~2 km pixels: it appears at once
        length=length,
        drift=wind + rng.normal(0.0, 0.15, 2),
        width=float(rng.choice(_WIDTHS, p=_WIDTH_SHARES)),
        spread=rng.uniform(0.05, 0.3),
        opacity=float(np.clip(rng.lognormal(math.log(0.09), 0.5), 0.03, 0.35)),
        top=rng.uniform(205.0, 232.0),
        btd_gain=rng.uniform(3.0, 7.0),
        g_gain=rng.uniform(4.0, 10.0),
    )


def _cluster(rng: np.random.Generator, size: int, wind: np.ndarray) -> list[_Contrail]:
    """Parallel contrails along one flight corridor, offset across and along it; fewer in a small field of view."""
    centre = rng.uniform(0.05, 0.95, 2) * size
    angle = rng.uniform(0.0, math.pi)
    normal = np.array([-math.sin(angle), math.cos(angle)])
    along = np.array([math.cos(angle), math.sin(angle)])
    lines, offset = [], 0.0
    # Now and then an aged corridor: one or two long contrails that have spread to 6–14 px (real masks hold
    # such patches, ~200 px long; a few of them weigh much in the width and positive-pixel rows).
    aged = rng.random() < _AGED_SHARE
    count = int(rng.integers(1, 3)) if aged else 1 + min(11, int(rng.poisson(2.5 * math.sqrt(_area(size)))))
    for _ in range(count):
        # Lengths as measured on real records: median ~30 px, from about 10 to 200 px at 256².
        median = _AGED_LENGTH if aged else 30.0
        length = float(np.clip(rng.lognormal(math.log(median), 0.5 if aged else 0.7), 8.0, 1.1 * size))
        old = aged or rng.random() < 0.5
        formed = -math.inf if old else rng.uniform(-LABELED_FRAME - 0.5, -0.2)
        c = _line(
            rng,
            centre + offset * normal + rng.uniform(-0.4, 0.4) * length * along,
            angle + rng.normal(0.0, 0.04),
            length,
            wind,
            formed,
        )
        if aged:  # wide, slowly spreading, and fainter for it than a young line of the same ice
            c = replace(
                c, width=rng.uniform(*_AGED_WIDTH), spread=rng.uniform(0.0, 0.3), opacity=0.7 * c.opacity
            )
        elif (
            old and rng.random() < 0.25
        ):  # faint at the label but clear before it: annotators saw the sequence
            c = replace(c, fade_to=rng.uniform(0.2, 0.4), opacity=max(c.opacity, 0.15))
        lines += _broken(rng, c) if length > 30 and rng.random() < 0.4 else [c]
        offset += rng.choice([-1, 1]) * rng.uniform(4.0, 18.0) + (rng.uniform(*_AGED_WIDTH) if aged else 0.0)
    return lines


def _area(size: int) -> float:
    """The field of view relative to a competition tile (256² px), at most 1."""
    return min(1.0, (size / 256) ** 2)


def _broken(rng: np.random.Generator, c: _Contrail) -> list[_Contrail]:
    """A contrail in 2–3 collinear pieces with gaps of 3–8 px, as real ones often are (uneven ice supersaturation)."""
    start, end = c.points[0], c.points[-1]
    cuts = np.sort(rng.uniform(0.2, 0.8, int(rng.integers(1, 3))))
    gap = rng.uniform(3.0, 8.0) / c.length
    bounds = [0.0, *[x for cut in cuts for x in (cut - gap / 2, cut + gap / 2)], 1.0]
    pieces = []
    for a, b in zip(bounds[::2], bounds[1::2], strict=True):
        if b - a <= 0:
            continue
        u = np.linspace(a, b, 5)[:, None]
        # The piece starts forming when the aircraft reaches it: later along the track.
        formed = c.formed + a * c.length / c.track_speed
        pieces.append(replace(c, points=start + u * (end - start), length=(b - a) * c.length, formed=formed))
    return pieces


def _look_alikes(rng: np.random.Generator, size: int, wind: np.ndarray) -> list[_Contrail]:
    """Lines that are not contrails, telling themselves apart only over time.

    In the labelled frame alone they are contrails: thin, cold, with the split-window signature. One kind
    flashes up in the labelled frame only (a single image: below the labelling rules' two); the other stays
    put while the upper-level wind carries every contrail (a linear cloud anchored to the ground).
    """
    out = []
    for _ in range(int(rng.poisson(0.8))):
        centre = rng.uniform(0.1, 0.9, 2) * size
        length = float(np.clip(rng.lognormal(math.log(30.0), 0.6), 10.0, size))
        c = _line(rng, centre, rng.uniform(0.0, math.pi), length, wind, -math.inf)
        c = replace(c, opacity=max(c.opacity, 0.08))
        if rng.random() < 0.5:
            c = replace(c, window=(-0.5, 0.5))
        else:
            c = replace(c, drift=np.zeros(2), spread=0.0)
        out.append(c)
    return out


def _mask_of(c: _Contrail, size: int, t: float, width: float, jitter: np.ndarray | None = None) -> np.ndarray:
    """The pixels a line of `width` px covers at least half of.

    Drawn at _MASK_SUPERSAMPLE × the resolution around the line only, then area-averaged, so a 1.5 or 2.5 px
    line is as wide as that on average rather than rounded to whole pixels (real annotations are polygons of
    any width).
    """
    canvas = np.zeros((size, size), np.uint8)
    pts = c.visible_points(t)
    if pts is None:
        return canvas
    if jitter is not None:
        pts = pts + jitter
    k, pad = _MASK_SUPERSAMPLE, width / 2 + 2
    x0, y0 = (max(0, int(math.floor(v - pad))) for v in pts.min(axis=0))
    x1, y1 = (min(size, int(math.ceil(v + pad)) + 1) for v in pts.max(axis=0))
    if x1 <= x0 or y1 <= y0:
        return canvas
    fine = np.zeros(((y1 - y0) * k, (x1 - x0) * k), np.uint8)
    # Pixel centres sit at (i + 0.5)·k − 0.5 on the fine grid.
    _draw(fine, (pts - (x0, y0) + 0.5) * k - 0.5, 255, max(1, round(width * k)), cv2.LINE_8)
    coarse = cv2.resize(fine, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    canvas[y0:y1, x0:x1] = coarse >= 128
    return canvas


def _labelled(c: _Contrail, size: int) -> bool:
    """The competition's rules: ≥ 10 px, ≥ 3× longer than wide at some time, visible in ≥ 2 images."""
    frames = [
        float(t) for t in _T if c.visible_points(float(t)) is not None and c.contrast(float(t)) >= _VISIBLE_K
    ]
    if 0.0 not in frames or len(frames) < 2:
        return False
    if int(_mask_of(c, size, 0.0, c.width_at(0.0)).sum()) < 10:
        return False
    aspect = max(
        float(np.linalg.norm(np.diff(c.visible_points(t), axis=0), axis=1).sum()) / c.width_at(t)
        for t in frames
    )
    return aspect >= 3.0


def _contrails(
    rng: np.random.Generator,
    size: int,
    wind: np.ndarray,
    width_scale: float = 1.0,
    opacity_scale: float = 1.0,
    *,
    extra_clusters: float = _EXTRA_CLUSTERS,
    empty_share: float = _NO_CLUSTER_SHARE,
    with_look_alikes: bool = True,
) -> tuple[list[_Contrail], list[_Contrail]]:
    """(labelled, unlabelled) lines: contrails that pass the labelling rules; the rest and the look-alikes.

    `width_scale` widens every line (and its spreading) and `opacity_scale` thickens its ice (at most
    0.9) before the rules are applied; look-alikes alike, so they stay as hard to tell apart.
    `extra_clusters` (mean flight corridors beyond the first at 256²) and `empty_share` (share of
    records with none) set how many are drawn; contrail injection leaves the look-alikes out, since a real
    sky brings its own.
    """
    lines: list[_Contrail] = []
    if rng.random() >= empty_share:
        for _ in range(1 + min(5, int(rng.poisson(extra_clusters * _area(size))))):
            lines += _cluster(rng, size, wind)
    if rng.random() < 0.15:  # one forming only after the labelled frame: not in the label
        c = _cluster(rng, size, wind)[0]
        lines.append(replace(c, formed=rng.uniform(0.1, 2.5)))
    look_alikes = _look_alikes(rng, size, wind) if with_look_alikes else []
    if width_scale != 1.0 or opacity_scale != 1.0:
        lines, look_alikes = (
            [
                replace(
                    c,
                    width=c.width * width_scale,
                    spread=c.spread * width_scale,
                    opacity=min(_MAX_OPACITY, c.opacity * opacity_scale),
                )
                for c in group
            ]
            for group in (lines, look_alikes)
        )
    labelled = [c for c in lines if _labelled(c, size)]
    chosen = {id(c) for c in labelled}
    return labelled, [c for c in lines if id(c) not in chosen] + look_alikes


def _draw(canvas: np.ndarray, points: np.ndarray, value: int, width: int, line_type: int) -> None:
    pts = np.round(points * (1 << _SUBPIXEL_BITS)).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(
        canvas, [pts], False, value, thickness=max(1, width), lineType=line_type, shift=_SUBPIXEL_BITS
    )


def _ice_frames(
    contrails: list[_Contrail], size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(opacity, opacity·top, opacity·btd_gain, opacity·g_gain), each (size, size, 8): the contrails' ice.

    That is the drifting, widening lines' ice, anti-aliased; the weighted ones give each pixel its contrail's
    properties.
    """
    shape = (N_FRAMES, size, size)
    opacity = np.zeros(shape, np.float32)
    top, btd, g = np.zeros(shape, np.float32), np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    canvas = np.zeros((size, size), np.uint8)
    for k, t in enumerate(_T):
        for c in contrails:
            pts = c.visible_points(float(t))
            if pts is None:
                continue
            canvas[:] = 0
            _draw(
                canvas,
                pts,
                min(255, round(_CONTRAIL_LEVELS * c.opacity_at(float(t)))),
                round(c.width_at(float(t))),
                cv2.LINE_AA,
            )
            on = canvas > 0
            a = canvas[on].astype(np.float32) / _CONTRAIL_LEVELS
            opacity[k][on] += a
            top[k][on] += a * c.top
            btd[k][on] += a * c.btd_gain
            g[k][on] += a * c.g_gain
    return tuple(x.transpose(1, 2, 0) for x in (opacity, top, btd, g))


def _annotators(
    rng: np.random.Generator,
    labelled: list[_Contrail],
    others: list[_Contrail],
    size: int,
    n: int | None = None,
) -> np.ndarray:
    """(size, size, R) uint8: each annotator's take on the labelled frame, R in 4..6 (mostly 4, as on real data).

    Faint contrails are missed more often; some annotators draw thinner or fatter; now and then one marks a
    look-alike or an unlabelled line that the others leave out (a minority, so it never reaches the mask).
    `n` fixes R (injection matches a real record's annotators).
    """
    if n is None:
        n = int(rng.choice([4, 4, 4, 5, 6]))
    masks = np.zeros((n, size, size), np.uint8)
    for a in range(n):
        style = float(rng.choice(_ANNOTATOR_STYLES))
        for c in labelled:
            if rng.random() < 0.05 + 0.35 * math.exp(-c.contrast(0.0) / 4.0):
                continue
            jitter = rng.uniform(-_ANNOTATOR_JITTER, _ANNOTATOR_JITTER, 2)
            masks[a] |= _mask_of(c, size, 0.0, c.width_at(0.0) + style, jitter)
        for c in others:
            if c.visible_points(0.0) is not None and rng.random() < 0.12:
                masks[a] |= _mask_of(c, size, 0.0, c.width_at(0.0) + style)
    return masks.transpose(1, 2, 0)


@dataclass
class _Sky:
    """One record's scene as the ash RGB sees it, (H, W, T) brightness temperatures in K.

    Band 14, the split window `btd` (band 15 − band 14), `g` (band 14 − band 11) and `c13` (band 13 −
    band 14).
    """

    b14: np.ndarray
    btd: np.ndarray
    g: np.ndarray
    c13: np.ndarray

    def layer(self, field: np.ndarray, value14, value_btd, value_g, value_c13) -> None:
        """Cover the scene with a cloud of these values where `field` (its opacity, 0–1) says."""
        self.b14 = self.b14 + field * (value14 - self.b14)
        self.btd = self.btd + field * (value_btd - self.btd)
        self.g = self.g + field * (value_g - self.g)
        self.c13 = self.c13 + field * (value_c13 - self.c13)


def _clear_sky(
    rng: np.random.Generator, size: int, cells: int, wind_low: np.ndarray
) -> tuple[_Sky, np.ndarray]:
    """A sea or land surface seen through water vapour, and the vapour field itself (H, W, T)."""
    n = size + 2 * _MARGIN
    sea = rng.random() < 0.5
    if sea:
        surface = rng.uniform(286.0, 301.0) + 0.6 * _smooth(rng, size, cells)
        emissivity = np.zeros((size, size), np.float32)
    else:
        surface = rng.uniform(272.0, 306.0) + 3.0 * _smooth(rng, size, max(2, size // 64))
        surface += _smooth(rng, size, cells * 4)
        emissivity = 0.3 + 0.4 * np.abs(_smooth(rng, size, cells * 2))  # dry land is darker at 8.4 µm
    surface = surface[:, :, None] + rng.uniform(-0.3, 0.3) * _T  # diurnal warming or cooling
    moisture = float(rng.beta(3.0, 1.5))
    vapour = _drift_frames(_smooth(rng, n, cells), wind_low, size)
    wet = np.clip(moisture + 0.1 * vapour, 0.0, 1.0)
    b14 = surface - (0.8 + 4.0 * wet)
    btd = -(0.8 + 3.6 * wet) + 0.2 * _smooth(rng, size, cells * 3)[:, :, None]  # band 15 − band 14
    g = 0.4 + 2.8 * wet + emissivity[:, :, None]  # band 14 − band 11
    c13 = 0.4 + 1.0 * wet  # band 13 − band 14: 10.3 µm is the cleaner window
    return _Sky(b14, btd, g, c13), vapour


def _low_cloud(rng: np.random.Generator, sky: _Sky, size: int, cells: int, wind_low: np.ndarray) -> None:
    """Low water cloud: a little colder, band 14 − band 11 positive.

    The vapour above a low top still makes the split window negative (real records show no pink low-cloud
    patches).
    """
    n = size + 2 * _MARGIN
    cover = _smooth(rng, n, cells) + 0.5 * _smooth(rng, n, cells * 3) + 0.3 * _smooth(rng, n, cells * 10)
    low = np.clip((cover - rng.uniform(0.0, 1.5)) * rng.uniform(0.5, 1.5), 0.0, 1.0).astype(np.float32)
    low = _drift_frames(low, wind_low, size)
    texture = _drift_frames(_smooth(rng, n, max(4, size // 6)), wind_low, size)
    sky.layer(
        low,
        sky.b14 - rng.uniform(4.0, 25.0) + 1.5 * texture,
        rng.uniform(-2.5, -0.8),
        rng.uniform(0.5, 2.0),
        0.3,
    )


def _upper_ice(rng: np.random.Generator, sky: _Sky, size: int, cells: int, wind_up: np.ndarray) -> None:
    """Upper ice cloud: thick cold tops where it is opaque, cirrus where it is thin.

    Thin ice shows the split-window signature most at intermediate opacity, hence the e(1 − e) terms.
    """
    n = size + 2 * _MARGIN
    cover = _smooth(rng, n, cells) + 0.6 * _smooth(rng, n, cells * 4) + 0.3 * _smooth(rng, n, cells * 10)
    ice = np.clip((cover - rng.uniform(0.0, 1.8)) * rng.uniform(0.3, 1.2), 0.0, 1.0).astype(np.float32)
    ice = _drift_frames(ice, wind_up, size)
    top = rng.uniform(205.0, 245.0) + 2.0 * _drift_frames(_smooth(rng, n, cells * 2), wind_up, size)
    thin = 4.0 * ice * (1.0 - ice)
    sky.layer(ice, top, rng.uniform(-1.2, -0.3), rng.uniform(-3.0, 0.5), 0.2)
    sky.btd = sky.btd - thin * rng.uniform(0.5, 2.0)
    sky.g = sky.g - thin * rng.uniform(0.5, 2.0)


def _add_contrails(sky: _Sky, contrails: list[_Contrail], size: int) -> None:
    """Add the contrails' thin ice to the scene.

    Its emissivity pulls band 14 towards its cold top, the split window further negative and
    band 14 − band 11 down.
    """
    opacity, top_w, btd_w, g_w = _ice_frames(contrails, size)
    covered = opacity > 0
    opacity = np.minimum(opacity, 0.95)
    top = np.where(covered, top_w / np.maximum(opacity, 1e-6), 0.0)
    sky.b14 = sky.b14 + opacity * (np.where(covered, top, sky.b14) - sky.b14)
    sky.btd = sky.btd - btd_w
    sky.g = sky.g - g_w
    sky.c13 = sky.c13 + 0.3 * opacity


def _band_files(rng: np.random.Generator, sky: _Sky, vapour: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """Every band's file, {file name: float32 (H, W, T)}, with sensor noise.

    The water-vapour bands (8–10) and bands 12 and 16 follow band 14 and the vapour.
    """
    b14 = sky.b14
    b11 = b14 - sky.g
    b13 = b14 + sky.c13
    b12 = 0.55 * b14 + 104.0 + 1.5 * vapour
    b16 = 0.72 * b14 + 48.0 - 2.0 * vapour
    water_vapour = {
        8: 233.0 + 0.08 * (b14 - 285.0) - 7.0 * vapour,
        9: 242.0 + 0.18 * (b14 - 285.0) - 6.0 * vapour,
        10: 251.0 + 0.30 * (b14 - 285.0) - 5.0 * vapour,
    }
    bands = {**water_vapour, 11: b11, 12: b12, 13: b13, 14: b14, 15: b14 + sky.btd, 16: b16}
    noise = rng.standard_normal((len(BANDS), size, size, N_FRAMES), dtype=np.float32)
    out: dict[str, np.ndarray] = {}
    for k, band in enumerate(BANDS):
        sigma = 0.15 if band <= 10 else 0.1
        out[band_file(band)] = np.ascontiguousarray(bands[band] + sigma * noise[k], dtype=np.float32)
    return out


def make_record(
    rng: np.random.Generator,
    size: int = DEFAULT_SIZE,
    split: str = "train",
    width_scale: float = 1.0,
    opacity_scale: float = 1.0,
) -> dict[str, np.ndarray]:
    """One record's files as arrays, {file name: array}, with the dtypes and shapes of the competition.

    Brightness temperatures are built as the ash RGB sees them: band 14 (11.2 µm), the split-window
    difference band 15 − band 14 (12.3 − 11.2 µm, the red) and band 14 − band 11 (11.2 − 8.4 µm, the green).
    Clear sky: a sea or land surface seen through water vapour, which makes the split window negative
    (−1 to −4.5 K, more in moist air) and band 11 colder; land also lowers the 8.4 µm emissivity. Over it
    drift low water clouds, semi-transparent cirrus and thick cold cloud, and contrails: thin ice whose
    emissivity pulls band 14 towards its cold top, the split window further negative and band 14 − band 11
    down. Only shape, that signature and its history over the 8 frames together identify a contrail.
    """
    if split not in _SPLIT_INDEX:
        raise DataError(f"unknown split '{split}': expected one of {', '.join(SPLITS)}.")
    cells = max(2, size // 40)
    wind_up, wind_low = _wind(rng, 0.8, _MAX_WIND), _wind(rng, 0.3, 2.0)
    sky, vapour = _clear_sky(rng, size, cells, wind_low)
    if rng.random() < 0.5:
        _low_cloud(rng, sky, size, cells, wind_low)
    if rng.random() < 0.7:
        _upper_ice(rng, sky, size, cells, wind_up)
    labelled, others = _contrails(rng, size, wind_up, width_scale, opacity_scale)
    _add_contrails(sky, labelled + others, size)
    out = _band_files(rng, sky, vapour, size)
    if split != "test":
        individual = _annotators(rng, labelled, others, size)
        votes = individual.sum(axis=-1, dtype=np.int32)
        # "More than half of the annotators", exactly as the competition defines the pixel mask.
        out[PIXEL_MASK_FILE] = (2 * votes > individual.shape[-1]).astype(np.int32)[:, :, None]
        if split == "train":
            out[INDIVIDUAL_MASKS_FILE] = individual.astype(np.int32)[:, :, None, :]
    return out


# --------------------------------------------------------------------------- writing


def expected_files(split: str) -> tuple[str, ...]:
    """The files every record of `split` holds in the competition layout."""
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
    record_dir: str | os.PathLike,
    rng: np.random.Generator,
    *,
    size: int = DEFAULT_SIZE,
    split: str = "train",
    width_scale: float = 1.0,
    opacity_scale: float = 1.0,
) -> RecordStats:
    """Generate one record into `record_dir` (its name is the record id), all files or none.

    The files go into a hidden sibling `.<record_id>.tmp` that is renamed into place only once complete,
    so an interrupted run never leaves a record that looks whole; an existing `record_dir` is replaced.
    """
    record_dir = Path(record_dir)
    files = make_record(rng, size=size, split=split, width_scale=width_scale, opacity_scale=opacity_scale)
    save_record(record_dir, files)
    return _stats(record_dir.name, split, files)


def save_record(record_dir: Path, files: dict[str, np.ndarray]) -> None:
    """Write a record's files into `record_dir` all or none, through a hidden `.<record_id>.tmp` sibling."""
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
    return ", ".join(
        f"{k}={params.get(k, 1.0 if k.endswith('_scale') else None)}"
        for k in ("generator", "version", "seed", "size", "width_scale", "opacity_scale")
    )


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
    width_scale: float = 1.0,
    opacity_scale: float = 1.0,
) -> SynthSummary:
    """Write a synthetic contrail dataset in the competition layout under `out`.

    Deterministic: the same seed and size give byte-identical files, and record i of a split is the
    same whatever the counts. Re-running into the same `out` skips records already complete, so an
    interrupted run resumes; a dataset made with other parameters is refused unless `overwrite`.
    `width_scale` widens every contrail (1: the real 1–3 px) and `opacity_scale` makes its ice thicker
    (1: as measured on real records); the demo uses 3 and 3 at 64² (docs/data.md).
    """
    _check_counts(records, val_records, test_records, size, seed)
    _check_scales(width_scale, opacity_scale)
    out = Path(out)
    params = {"generator": GENERATOR, "version": GENERATOR_VERSION, "seed": int(seed), "size": int(size)}
    if width_scale != 1.0:
        params["width_scale"] = float(width_scale)
    if opacity_scale != 1.0:
        params["opacity_scale"] = float(opacity_scale)
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
                    st = write_record(
                        record_dir,
                        record_rng(seed, split, i),
                        size=size,
                        split=split,
                        width_scale=width_scale,
                        opacity_scale=opacity_scale,
                    )
                    written += 1
                else:
                    skipped += 1
                stats[split].append(st)
                bar.advance(task)

    _write_split_files(out, seed, ids)
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


def _check_scales(width_scale: float, opacity_scale: float) -> None:
    if not MIN_WIDTH_SCALE <= width_scale <= MAX_WIDTH_SCALE:
        raise DataError(
            f"--width-scale is {width_scale:g}: give a factor between {MIN_WIDTH_SCALE:g} and {MAX_WIDTH_SCALE:g} "
            "(1 draws contrails at their real 1–3 px)."
        )
    if not MIN_OPACITY_SCALE <= opacity_scale <= MAX_OPACITY_SCALE:
        raise DataError(
            f"--opacity-scale is {opacity_scale:g}: give a factor between {MIN_OPACITY_SCALE:g} and "
            f"{MAX_OPACITY_SCALE:g} (1 draws contrails as faint as real ones)."
        )


def _write_split_files(out: Path, seed: int, ids: dict[str, list[str]]) -> None:
    """Each labelled split's metadata file and the test split's sample submission (every record empty)."""
    for split, name in METADATA_FILES.items():
        atomic_write_json(
            out / name, [record_metadata(seed, split, i, rid) for i, rid in enumerate(ids[split])]
        )
    atomic_write_text(
        out / SAMPLE_SUBMISSION_FILE,
        "record_id,encoded_pixels\n" + "".join(f"{rid},-\n" for rid in ids["test"]),
    )


def injection_backgrounds(root: str | os.PathLike) -> set[str]:
    """The real record ids an injected dataset at `root` was built on; empty for any other dataset."""
    marker = Path(root) / PARAMS_FILE
    try:
        params = json.loads(marker.read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(params, dict) or params.get("generator") != "inject":
        return set()
    return {rid for ids in params.get("backgrounds", {}).values() for rid in ids}

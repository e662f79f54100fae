"""`scene predict`: a contrail probability map over an ABI scene, tile by tile, streamed and stitched.

The scene is read in strips of tile rows, so memory holds the map and one strip of inputs, never the
whole stack of bands; tiles overlap and are blended with linear ramps so that no seam shows.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from segladder.errors import DataError
from segladder.inference.inputs import InputSpec
from segladder.inference.segmenters import Ensemble
from segladder.scene.abi import read_bt
from segladder.scene.grid import SceneGrid
from segladder.scene.sources import FrameStack, labelled_position

# Large tiles: at 32 px of overlap a 256² tile would spend 31 % of its work twice; 768² tiles, evened out,
# compute 1.10× a CONUS scene's pixels and 1.09× a full disk's.
DEFAULT_TILE = 768
DEFAULT_OVERLAP = 32
STRIDE_MULTIPLE = 32  # encoders downsample 32×: a tile side must be a multiple of it
FILL_K = 250.0  # stands in for pixels with no data (off the disk) inside a tile; their output is NaN anyway


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """'LON0,LAT0,LON1,LAT1' → floats, checked to be a box in degrees."""
    try:
        lon0, lat0, lon1, lat1 = (float(v) for v in text.split(","))
    except ValueError:
        raise DataError(
            f"--bbox {text!r}: give LON0,LAT0,LON1,LAT1 in degrees, e.g. -100,30,-90,40."
        ) from None
    if not (-180 <= lon0 < lon1 <= 180 and -90 <= lat0 < lat1 <= 90):
        raise DataError(
            f"--bbox {text}: give west < east longitudes in [-180, 180] and south < north latitudes in [-90, 90]."
        )
    return lon0, lat0, lon1, lat1


def bbox_points(bbox: tuple[float, float, float, float], n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Points along the box's edges and across its inside (lon, lat), enough to bound it on any projection."""
    lon0, lat0, lon1, lat1 = bbox
    lon, lat = np.meshgrid(np.linspace(lon0, lon1, n), np.linspace(lat0, lat1, n))
    return lon.ravel(), lat.ravel()


def bbox_window(
    grid: SceneGrid, bbox: tuple[float, float, float, float], where: str, margin: int = 0
) -> tuple[int, int, int, int]:
    """Rows r0:r1 and columns c0:c1 of `grid` covering the box and `margin` pixels around it.

    A DataError when the grid cannot see the box.
    """
    rows, cols = grid.rowcol_of(*bbox_points(bbox))
    ok = np.isfinite(rows) & np.isfinite(cols)
    text = ",".join(f"{v:g}" for v in bbox)
    if not ok.any():
        raise DataError(
            f"--bbox {text} lies off the Earth's disk seen from {where}; give a box this satellite sees "
            "(`segladder scene inspect` prints the file's corners)."
        )
    ny, nx = grid.shape
    r0, r1 = max(0, math.floor(rows[ok].min()) - margin), min(ny, math.ceil(rows[ok].max()) + 1 + margin)
    c0, c1 = max(0, math.floor(cols[ok].min()) - margin), min(nx, math.ceil(cols[ok].max()) + 1 + margin)
    if r0 >= r1 or c0 >= c1:
        raise DataError(
            f"--bbox {text} lies outside {where}'s coverage; give a box inside it (`segladder scene inspect` "
            "prints its corners), or files of a larger sector (full disk)."
        )
    return r0, r1, c0, c1


class NativeReader:
    """Rows of a frame stack's bands on the ABI fixed grid, inside a window, read from the files on demand.

    Args:
        stack: the files of each frame.
        window: rows r0:r1 and columns c0:c1 of the fixed grid.
    """

    def __init__(self, stack: FrameStack, window: tuple[int, int, int, int]):
        self.stack, self.window = stack, window
        r0, r1, c0, c1 = window
        self.grid = next(iter(stack.labelled.values())).grid.window(r0, r1, c0, c1)

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx) of the window."""
        return self.grid.shape

    def rows(self, frame: int, band: int, r0: int, r1: int) -> np.ndarray:
        """Brightness temperature of `band` in frame position `frame`, rows r0:r1 of the window, all columns."""
        w0, _, c0, c1 = self.window
        return read_bt(self.stack.files[frame][band], band, (w0 + r0, w0 + r1, c0, c1))


class ArrayReader:
    """Rows of bands already in memory (a local grid's resampled arrays).

    Args:
        grid: the arrays' grid.
        arrays: {(frame position, band): (ny, nx) K}.
    """

    def __init__(self, grid: SceneGrid, arrays: dict[tuple[int, int], np.ndarray]):
        self.grid, self.arrays = grid, arrays

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx) of the arrays."""
        return self.grid.shape

    def rows(self, frame: int, band: int, r0: int, r1: int) -> np.ndarray:
        """Rows r0:r1 of `band` in frame position `frame`."""
        return self.arrays[(frame, band)][r0:r1]


def tile_side(n: int, tile: int, overlap: int = 0) -> int:
    """The tile side along a dimension of `n` pixels: as few tiles as `tile` allows, evened out.

    Tiles of the full `tile` would leave the last one mostly over its neighbour (1500 rows in 512² tiles
    compute 2048); evening them out (4 tiles of 416) computes 1664. Sides are multiples of 32.
    """
    if n <= tile:
        return math.ceil(n / STRIDE_MULTIPLE) * STRIDE_MULTIPLE if n < tile else tile
    count = math.ceil((n - overlap) / (tile - overlap))
    side = math.ceil((n + (count - 1) * overlap) / count / STRIDE_MULTIPLE) * STRIDE_MULTIPLE
    return min(tile, side)


def tile_starts(n: int, size: int, overlap: int) -> list[int]:
    """Tile starts along a dimension: every `size − overlap`, the last one flush with the end."""
    if n <= size:
        return [0]
    stride = size - overlap
    starts = list(range(0, n - size, stride))
    return starts + [n - size]


def ramp(size: int, overlap: int, first: bool, last: bool) -> np.ndarray:
    """1-D blend weight of a tile: linear ramps over `overlap` pixels on sides shared with another tile."""
    w = np.ones(size, np.float32)
    if overlap > 0:
        up = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        if not first:
            w[:overlap] = np.minimum(w[:overlap], up)
        if not last:
            w[size - overlap :] = np.minimum(w[size - overlap :], up[::-1])
    return w


@dataclass
class _Tile:
    r: int
    c: int
    images: dict  # {InputSpec: (C, T, th, tw)}
    h: int  # rows of it inside the scene
    w: int


def _fill_missing(x: np.ndarray) -> np.ndarray:
    """NaN pixels (no data) take the finite mean, so a tile at the limb is not poisoned by NaN."""
    bad = ~np.isfinite(x)
    if bad.any():
        good = x[~bad]
        x = np.where(bad, good.mean() if good.size else FILL_K, x).astype(np.float32)
    return x


def stack_layout(ensemble: Ensemble) -> tuple[list[int], list[int]]:
    """The frame indices and bands the ensemble's members read, together (sorted)."""
    frames = sorted({f for spec in ensemble.specs for f in spec.frames})
    bands = sorted({b for spec in ensemble.specs for b in _bands_of(spec)})
    return frames, bands


def predict_probability(
    ensemble: Ensemble,
    reader,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 4,
    advance: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The contrail probability (ny, nx) float32 of `reader`'s scene; NaN where the labelled frame has no data.

    `reader.rows(position, band, r0, r1)` gives band rows of the frame at `position` in `stack_layout`'s
    frames. Each member gets its own frames and channels, encoded as records are (`InputSpec.encode`).
    """
    ny, nx = reader.shape
    th, tw = _tile_shape(ny, nx, tile, overlap)
    overlap = _overlap(th, tw, overlap)
    frames, bands = stack_layout(ensemble)
    labelled = labelled_position(frames)
    picks = {spec: [frames.index(f) for f in spec.frames] for spec in ensemble.specs}
    total = np.zeros((ny, nx), np.float32)
    weight = np.zeros((ny, nx), np.float32)
    valid = np.ones((ny, nx), bool)
    pending: list[_Tile] = []

    def flush() -> None:
        if not pending:
            return
        images = {s: torch.from_numpy(np.stack([t.images[s] for t in pending])) for s in ensemble.specs}
        probs = ensemble.probs(images).numpy()[:, 0]
        for t, p in zip(pending, probs, strict=True):
            wr = ramp(th, overlap, t.r == 0, t.r + th >= ny)[: t.h]
            wc = ramp(tw, overlap, t.c == 0, t.c + tw >= nx)[: t.w]
            w2 = wr[:, None] * wc[None, :]
            total[t.r : t.r + t.h, t.c : t.c + t.w] += p[: t.h, : t.w] * w2
            weight[t.r : t.r + t.h, t.c : t.c + t.w] += w2
        if advance is not None:
            advance(len(pending))
        pending.clear()

    def read_strip(r: int) -> dict[int, np.ndarray]:
        h = min(th, ny - r)
        return {b: np.stack([reader.rows(i, b, r, r + h) for i in range(len(frames))]) for b in bands}

    def cut_tiles(strip: dict[int, np.ndarray], r: int) -> None:
        h = min(th, ny - r)
        valid[r : r + h] &= np.all([np.isfinite(strip[b][labelled]) for b in bands], axis=0)
        for c in tile_starts(nx, tw, overlap):
            w = min(tw, nx - c)
            cut = {}
            for b in bands:
                t = np.stack([_fill_missing(strip[b][i][:, c : c + w]) for i in range(len(frames))])
                if (h, w) != (th, tw):  # a scene smaller than a tile: pad by repeating its edge
                    t = np.pad(t, ((0, 0), (0, th - h), (0, tw - w)), mode="edge")
                cut[b] = t
            images = {
                spec: spec.encode({b: cut[b][picks[spec]] for b in _bands_of(spec)})
                for spec in ensemble.specs
            }
            pending.append(_Tile(r, c, images, h, w))
            if len(pending) >= batch_size:
                flush()

    starts = tile_starts(ny, th, overlap)
    # The next strip is read (decompressed, converted) while the model runs on this one: on a GPU the
    # reading would otherwise leave the device idle between strips.
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(read_strip, starts[0])
        for k, r in enumerate(starts):
            strip = ahead.result()
            if k + 1 < len(starts):
                ahead = pool.submit(read_strip, starts[k + 1])
            cut_tiles(strip, r)
    flush()
    with np.errstate(invalid="ignore", divide="ignore"):
        prob = total / weight
    prob[~valid] = np.nan
    return prob


def _tile_shape(ny: int, nx: int, tile: int, overlap: int) -> tuple[int, int]:
    th, tw = tile_side(ny, tile, overlap), tile_side(nx, tile, overlap)
    return th, tw


def _overlap(th: int, tw: int, overlap: int) -> int:
    """The overlap actually used: at most a quarter of the smaller tile side, so ramps never meet."""
    return max(0, min(overlap, min(th, tw) // 4))


def count_tiles(shape: tuple[int, int], tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP) -> int:
    """How many tiles `predict_probability` runs over a scene of `shape`."""
    ny, nx = shape
    th, tw = _tile_shape(ny, nx, tile, overlap)
    overlap = _overlap(th, tw, overlap)
    return len(tile_starts(ny, th, overlap)) * len(tile_starts(nx, tw, overlap))


def _bands_of(spec: InputSpec) -> tuple[int, ...]:
    from segladder.data.contrails import bands_needed

    return bands_needed(spec.channels)


def sha256_of(path: str | Path) -> str:
    """The file's SHA-256, hex: which checkpoint made a map."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def time_folder(time: datetime) -> str:
    """One output folder per time: 20230713T1800Z."""
    return time.strftime("%Y%m%dT%H%MZ")

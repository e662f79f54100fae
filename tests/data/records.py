"""Writing hand-made raw records, for tests that need exact band values."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segladder.data.layout import BANDS, INDIVIDUAL_MASKS_FILE, PIXEL_MASK_FILE, band_file


def write_record(
    path: Path,
    size: int = 16,
    *,
    bands: dict[int, np.ndarray] | None = None,
    mask: np.ndarray | None = None,
    individual: np.ndarray | None = None,
    seed: int = 0,
) -> Path:
    """A record with smooth random temperatures (or the given (H, W, 8) bands) and optional masks."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    bands = dict(bands or {})
    for b in BANDS:
        arr = bands.get(b)
        if arr is None:
            arr = (260 + 20 * rng.random((size, size, 8))).astype(np.float32)
        np.save(path / band_file(b), arr.astype(np.float32))
    if mask is not None:
        np.save(path / PIXEL_MASK_FILE, mask.astype(np.int32).reshape(*mask.shape[:2], 1))
    if individual is not None:
        np.save(path / INDIVIDUAL_MASKS_FILE, individual.astype(np.int32))
    return path

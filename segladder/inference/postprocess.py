"""Turning probability maps into masks: the threshold (fixed, stored or a percentile of all pixels) and small-component removal."""

from __future__ import annotations

import math

import cv2
import numpy as np

from segladder.errors import SegladderError

_BINS = 1 << 16  # one bin per float16 bit pattern
_VALUES = np.arange(_BINS, dtype=np.uint16).view(np.float16).astype(np.float32)  # NaN patterns compare False


class ThresholdError(SegladderError):
    """A threshold or percentile is out of range, or asked for in two ways at once."""


class Float16Histogram:
    """Exact counts of float16 probabilities, bin = bit pattern: a percentile of any pixel count in 512 KiB.

    For non-negative float16 values the bit patterns sort like the values, which makes the
    cumulative count over bins the cumulative distribution of the probabilities.
    """

    def __init__(self) -> None:
        self.counts = np.zeros(_BINS, np.int64)

    def update(self, probs: np.ndarray) -> None:
        """Count the values of a float16 array."""
        p = np.asarray(probs)
        if p.dtype != np.float16:
            raise TypeError(f"Float16Histogram counts float16 arrays, got {p.dtype}")
        self.counts += np.bincount(p.view(np.uint16).ravel(), minlength=_BINS)

    @property
    def total(self) -> int:
        """The number of values counted."""
        return int(self.counts.sum())

    def count_above(self, threshold: float) -> int:
        """Pixels with value > threshold, as `binarize` would mark them."""
        return int(self.counts[_VALUES > np.float32(threshold)].sum())

    def percentile(self, q: float) -> float:
        """The smallest value v with at least q % of the pixels ≤ v; pixels `> v` are then ≤ (100 − q) %."""
        if not 0 <= q <= 100:
            raise ThresholdError(f"percentile must lie in [0, 100], got {q}")
        if self.total == 0:
            raise ThresholdError("no probabilities were counted, so there is no percentile to take")
        negative = self.counts[0x8000:].sum() - self.counts[0x8000]  # -0.0 is harmless
        if negative:
            raise ThresholdError(
                f"{negative} counted values are negative or NaN; probabilities must lie in [0, 1]"
            )
        need = math.ceil(q / 100 * self.total)
        idx = int(np.searchsorted(np.cumsum(self.counts[:0x8000]), need))
        return float(np.uint16(idx).view(np.float16))


def check_threshold_options(fixed: float | None, percentile: float | None) -> None:
    """Fail before any work when the threshold options cannot be satisfied."""
    if fixed is not None and percentile is not None:
        raise ThresholdError("give --threshold or --percentile, not both")
    if fixed is not None and not 0 <= fixed <= 1:
        raise ThresholdError(f"--threshold {fixed:g}: a probability threshold must lie in [0, 1]")
    if percentile is not None and not 0 <= percentile <= 100:
        raise ThresholdError(f"--percentile {percentile:g}: must lie in [0, 100] (e.g. 99.5)")


def resolve_threshold(
    stored: float,
    fixed: float | None = None,
    percentile: float | None = None,
    histogram: Float16Histogram | None = None,
    stored_source: str = "stored with the checkpoint(s)",
) -> tuple[float, str]:
    """(threshold, how it was chosen): `fixed`, else the `percentile` of `histogram`, else `stored`."""
    check_threshold_options(fixed, percentile)
    if fixed is not None:
        return float(fixed), "fixed"
    if percentile is not None:
        if histogram is None:
            raise ThresholdError("a percentile threshold needs the histogram of all probabilities")
        return histogram.percentile(percentile), f"percentile {percentile:g} of all pixels"
    return float(stored), stored_source


def binarize(probs: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 {0, 1} mask of `probs > threshold` (strict, as the metrics count positives)."""
    return (np.asarray(probs, np.float32) > np.float32(threshold)).astype(np.uint8)


def remove_small_components(mask: np.ndarray, min_size: int, connectivity: int = 8) -> np.ndarray:
    """`mask` (H, W) without the connected components of fewer than `min_size` pixels, as uint8 {0, 1}.

    8-connectivity by default: contrails are thin diagonal lines, which 4-connectivity would break
    into single pixels and then delete.
    """
    m = (np.asarray(mask) != 0).astype(np.uint8)
    if min_size <= 1 or not m.any():
        return m
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=connectivity)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_size
    keep[0] = False  # label 0 is the background
    return keep[labels].astype(np.uint8)

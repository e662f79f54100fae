"""Data-loading benchmark: samples/s per core of the raw layout (with ash conversion) vs the cache."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from segladder.data.datasets import ContrailsDataset


def _rate(ds: ContrailsDataset, seconds: float) -> tuple[float, int]:
    for i in range(min(len(ds), 8)):  # warm the page cache and the code paths
        ds[i]
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or n < len(ds):
        ds[n % len(ds)]
        n += 1
    return n / elapsed, n


def bench_data_loading(
    root: str | Path, cache: str | Path, frames: Sequence[int], split: str = "train", seconds: float = 3.0
) -> dict:
    """Time `ContrailsDataset.__getitem__` on one core for both sources; returns samples/s and the ratio."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        raw = ContrailsDataset(root, split, frames=frames)
        cached = ContrailsDataset(cache, split, frames=frames)
        shape = tuple(cached[0]["image"].shape)
        raw_rate, raw_n = _rate(raw, seconds)
        cache_rate, cache_n = _rate(cached, seconds)
    finally:
        torch.set_num_threads(threads)
    return {
        "sample_shape": shape,
        "raw_samples_per_s": raw_rate,
        "cached_samples_per_s": cache_rate,
        "speedup": cache_rate / raw_rate,
        "raw_samples": raw_n,
        "cached_samples": cache_n,
    }

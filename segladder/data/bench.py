"""Data-loading benchmark: samples/s per core of each data path, beside a plain memcpy of the same bytes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import RandomSampler, default_collate

from segladder.data.cache import ContrailsCache
from segladder.data.datasets import ContrailsDataset
from segladder.data.handover import SlotCollate, describe_handover
from segladder.errors import CacheError

# The targets of the data-path issue, printed beside the figures.
TARGET_SPEEDUP = 30.0
TARGET_UINT8_PER_CORE = 5000.0
TARGET_LOADER_VS_MEMCPY = 0.5


def _timed(step: Callable[[int], int], seconds: float, min_samples: int) -> tuple[float, int]:
    """Samples/s of calling `step(k)` (which returns how many samples it made) for at least `seconds`."""
    step(0)  # warm the page cache and the code paths
    n, k, start = 0, 1, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or n < min_samples:
        n += step(k)
        k += 1
    return n / elapsed, n


def _batch_steps(ds: ContrailsDataset, batch_size: int, seed: int = 0) -> Callable[[int], int]:
    """Batch k of a shuffled pass: `ds[i]` for each index and the collation into one batch (one copy)."""
    order = np.random.default_rng(seed).permutation(len(ds))
    per_pass = max(len(ds) // batch_size, 1)

    def step(k: int) -> int:
        start = (k % per_pass) * batch_size
        idx = order[start : start + batch_size]
        default_collate([ds[int(i)] for i in idx])
        return len(idx)

    return step


def _memcpy_steps(ds: ContrailsDataset, batch_size: int) -> tuple[Callable[[int], int], int]:
    """Copying each sample's stored bytes from the memory map into a batch buffer: the machine's limit."""
    split = ds._split
    arrays = [split.arrays[name] for name in ("images", "masks", "soft") if name in split.arrays]
    rows = split.rows
    buffers = [np.empty((batch_size, *a.shape[1:]), a.dtype) for a in arrays]
    order = np.random.default_rng(0).permutation(len(rows))

    def step(k: int) -> int:
        idx = [(k * batch_size + j) % len(rows) for j in range(batch_size)]
        for j, i in enumerate(idx):
            row = int(rows[order[i]])
            for a, buf in zip(arrays, buffers, strict=True):
                np.copyto(buf[j], a[row])
        return batch_size

    return step, sum(int(np.prod(a.shape[1:])) * a.itemsize for a in arrays)


def _loader_rate(
    ds: ContrailsDataset, batch_size: int, workers: int, seconds: float, slot_handover: bool = True
) -> tuple[float, int, bool, str]:
    """The DataLoader as training builds it (`make_loader`: workers, slot hand-over, pinned on a GPU).

    Start-up is excluded. Returns samples/s, samples, whether batches were pinned, and the hand-over used
    (with the share of the timed batches that came through slots).

    The sampler draws with replacement so that the timed window is one long epoch, as on a real-size
    dataset (thousands of batches an epoch): a few dozen records would otherwise restart the epoch every
    other batch, and each restart drains the workers' queue and times their latency, not their throughput.
    """
    from segladder.data.module import make_loader

    sampler = RandomSampler(
        ds, replacement=True, num_samples=1 << 40, generator=torch.Generator().manual_seed(0)
    )
    loader = make_loader(
        ds, batch_size=batch_size, num_workers=workers, sampler=sampler, slot_handover=slot_handover
    )
    slots = loader.collate_fn if isinstance(loader.collate_fn, SlotCollate) else None
    it = iter(loader)
    next(it)  # workers started and the first batches queued
    n, batches, start = 0, 0, time.perf_counter()
    slotted = slots.handed_over if slots else 0
    while (elapsed := time.perf_counter() - start) < seconds or n < len(ds):
        n += next(it)["image"].shape[0]
        batches += 1
    handover = describe_handover(loader)
    if slots is not None:
        # Counted at the workers, so batches queued ahead of the window count too: about, not exactly.
        share = min((slots.handed_over - slotted) / batches, 1.0)
        handover += f"; {share:.0%} of the timed batches came through slots"
    del it
    return n / elapsed, n, loader.pin_memory, handover


def synthetic_cache(tmp: Path, records: int, size: int, frames: int) -> Path:
    """Prepare `records` synthetic training records in `tmp` as a cache of their last `frames` at `size`.

    It is what `bench train` times the real data path on when it is given no cache.
    """
    from segladder.data.cache import CacheOptions, prepare_cache
    from segladder.data.synth import generate_contrails

    generate_contrails(tmp / "raw", records=records, val_records=0, test_records=0, size=size, seed=0)
    prepare_cache(
        tmp / "raw",
        tmp / "cache",
        CacheOptions(frames=tuple(range(5 - frames, 5)), image_size=size),
        ["train"],
    )
    return tmp / "cache"


def drawing_train_loader(data_cfg, seed: int, batch_size: int, samples: int, workers: int):
    """The training loader `data_cfg` builds, drawing `samples` samples with replacement; and its dtype.

    It draws as `bench data` does: the timed window is one long epoch over a small cache. The flag says
    whether its datasets hand uint8 values to the device (rot90 and cutout over ash run on the stored uint8
    values).
    """
    from segladder.data.module import ContrailsDataModule, contrails_datasets, make_loader

    dm = ContrailsDataModule(data_cfg, seed)
    dm.build_train()
    sampler = RandomSampler(
        dm.train_set, replacement=True, num_samples=samples, generator=torch.Generator().manual_seed(0)
    )
    loader = make_loader(
        dm.train_set, batch_size=batch_size, num_workers=workers, sampler=sampler, drop_last=True
    )
    uint8 = all(ds.emits_uint8 for ds in contrails_datasets(dm.train_set.base))
    return loader, uint8


def bench_data_loading(
    root: str | Path,
    cache: str | Path,
    frames: Sequence[int],
    split: str = "train",
    seconds: float = 3.0,
    batch_size: int = 32,
    workers: int = 2,
) -> dict:
    """Time each data path in batches of `batch_size` (one core, torch threads 1; the loader on `workers`).

    Paths: (a) raw layout + ash conversion, (b) the cache decoded to float32 on the CPU (inference's path),
    (c) the cache's uint8 bytes (training's path: decoded later on the device), (d) the full DataLoader
    over (c) with workers, slot hand-over and pinning (and, for reference, with PyTorch's hand-over and
    with 0 workers). Each is compared with a plain copy of the same stored bytes.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        size = ContrailsCache(cache).options.image_size
        raw = ContrailsDataset(root, split, frames=frames, image_size=size)
        cached_float = ContrailsDataset(cache, split, frames=frames, image_size=size, output_dtype="float32")
        cached_uint8 = ContrailsDataset(cache, split, frames=frames, image_size=size, output_dtype="uint8")
        if not cached_uint8.emits_uint8:
            raise CacheError(
                f"{cache} is not a uint8 cache; prepare one with --dtype uint8 to measure the uint8 path."
            )
        shape = tuple(cached_uint8[0]["image"].shape)
        memcpy_step, sample_bytes = _memcpy_steps(cached_uint8, batch_size)
        n_min = len(cached_uint8)
        memcpy = _timed(memcpy_step, seconds, n_min)
        rates = {
            "raw": _timed(_batch_steps(raw, batch_size), seconds, n_min),
            "cached_float": _timed(_batch_steps(cached_float, batch_size), seconds, n_min),
            "cached_uint8": _timed(_batch_steps(cached_uint8, batch_size), seconds, n_min),
        }
        loader_rate, loader_n, pinned, handover = _loader_rate(cached_uint8, batch_size, workers, seconds)
        # For reference: the same workers with PyTorch's own hand-over (a fresh shared-memory segment a
        # batch), and the same loader in the main process (no hand-over at all).
        default_rate, default_n, _, _ = _loader_rate(
            cached_uint8, batch_size, workers, seconds, slot_handover=False
        )
        inproc_rate, inproc_n, _, _ = _loader_rate(cached_uint8, batch_size, 0, seconds)
    finally:
        torch.set_num_threads(threads)
    per_core = {name: rate for name, (rate, _) in rates.items()}
    per_core["loader"] = loader_rate / max(workers, 1)
    per_core["loader_default_handover"] = default_rate / max(workers, 1)
    per_core["loader_in_process"] = inproc_rate
    return {
        "sample_shape": shape,
        "sample_bytes": sample_bytes,
        "batch_size": batch_size,
        "workers": workers,
        "cpu_count": os.cpu_count(),
        "pinned": pinned,
        "handover": handover,
        "memcpy_samples_per_s": memcpy[0],
        "memcpy_gb_per_s": memcpy[0] * sample_bytes / 1e9,
        "samples_per_s_per_core": per_core,
        "samples": {
            **{name: n for name, (_, n) in rates.items()},
            "loader": loader_n,
            "loader_default_handover": default_n,
            "loader_in_process": inproc_n,
            "memcpy": memcpy[1],
        },
        "loader_samples_per_s": loader_rate,
        "vs_memcpy": {name: rate / memcpy[0] for name, rate in per_core.items()},
        "speedup": per_core["cached_uint8"] / per_core["raw"],
        "speedup_float": per_core["cached_float"] / per_core["raw"],
    }


def format_report(r: dict) -> list[str]:
    """The lines `segladder bench data` prints."""
    pc, vs, n = r["samples_per_s_per_core"], r["vs_memcpy"], r["samples"]
    total = r["loader_samples_per_s"] / r["memcpy_samples_per_s"]
    lines = [
        f"sample image shape (C, T, H, W): {r['sample_shape']}, {r['sample_bytes']:,} stored bytes a sample, "
        f"batches of {r['batch_size']}, torch threads 1, {r['cpu_count']} CPUs",
        f"memcpy of the stored bytes : {r['memcpy_samples_per_s']:9.1f} samples/s ({r['memcpy_gb_per_s']:.2f} GB/s, "
        f"{n['memcpy']} samples)  = the limit",
        "path                               samples/s per core   × memcpy",
    ]
    names = {
        "raw": "(a) raw layout + ash",
        "cached_float": "(b) cached, float32 on the CPU",
        "cached_uint8": "(c) cached, uint8 to the device",
        "loader": f"(d) DataLoader, {r['workers']} workers, pin={'yes' if r['pinned'] else 'no (no GPU)'}",
        "loader_default_handover": "    the same, PyTorch's hand-over (per core)",
        "loader_in_process": "    the same loader, 0 workers (no hand-over)",
    }
    for key, label in names.items():
        lines.append(f"{label:<44}{pc[key]:9.1f}   {vs[key]:6.3f}   ({n[key]} samples)")
    lines += [
        f"loader total: {r['loader_samples_per_s']:.1f} samples/s ({total:.3f} × memcpy); "
        f"worker hand-over: {r['handover']}",
        f"speed-up over raw: uint8 {r['speedup']:.1f}×, float {r['speedup_float']:.1f}×",
        f"targets: uint8 ≥ {TARGET_SPEEDUP:.0f}× raw {'✓' if r['speedup'] >= TARGET_SPEEDUP else '✗'}, "
        f"uint8 ≥ {TARGET_UINT8_PER_CORE:,.0f} samples/s per core {'✓' if pc['cached_uint8'] >= TARGET_UINT8_PER_CORE else '✗'}, "
        f"loader total ≥ memcpy/2 {'✓' if total >= TARGET_LOADER_VS_MEMCPY else '✗'}, "
        f"loader per worker core ≥ memcpy/2 {'✓' if vs['loader'] >= TARGET_LOADER_VS_MEMCPY else '✗'}",
    ]
    if r["workers"] > 1 and vs["loader"] < TARGET_LOADER_VS_MEMCPY <= total:
        # Every batch is copied once more in the main process (out of its slot; on a GPU, into pinned
        # memory), so the whole loader moves at most one core's memcpy, shared by the workers.
        lines.append(
            f"  (per worker core is capped at memcpy/{r['workers']}: the main process copies every batch "
            "once, on one core)"
        )
    return lines

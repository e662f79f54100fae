"""The uint8 data path: stored bytes to the device, decoded there to exactly what the float path gives."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from segladder.config import AugmentConfig
from segladder.data.cache import CacheOptions, prepare_cache
from segladder.data.datasets import ContrailsDataset, decode_batch, decode_images
from segladder.errors import DataError


@pytest.fixture(scope="module")
def caches(synth_root, tmp_path_factory):
    """A uint8 cache with ash and band differences (standardised), and a float16 one."""
    out = {}
    for dtype in ("uint8", "float16"):
        path = tmp_path_factory.mktemp(f"cache-{dtype}") / "cache"
        prepare_cache(
            synth_root,
            path,
            CacheOptions(frames=(2, 3, 4), channels=("ash", "diffs"), image_size=32, dtype=dtype),
            ["train", "validation"],
            workers=1,
            progress=False,
        )
        out[dtype] = path
    return out


def _pair(cache, split="train", **kw):
    return (
        ContrailsDataset(cache, split, output_dtype="float32", **kw),
        ContrailsDataset(cache, split, output_dtype="uint8", **kw),
    )


def _batches(ds, n=4, seed=None):
    items = []
    for i in range(n):
        if seed is not None:
            ds.aug.set_random_seed(seed + i)
        items.append(ds[i])
    return torch.utils.data.default_collate(items)


@pytest.mark.parametrize(
    "kw",
    [
        {"frames": [2, 3, 4], "channels": ("ash", "diffs")},  # whole cache, mixed affine
        {"frames": [4, 2], "channels": ("ash",)},  # a subset, reordered: uniform scale
        {"frames": [3, 4], "channels": ("ash", "diffs"), "normalize_ash": True},
    ],
)
def test_uint8_batches_decode_to_the_float_path(caches, kw):
    fl, u8 = _pair(caches["uint8"], image_size=32, **kw)
    assert u8.emits_uint8 and not fl.emits_uint8
    item = u8[1]
    assert item["image"].dtype == torch.uint8 and item["mask"].dtype == torch.uint8
    assert item["image_scale"].shape == (len(u8.channels),) and item["soft"].dtype == torch.uint8
    ref, got = _batches(fl), decode_batch(_batches(u8))
    assert set(got) == set(ref)
    assert got["image"].dtype == torch.float32 and got["mask"].dtype == torch.float32
    torch.testing.assert_close(got["image"], ref["image"], atol=1e-6, rtol=0)
    torch.testing.assert_close(got["mask"], ref["mask"], atol=0, rtol=0)
    torch.testing.assert_close(got["soft"], ref["soft"], atol=0, rtol=0)
    assert got["record_id"] == ref["record_id"]


def test_flips_rot90_and_ash_cutout_run_on_uint8_with_the_same_draws(caches):
    aug = AugmentConfig(hflip_p=0.5, vflip_p=0.5, rot90_p=1.0, cutout_p=1.0, cutout_size=(0.2, 0.4))
    fl, u8 = _pair(
        caches["uint8"], image_size=32, frames=[3, 4], channels=("ash",), augment=aug, normalize_ash=True
    )
    assert u8.emits_uint8
    ref, got = _batches(fl, seed=5), decode_batch(_batches(u8, seed=5))
    plain = _batches(
        ContrailsDataset(caches["uint8"], "train", frames=[3, 4], image_size=32, normalize_ash=True)
    )
    assert not torch.equal(ref["image"], plain["image"])  # the draws did move pixels
    torch.testing.assert_close(got["image"], ref["image"], atol=1e-6, rtol=0)
    torch.testing.assert_close(got["mask"], ref["mask"], atol=0, rtol=0)
    torch.testing.assert_close(got["soft"], ref["soft"], atol=0, rtol=0)  # soft labels moved as uint8 too


@pytest.mark.parametrize("case", ["raw", "float16", "brightness", "cutout_on_diffs"])
def test_items_stay_float_where_uint8_would_change_the_numbers(synth_root, caches, case):
    kw = {"image_size": 32, "frames": [3, 4], "output_dtype": "uint8"}
    source = {"raw": synth_root, "float16": caches["float16"]}.get(case, caches["uint8"])
    if case == "brightness":
        kw["augment"] = AugmentConfig(brightness_p=1.0)
    if case == "cutout_on_diffs":
        kw.update(channels=("ash", "diffs"), augment=AugmentConfig(cutout_p=1.0))
    ds = ContrailsDataset(source, "train", **kw)
    assert not ds.emits_uint8
    item = ds[0]
    assert item["image"].dtype == torch.float32 and "image_scale" not in item
    assert decode_batch(torch.utils.data.default_collate([item]))["image"].dtype == torch.float32


def test_bad_output_dtype_is_one_clear_error(caches):
    with pytest.raises(DataError, match="output_dtype 'float16'"):
        ContrailsDataset(caches["uint8"], "train", frames=[4], image_size=32, output_dtype="float16")


def test_decode_writes_the_requested_memory_format_through_workers(caches):
    ds = ContrailsDataset(caches["uint8"], "train", frames=[4], image_size=32, output_dtype="uint8")
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=1)))
    assert batch["image"].dtype == torch.uint8 and batch["image_scale"].shape == (4, 3)
    flat = batch["image"][:, :, 0]  # a 4-D view, as a single-frame model sees it
    x = decode_images(flat, batch["image_scale"], batch["image_offset"], torch.channels_last)
    assert x.is_contiguous(memory_format=torch.channels_last)
    ref = flat.float() * batch["image_scale"][:, :, None, None] + batch["image_offset"][:, :, None, None]
    torch.testing.assert_close(x, ref, atol=1e-6, rtol=0)


@pytest.mark.gpu
def test_fused_decode_on_the_gpu_matches_the_cpu(caches):
    ds = ContrailsDataset(
        caches["uint8"],
        "train",
        frames=[2, 3, 4],
        channels=("ash", "diffs"),
        image_size=32,
        output_dtype="uint8",
        normalize_ash=True,
    )
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    cpu = decode_batch(batch)["image"]
    gpu = decode_batch({k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()})["image"]
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-6, rtol=0)
    assert np.isfinite(cpu.numpy()).all()


def test_bench_data_reports_every_path_beside_memcpy(synth_root, caches, tmp_path):
    from segladder.data.bench import bench_data_loading, format_report

    cache = tmp_path / "ash"
    prepare_cache(
        synth_root, cache, CacheOptions(frames=(3, 4), image_size=32), ["train"], workers=1, progress=False
    )
    r = bench_data_loading(synth_root, cache, [3, 4], seconds=0.05, batch_size=4, workers=1)
    assert r["sample_shape"] == (3, 2, 32, 32)
    assert r["sample_bytes"] == 3 * 2 * 32 * 32 + 2 * 32 * 32  # image, mask and soft rows as stored
    for name in (
        "raw",
        "cached_float",
        "cached_uint8",
        "loader",
        "loader_default_handover",
        "loader_in_process",
    ):
        assert r["samples"][name] >= 12 and r["samples_per_s_per_core"][name] > 0, name
        assert r["vs_memcpy"][name] == pytest.approx(
            r["samples_per_s_per_core"][name] / r["memcpy_samples_per_s"]
        )
    assert r["speedup"] == pytest.approx(
        r["samples_per_s_per_core"]["cached_uint8"] / r["samples_per_s_per_core"]["raw"]
    )
    text = "\n".join(format_report(r))
    assert "(d) DataLoader, 1 workers" in text and "memcpy" in text
    assert r["handover"].startswith("reused shared-memory slots (4 a worker") and "through slots" in text
    with pytest.raises(DataError, match="not a uint8 cache"):
        bench_data_loading(synth_root, caches["float16"], [3, 4], seconds=0.01, batch_size=4, workers=0)


def test_float_soft_is_chosen_at_construction(caches):
    """`LabelOptions(float_soft=True)`: images stay the stored uint8 and soft labels come as float32, ready
    to collate with float pseudo labels; nothing is switched on the dataset afterwards."""
    from segladder.data.datasets import LabelOptions

    kw = {"frames": [4], "image_size": 32, "output_dtype": "uint8"}
    stored = ContrailsDataset(caches["uint8"], "train", **kw)
    floats = ContrailsDataset(caches["uint8"], "train", labels=LabelOptions(float_soft=True), **kw)
    assert stored.emits_uint8 and floats.emits_uint8
    assert stored.soft_uint8 and not floats.soft_uint8
    a, b = stored[3], floats[3]
    assert b["image"].dtype == torch.uint8 and b["soft"].dtype == torch.float32
    torch.testing.assert_close(b["soft"], a["soft"].float() / 255)


def test_splits_without_soft_labels_give_their_mask_in_the_dtype_of_the_others(caches):
    """`joined` wraps the split without annotators' masks (`MaskAsSoft`) and changes no dataset: its soft
    label is its pixel mask, uint8 (0/255) on the uint8 path and float32 on the float path."""
    from segladder.data.module import MaskAsSoft, joined

    for dtype, soft_dtype, one in (("uint8", torch.uint8, 255), ("float32", torch.float32, 1)):
        kw = {"frames": [4], "image_size": 32, "output_dtype": dtype}
        train, val = (ContrailsDataset(caches["uint8"], s, **kw) for s in ("train", "validation"))
        before = [dict(vars(d)) for d in (train, val)]
        both = joined([train, val])
        assert [dict(vars(d)) for d in (train, val)] == before
        assert isinstance(both.datasets[1], MaskAsSoft) and both.datasets[0] is train
        item = both[len(train) + 1]
        assert "soft" not in val[1] and item["soft"].dtype == soft_dtype == train[0]["soft"].dtype
        torch.testing.assert_close(item["soft"], item["mask"].to(soft_dtype) * one)
        torch.utils.data.default_collate([both[0], item])  # every item carries the same keys
        # Joined again (pseudo labels after train+validation): what already gives soft labels stays as is.
        again = joined([both, train])
        assert again.datasets[0] is both and again.datasets[1] is train

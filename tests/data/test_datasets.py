import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from segladder.data.cache import CacheOptions, prepare_cache
from segladder.data.contrails import ash_rgb, discover_records, load_mask
from segladder.data.datasets import ContrailsDataset


def test_item_contract_and_frame_order(synth_root):
    ds = ContrailsDataset(synth_root, "train", frames=[0, 4, 7], image_size=32)
    item = ds[2]
    assert set(item) == {"image", "mask", "soft", "record_id"}
    assert item["image"].shape == (3, 3, 32, 32) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 32, 32) and item["soft"].shape == (1, 32, 32)
    ref = discover_records(synth_root, "train")[2]
    assert item["record_id"] == ref.record_id
    ash = ash_rgb(ref.path, frames=[0, 4, 7])  # (T, H, W, 3)
    np.testing.assert_allclose(item["image"].numpy(), ash.transpose(3, 0, 1, 2), atol=1e-6)
    np.testing.assert_array_equal(item["mask"][0].numpy(), load_mask(ref.path))


def test_batches_through_a_dataloader(synth_root):
    loader = DataLoader(ContrailsDataset(synth_root, "validation", frames=[4], image_size=32), batch_size=3)
    batch = next(iter(loader))
    assert batch["image"].shape == (3, 3, 1, 32, 32) and batch["mask"].shape == (3, 1, 32, 32)
    assert isinstance(batch["record_id"], list) and all(isinstance(r, str) for r in batch["record_id"])


def test_normalize_ash_uses_training_statistics_on_both_paths(synth_root, tmp_path):
    cache = tmp_path / "cache"
    prepare_cache(
        synth_root,
        cache,
        CacheOptions(frames=(4,), image_size=32),
        ["train", "validation"],
        workers=1,
        progress=False,
    )
    raw = ContrailsDataset(
        synth_root, "validation", frames=[4], image_size=32, normalize_ash=True, stats_records=0
    )
    cached = ContrailsDataset(cache, "validation", frames=[4], image_size=32, normalize_ash=True)
    plain = ContrailsDataset(cache, "validation", frames=[4], image_size=32)
    s = cached.stats
    # The statistics are those of the training split's ash channels, computed here from the raw records.
    train = torch.stack(
        [it["image"] for it in ContrailsDataset(synth_root, "train", frames=[4], image_size=32)]
    )
    assert s["mean"] == pytest.approx(train.mean(dim=(0, 2, 3, 4)).tolist(), abs=2e-3)
    assert s["std"] == pytest.approx(train.std(dim=(0, 2, 3, 4)).tolist(), rel=2e-2)
    assert raw.stats["mean"] == pytest.approx(s["mean"], abs=2e-3)
    mean = torch.tensor(s["mean"])[:, None, None, None]
    std = torch.tensor(s["std"])[:, None, None, None]
    torch.testing.assert_close(cached[0]["image"], (plain[0]["image"] - mean) / std, atol=1e-5, rtol=1e-5)
    # Raw and cached agree within the uint8 quantisation, scaled by 1/std.
    tol = 0.5 / 255 / min(s["std"]) + 1e-4
    assert (raw[0]["image"] - cached[0]["image"]).abs().max() <= tol


def test_a_cache_and_a_raw_root_open_their_own_reader(synth_root, tmp_path):
    """`ContrailsDataset(source)` is the cache reader or the raw reader behind one base; either survives a
    pickle round trip (DataLoader workers that spawn) with the same items."""
    import pickle

    from segladder.data.datasets import CachedContrailsDataset, RawContrailsDataset

    cache = tmp_path / "cache"
    prepare_cache(
        synth_root, cache, CacheOptions(frames=(4,), image_size=32), ["train"], workers=1, progress=False
    )
    raw = ContrailsDataset(synth_root, "train", frames=[4], image_size=32)
    cached = ContrailsDataset(cache, "train", frames=[4], image_size=32)
    assert type(raw) is RawContrailsDataset and type(cached) is CachedContrailsDataset
    assert isinstance(raw, ContrailsDataset) and isinstance(cached, ContrailsDataset)
    assert raw.cache is None and cached.cache is not None and raw.record_ids == cached.record_ids
    for ds in (raw, cached):
        again = pickle.loads(pickle.dumps(ds))
        assert type(again) is type(ds)
        torch.testing.assert_close(again[1]["image"], ds[1]["image"])


def test_a_raw_split_mixing_records_with_and_without_annotators_collates(tmp_path):
    # Records of train (annotators' masks) and validation (pixel mask only) gathered into one folder to
    # score: every item carries a soft label, the pixel mask where a record has no annotators, as the cache.
    import shutil
    from pathlib import Path

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "opencontrails_crops"
    for split in ("train", "validation"):
        for ref in discover_records(fixture, split)[:2]:
            shutil.copytree(ref.path, tmp_path / "validation" / ref.record_id)
    ds = ContrailsDataset(tmp_path, "validation", frames=[4], image_size=32)
    batch = next(iter(DataLoader(ds, batch_size=len(ds))))
    assert batch["soft"].shape == batch["mask"].shape == (3, 1, 32, 32)
    val_row = ds.record_ids.index(discover_records(fixture, "validation")[0].record_id)
    assert torch.equal(batch["soft"][val_row], batch["mask"][val_row])
    others = [i for i in range(3) if i != val_row]
    assert any(not torch.equal(batch["soft"][i], batch["mask"][i]) for i in others)  # annotators' means

import json
import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest

from segladder.data.cache import CacheOptions, ContrailsCache, prepare_cache
from segladder.data.datasets import ContrailsDataset
from segladder.errors import BadDatasetError, CacheError

FRAMES = (2, 3, 4)


def test_cached_equals_raw_sample_for_sample(synth_root, tmp_path):
    cache = tmp_path / "cache"
    res = prepare_cache(
        synth_root, cache, CacheOptions(frames=FRAMES, image_size=32), workers=2, progress=False
    )
    assert res.written == 12 + 4 + 3 and res.reused == 0
    for split in ("train", "validation", "test"):
        raw = ContrailsDataset(synth_root, split, frames=FRAMES, image_size=32)
        cached = ContrailsDataset(cache, split, frames=FRAMES, image_size=32)
        assert raw.record_ids == cached.record_ids
        for i in range(len(raw)):
            a, b = raw[i], cached[i]
            assert a["record_id"] == b["record_id"]
            assert a["image"].shape == b["image"].shape == (3, 3, 32, 32)
            assert b["image"].dtype == a["image"].dtype
            # uint8 storage: at most half a quantisation step away.
            assert (a["image"] - b["image"]).abs().max() <= 0.5 / 255 + 1e-6
            assert set(a) == set(b)
            if "mask" in a:
                assert (a["mask"] == b["mask"]).all()
            if "soft" in a:
                assert (a["soft"] - b["soft"]).abs().max() <= 0.5 / 255 + 1e-6
    assert "soft" in ContrailsDataset(cache, "train", frames=FRAMES, image_size=32)[0]
    assert "soft" not in ContrailsDataset(cache, "validation", frames=FRAMES, image_size=32)[0]
    assert "mask" not in ContrailsDataset(cache, "test", frames=FRAMES, image_size=32)[0]


def test_float16_cache_with_bands_and_statistics(synth_root, tmp_path):
    opts = CacheOptions(frames=(4,), channels=("ash", "diffs", "band_14"), image_size=32, dtype="float16")
    cache = tmp_path / "c16"
    prepare_cache(synth_root, cache, opts, ["train", "validation"], workers=1, progress=False)
    c = ContrailsCache(cache)
    assert c.stats["channels"] == list(opts.channels) and len(c.stats["mean"]) == 6
    raw = ContrailsDataset(
        synth_root, "validation", frames=(4,), channels=opts.channels, image_size=32, stats=c.stats
    )
    cached = ContrailsDataset(cache, "validation", frames=(4,), channels=opts.channels, image_size=32)
    a, b = raw[0]["image"], cached[0]["image"]
    assert a.shape == (6, 1, 32, 32)
    assert (a - b).abs().max() < 5e-3
    # Standardised channels really are standardised on the training split.
    train = ContrailsDataset(cache, "train", frames=(4,), channels=opts.channels, image_size=32)
    stack = np.stack([train[i]["image"].numpy() for i in range(len(train))])
    assert abs(stack[:, 3:].mean()) < 0.05 and abs(stack[:, 3:].std() - 1) < 0.05
    assert 0 <= stack[:, :3].min() and stack[:, :3].max() <= 1  # ash stays in [0, 1]


def test_request_other_than_prepared_is_refused(synth_root, tmp_path):
    cache = tmp_path / "cache"
    prepare_cache(
        synth_root, cache, CacheOptions(frames=FRAMES, image_size=32), ["train"], workers=1, progress=False
    )
    ContrailsDataset(cache, "train", frames=(3, 4), image_size=32)  # a subset is fine
    with pytest.raises(CacheError, match=r"frames \[0, 1\]"):
        ContrailsDataset(cache, "train", frames=(0, 1), image_size=32)
    with pytest.raises(CacheError, match="image_size 64"):
        ContrailsDataset(cache, "train", frames=FRAMES, image_size=64)
    with pytest.raises(CacheError, match="band_11"):
        ContrailsDataset(cache, "train", frames=FRAMES, channels=["band_11"], image_size=32)
    with pytest.raises(CacheError, match="no split 'validation'"):
        ContrailsDataset(cache, "validation", frames=FRAMES, image_size=32)
    with pytest.raises(CacheError, match="other options"):
        prepare_cache(
            synth_root, cache, CacheOptions(frames=(4,), image_size=32), ["train"], workers=1, progress=False
        )


def test_corrupted_or_incomplete_cache_is_refused(synth_root, tmp_path):
    cache = tmp_path / "cache"
    prepare_cache(
        synth_root, cache, CacheOptions(frames=FRAMES, image_size=32), ["train"], workers=1, progress=False
    )
    masks = cache / "train" / "masks.npy"
    data = masks.read_bytes()
    masks.write_bytes(data[: len(data) // 2])
    with pytest.raises(CacheError, match="masks.npy"):
        ContrailsDataset(cache, "train", frames=FRAMES, image_size=32)
    (cache / "manifest.json").unlink()
    with pytest.raises(CacheError, match="interrupted preparation"):
        ContrailsDataset(cache, "train", frames=FRAMES, image_size=32)


def _prepare_slowly(root, cache):
    import segladder.data.cache as cache_mod

    original = cache_mod.read_sample

    def slow(*a, **k):
        time.sleep(0.15)
        return original(*a, **k)

    cache_mod.read_sample = slow
    prepare_cache(
        root, cache, CacheOptions(frames=FRAMES, image_size=32), ["train"], workers=1, progress=False, chunk=2
    )


@pytest.mark.medium
def test_prepare_interrupted_then_resumed(synth_root, tmp_path):
    cache = tmp_path / "cache"
    proc = mp.get_context("fork").Process(target=_prepare_slowly, args=(synth_root, cache))
    proc.start()
    done_file = cache / "train" / "done.npy"
    deadline = time.time() + 30
    while time.time() < deadline:  # kill it once some, but not all, records are finished
        if done_file.exists() and 0 < np.load(done_file).sum() < 12:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    finished = int(np.load(done_file).sum())
    assert 0 < finished < 12
    assert not (cache / "manifest.json").exists()
    with pytest.raises(CacheError, match="interrupted"):
        ContrailsCache(cache)

    res = prepare_cache(
        synth_root, cache, CacheOptions(frames=FRAMES, image_size=32), ["train"], workers=1, progress=False
    )
    assert res.reused == finished and res.written == 12 - finished
    fresh = tmp_path / "fresh"
    prepare_cache(
        synth_root, fresh, CacheOptions(frames=FRAMES, image_size=32), ["train"], workers=2, progress=False
    )
    for name in ("images", "masks", "soft"):
        np.testing.assert_array_equal(
            np.load(cache / "train" / f"{name}.npy"), np.load(fresh / "train" / f"{name}.npy")
        )
    assert json.loads((cache / "manifest.json").read_text())["complete"] is True


def test_prepare_bad_records_fail_or_are_skipped(synth_copy, tmp_path):
    from segladder.data.contrails import discover_records

    ref = discover_records(synth_copy, "train")[3]
    (ref.path / "band_14.npy").unlink()
    cache = tmp_path / "cache"
    with pytest.raises(BadDatasetError, match=f"{ref.record_id}: missing band_14.npy"):
        prepare_cache(
            synth_copy,
            cache,
            CacheOptions(frames=FRAMES, image_size=32),
            ["train"],
            workers=1,
            progress=False,
        )
    res = prepare_cache(
        synth_copy,
        cache,
        CacheOptions(frames=FRAMES, image_size=32),
        ["train"],
        workers=1,
        progress=False,
        skip_bad=True,
    )
    assert (
        res.skipped["train"] == [ref.record_id] and res.written == 0
    )  # the good ones were kept from the first run
    ds = ContrailsDataset(cache, "train", frames=FRAMES, image_size=32)
    assert len(ds) == 11 and ref.record_id not in ds.record_ids


def test_missing_root_and_non_cache_out(tmp_path, synth_root):
    from segladder.errors import DataError

    with pytest.raises(DataError, match="does not exist"):
        prepare_cache(tmp_path / "missing", tmp_path / "c", progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(CacheError, match="not a segladder cache"):
        prepare_cache(synth_root, tmp_path / "busy", CacheOptions(image_size=32), ["train"], progress=False)

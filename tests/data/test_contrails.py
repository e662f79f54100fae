import numpy as np
import pytest

from segladder.data.contrails import (
    RecordRef,
    ash_rgb,
    discover_records,
    load_mask,
    load_soft_label,
    read_channels,
    read_sample,
    resolve_channels,
)
from segladder.errors import DataError
from tests.data.records import write_record


def reference_ash(b11, b14, b15):
    r = np.clip((b15 - b14 + 4) / 6, 0, 1)
    g = np.clip((b14 - b11 + 4) / 9, 0, 1)
    b = np.clip((b14 - 243) / 60, 0, 1)
    return np.stack([r, g, b], -1)


def test_discover_keeps_ids_as_strings_and_sorted(synth_root):
    refs = discover_records(synth_root, "train")
    ids = [r.record_id for r in refs]
    assert len(ids) == 12
    assert ids == sorted(ids)
    assert all(isinstance(i, str) and i.isdigit() for i in ids)
    assert all(r.path.parent.name == "train" for r in refs)


def test_discover_errors_name_the_path(tmp_path, synth_root):
    with pytest.raises(DataError, match="does not exist"):
        discover_records(tmp_path / "nope", "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="no record folders"):
        discover_records(tmp_path, "train")
    with pytest.raises(DataError, match="unknown split"):
        discover_records(synth_root, "trian")


def test_ash_rgb_matches_recipe_and_clips_both_bounds(tmp_path):
    size = 8
    rng = np.random.default_rng(0)
    b14 = rng.uniform(230, 315, (size, size, 8)).astype(np.float32)  # spans both ends of 243..303
    b15 = b14 + rng.uniform(-7, 5, (size, size, 8)).astype(np.float32)  # R range is -4..2
    b11 = b14 - rng.uniform(-7, 8, (size, size, 8)).astype(np.float32)  # G range is -4..5
    rec = write_record(tmp_path / "1", size, bands={11: b11, 14: b14, 15: b15})
    ash = ash_rgb(rec)
    assert ash.shape == (8, size, size, 3) and ash.dtype == np.float32
    expected = reference_ash(b11, b14, b15).transpose(2, 0, 1, 3)
    np.testing.assert_allclose(ash, expected, atol=1e-6)
    for c in range(3):  # the random bands reach past both bounds of every channel
        assert (ash[..., c] == 0).any() and (ash[..., c] == 1).any()
    assert ash.min() >= 0 and ash.max() <= 1


def test_frame_selection(synth_root):
    rec = discover_records(synth_root, "train")[0].path
    full = ash_rgb(rec)
    assert full.shape[0] == 8
    np.testing.assert_array_equal(ash_rgb(rec, frames=[0, 1, 2, 3, 4]), full[:5])
    np.testing.assert_array_equal(ash_rgb(rec, frames=[7, 4]), full[[7, 4]])
    with pytest.raises(DataError, match="outside 0..7"):
        ash_rgb(rec, frames=[8])


def test_mask_and_soft_label(tmp_path):
    size = 6
    individual = np.zeros((size, size, 1, 3), np.int32)
    individual[0, 0, 0, :] = 1  # all three
    individual[1, 1, 0, :2] = 1  # two of three
    individual[2, 2, 0, 0] = 1  # one of three
    mask = (individual.mean(-1) > 0.5).astype(np.int32)
    rec = write_record(tmp_path / "2", size, mask=mask, individual=individual)
    m, s = load_mask(rec), load_soft_label(rec)
    assert m.shape == (size, size) and m[0, 0] == 1 and m[1, 1] == 1 and m[2, 2] == 0
    np.testing.assert_allclose(s[[0, 1, 2], [0, 1, 2]], [1.0, 2 / 3, 1 / 3], rtol=1e-6)
    assert load_mask(write_record(tmp_path / "3", size)) is None


def test_extra_channels_bands_and_differences(tmp_path):
    rec = write_record(tmp_path / "4", 8, seed=3)
    x = read_channels(rec, ["ash", "bands", "diffs"], frames=[4])
    assert x.shape == (1, 8, 8, 3 + 9 + 2)
    b15, b14 = np.load(rec / "band_15.npy")[:, :, 4], np.load(rec / "band_14.npy")[:, :, 4]
    names = resolve_channels(["ash", "bands", "diffs"])
    np.testing.assert_allclose(x[0, :, :, names.index("band_14")], b14)
    np.testing.assert_allclose(x[0, :, :, names.index("diff_15_14")], b15 - b14, rtol=1e-6)
    with pytest.raises(DataError, match="Did you mean"):
        resolve_channels(["band_1"])


def test_non_256_record_is_resized_not_rejected(tmp_path):
    size = 40
    mask = np.zeros((size, size), np.int32)
    mask[10:30, 18:22] = 1
    rec = write_record(tmp_path / "train" / "5", size, mask=mask)
    for interp in ("bilinear", "bicubic"):
        s = read_sample(RecordRef("train", "5", rec), frames=[0, 4], image_size=32, interpolation=interp)
        assert s.image.shape == (2, 32, 32, 3)
        assert s.mask.shape == (32, 32) and set(np.unique(s.mask)) == {0, 1}  # nearest keeps it binary
        # The stripe keeps its place: rows 8..24, columns ~14..18 of 32.
        assert s.mask[16, 16] == 1 and s.mask[2, 16] == 0 and s.mask[16, 5] == 0


def test_unreadable_band_names_the_file(tmp_path):
    rec = write_record(tmp_path / "6", 8)
    (rec / "band_14.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="band_14.npy"):
        ash_rgb(rec)


def test_native_size_reads_the_first_record_and_names_a_bad_file(tmp_path, synth_root):
    from segladder.data.contrails import native_size

    assert native_size(synth_root) == 32
    record = tmp_path / "train" / "1000"
    record.mkdir(parents=True)
    (record / "band_08.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match=r"1000/band_08\.npy: cannot read its header.*--size"):
        native_size(tmp_path)
    np.save(record / "band_08.npy", np.zeros((16, 24, 8), np.float32))
    with pytest.raises(DataError, match=r"band_08\.npy: shape \(16, 24, 8\) .*--size"):
        native_size(tmp_path)

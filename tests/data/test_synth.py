"""The synthetic contrail generator: exact layout, honest labels, contrail physics, determinism, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from segladder.data import synth
from segladder.data.layout import (
    BAND_FILES,
    INDIVIDUAL_MASKS_FILE,
    LABELED_FRAME,
    METADATA_FILES,
    METADATA_KEYS,
    N_FRAMES,
    PIXEL_MASK_FILE,
    SAMPLE_SUBMISSION_FILE,
    SPLITS,
)
from segladder.data.synth import (
    PARAMS_FILE,
    generate_contrails,
    make_record,
    record_ids,
    record_rng,
    write_record,
)
from segladder.errors import DataError

SIZE = 32  # of the session-wide `synth_root` dataset (tests/conftest.py)


def _records(root: Path, split: str) -> list[Path]:
    return sorted(p for p in (root / split).iterdir() if not p.name.startswith("."))


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def scenes() -> list[dict[str, np.ndarray]]:
    """In-memory train records at 64 px: large enough for contrails to have surroundings."""
    return [make_record(record_rng(11, "train", i), size=64, split="train") for i in range(24)]


def test_every_file_has_the_competition_dtype_and_shape(synth_root):
    expected = {
        "train": set(BAND_FILES) | {PIXEL_MASK_FILE, INDIVIDUAL_MASKS_FILE},
        "validation": set(BAND_FILES) | {PIXEL_MASK_FILE},
        "test": set(BAND_FILES),
    }
    for split in SPLITS:
        recs = _records(synth_root, split)
        assert len(recs) == {"train": 12, "validation": 4, "test": 3}[split]
        for rec in recs:
            assert {p.name for p in rec.iterdir()} == expected[split]
            for name in BAND_FILES:
                arr = np.load(rec / name)
                assert arr.dtype == np.float32 and arr.shape == (SIZE, SIZE, N_FRAMES)
                assert np.isfinite(arr).all() and 180 < arr.min() and arr.max() < 320
            if split != "test":
                mask = np.load(rec / PIXEL_MASK_FILE)
                assert mask.dtype == np.int32 and mask.shape == (SIZE, SIZE, 1)
                assert set(np.unique(mask)) <= {0, 1}
            if split == "train":
                ind = np.load(rec / INDIVIDUAL_MASKS_FILE)
                assert ind.dtype == np.int32 and ind.ndim == 4 and ind.shape[:3] == (SIZE, SIZE, 1)
                assert 4 <= ind.shape[3] <= 7 and set(np.unique(ind)) <= {0, 1}


def test_pixel_mask_is_the_annotator_majority_and_annotators_disagree(synth_root):
    counts, disagreeing = set(), 0
    for rec in _records(synth_root, "train"):
        ind = np.load(rec / INDIVIDUAL_MASKS_FILE)[:, :, 0, :]
        mask = np.load(rec / PIXEL_MASK_FILE)[:, :, 0]
        np.testing.assert_array_equal(mask, (ind.mean(axis=-1) > 0.5).astype(np.int32))
        counts.add(ind.shape[-1])
        disagreeing += int(ind.any() and not (ind == ind[:, :, :1]).all())
    assert len(counts) >= 2, f"annotator count never varies: {counts}"
    assert disagreeing >= 3


def test_ids_metadata_and_sample_submission_match_the_records(synth_root):
    all_ids = []
    for split in SPLITS:
        ids = [p.name for p in _records(synth_root, split)]
        assert all(i.isdigit() and len(i) in (18, 19) and not i.startswith("0") for i in ids)
        all_ids += ids
        if split in METADATA_FILES:
            meta = json.loads((synth_root / METADATA_FILES[split]).read_text())
            assert sorted(m["record_id"] for m in meta) == ids
            for m in meta:
                assert set(m) == set(METADATA_KEYS) and isinstance(m["record_id"], str)
                assert m["projection_wkt"].startswith("PROJCS[")
                assert all(
                    isinstance(m[k], float)
                    for k in ("row_min", "row_size", "col_min", "col_size", "timestamp")
                )
                assert 1.5e9 < m["timestamp"] < 1.7e9
    assert len(set(all_ids)) == len(all_ids)
    lines = (synth_root / SAMPLE_SUBMISSION_FILE).read_text().splitlines()
    assert lines[0] == "record_id,encoded_pixels"
    assert sorted(lines[1:]) == sorted(f"{p.name},-" for p in _records(synth_root, "test"))


def test_ids_are_unique_and_independent_of_the_count():
    ids = {s: record_ids(5, s, 3000) for s in SPLITS}
    pooled = [i for v in ids.values() for i in v]
    assert len(set(pooled)) == len(pooled)
    assert record_ids(5, "train", 10) == ids["train"][:10]
    assert set(record_ids(6, "train", 100)).isdisjoint(ids["train"])


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    args = dict(records=3, val_records=1, test_records=1, size=SIZE, progress=False)
    generate_contrails(tmp_path / "a", seed=3, **args)
    generate_contrails(tmp_path / "b", seed=3, **args)
    generate_contrails(tmp_path / "c", seed=4, **args)
    a, b, c = (_tree_bytes(tmp_path / n) for n in "abc")
    assert a == b
    assert set(a).isdisjoint({k for k in c if "/" in k})  # other record ids
    first_a = _records(tmp_path / "a", "train")[0] / "band_14.npy"
    first_c = _records(tmp_path / "c", "train")[0] / "band_14.npy"
    assert first_a.read_bytes() != first_c.read_bytes()


def test_some_records_are_empty_and_some_have_contrails(synth_root):
    sums = [
        int(np.load(r / PIXEL_MASK_FILE).sum())
        for s in ("train", "validation")
        for r in _records(synth_root, s)
    ]
    assert any(s == 0 for s in sums) and sum(s > 0 for s in sums) >= 5


def test_contrails_are_thin_cold_lines_with_the_split_window_signature(scenes):
    # Real records (issue 24): inside a contrail band 15 − band 14 is 0.2–1.2 K below its surroundings,
    # band 14 − band 11 1–2 K below, and band 14 a few K colder; the clear sky around is already negative.
    d_btd, d_g, valley_in, valley_out, ring_btd = [], [], [], [], []
    for rec in scenes:
        mask = rec[PIXEL_MASK_FILE][:, :, 0].astype(np.uint8)
        if not mask.any():
            continue
        b14 = rec["band_14.npy"][:, :, LABELED_FRAME]
        btd = rec["band_15.npy"][:, :, LABELED_FRAME] - b14
        g = b14 - rec["band_11.npy"][:, :, LABELED_FRAME]
        ring = (cv2.dilate(mask, np.ones((9, 9), np.uint8)) > 0) & (mask == 0)
        d_btd.append(btd[mask > 0].mean() - btd[ring].mean())
        d_g.append(g[mask > 0].mean() - g[ring].mean())
        ring_btd.append(btd[ring].mean())
        # A grey closing fills valleys narrower than its kernel: how much colder than the local background.
        valley = cv2.morphologyEx(b14, cv2.MORPH_CLOSE, np.ones((9, 9), np.uint8)) - b14
        valley_in.append(valley[mask > 0].mean())
        valley_out.append(valley[ring].mean())
    assert len(d_btd) >= 8
    assert -1.5 < np.mean(d_btd) < -0.2 and np.mean(d_g) < -0.4
    assert -4.5 < np.mean(ring_btd) < -1.0
    # Look-alikes (unlabelled contrail-like lines) may lie in the ring, and some contrails fade at the label.
    assert np.mean(valley_in) > 1.5 and (np.array(valley_in) > 2 * np.array(valley_out)).mean() > 0.6


def test_ash_rgb_is_cyan_dominated_with_a_real_red_mean(scenes):
    # Real records at the labelled frame: R mean 0.04–0.26 (one cloudy record 0.59), G 0.42–0.83.
    red, green, blue = [], [], []
    for rec in scenes:
        b11, b14, b15 = (rec[f"band_{b}.npy"][:, :, LABELED_FRAME] for b in (11, 14, 15))
        red.append(np.clip((b15 - b14 + 4) / 6, 0, 1).mean())
        green.append(np.clip((b14 - b11 + 4) / 9, 0, 1).mean())
        blue.append(np.clip((b14 - 243) / 60, 0, 1).mean())
    assert 0.04 < np.median(red) < 0.26 and np.mean(np.array(red) < 0.4) > 0.8
    assert np.median(green) > 2 * np.median(red) and np.median(blue) > 2 * np.median(red)


def test_labelled_contrails_follow_the_competition_rules():
    # One contrail, varied one rule at a time: >= 10 px, >= 3x longer than wide, visible in >= 2 images.
    base = synth._line(
        np.random.default_rng(0), np.array([32.0, 30.0]), 0.3, 30.0, np.array([1.0, 0.5]), -2.0
    )
    base = synth.replace(base, opacity=0.2, width=1.5, spread=0.1, fade_to=1.0)
    assert synth._labelled(base, 64)
    # Appearing in the labelled frame and gone in the next: one image only.
    assert not synth._labelled(synth.replace(base, window=(-0.5, 0.5)), 64)
    # Appearing at the labelled frame and staying: visible in frames 4..7, so labelled.
    assert synth._labelled(synth.replace(base, formed=-0.4), 64)
    # Forming only after the labelled frame.
    assert not synth._labelled(synth.replace(base, formed=0.3), 64)
    # Too faint to see (under 1 K of band-14 contrast).
    assert not synth._labelled(synth.replace(base, opacity=0.005), 64)
    # Too small: 5 px long, 1 px wide (long enough for its width, but under 10 px).
    short = synth._line(
        np.random.default_rng(0), np.array([32.0, 30.0]), 0.3, 5.0, np.array([1.0, 0.5]), -2.0
    )
    assert not synth._labelled(synth.replace(short, opacity=0.2, width=1.0, spread=0.0), 64)
    # Ten pixels but as wide as long: never 3x longer than wide.
    blob = synth._line(
        np.random.default_rng(0), np.array([32.0, 30.0]), 0.3, 8.0, np.array([1.0, 0.5]), -math.inf
    )
    assert not synth._labelled(synth.replace(blob, opacity=0.2, width=5.0, spread=0.0), 64)
    assert synth._mask_of(blob, 64, 0.0, 5.0).sum() >= 10


def test_the_positive_fraction_is_real_like(scenes):
    # Real positive records: 17-5,579 of 65,536 px; many records are empty.
    positive = [r[PIXEL_MASK_FILE].mean() for r in scenes if r[PIXEL_MASK_FILE].any()]
    assert 0.25 < len(positive) / len(scenes) < 0.9
    assert 0.002 < np.mean(positive) < 0.1


def test_bands_are_plausible_and_correlated(scenes):
    rec = scenes[0]
    med = {int(n[5:7]): float(np.median(a)) for n, a in rec.items() if n.startswith("band_")}
    assert all(200 < med[b] < 265 for b in (8, 9, 10)) and med[8] < med[9] < med[10]
    assert all(med[10] < med[b] < 305 for b in (11, 13, 14, 15))
    assert 0 < med[13] - med[14] < 2 and -5 < med[15] - med[14] < -0.5
    b13, b14 = (rec[f"band_{b}.npy"].ravel() for b in (13, 14))
    assert np.corrcoef(b13, b14)[0, 1] > 0.9


def test_the_label_matches_frame_4_better_than_frame_0(scenes):
    def overlap(rec, frame):
        # Thin cold lines: how far band 14 sits below its grey closing (valleys narrower than 5 px).
        b14 = np.ascontiguousarray(rec["band_14.npy"][:, :, frame])
        signal = cv2.morphologyEx(b14, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8)) - b14
        return np.corrcoef(signal.ravel(), rec[PIXEL_MASK_FILE].ravel())[0, 1]

    positive = [r for r in scenes if r[PIXEL_MASK_FILE].any()]
    at4 = np.array([overlap(r, LABELED_FRAME) for r in positive])
    at0 = np.array([overlap(r, 0) for r in positive])
    assert at4.mean() > at0.mean() + 0.1 and (at4 > at0).mean() >= 0.75


def test_write_record_at_another_size_is_all_or_nothing(tmp_path, monkeypatch):
    stats = write_record(
        tmp_path / "val" / "123456789012345678", np.random.default_rng(0), size=48, split="validation"
    )
    rec = tmp_path / "val" / "123456789012345678"
    assert np.load(rec / "band_11.npy").shape == (48, 48, N_FRAMES)
    assert np.load(rec / PIXEL_MASK_FILE).shape == (48, 48, 1)
    assert not (rec / INDIVIDUAL_MASKS_FILE).exists() and stats.annotators == 0 and stats.pixels == 48 * 48

    real_save, calls = synth._save_npy, []

    def failing_save(path, array):
        calls.append(path)
        if len(calls) == 4:
            raise OSError("disk full")
        real_save(path, array)

    monkeypatch.setattr(synth, "_save_npy", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_record(tmp_path / "train" / "999", np.random.default_rng(0), size=SIZE)
    assert list((tmp_path / "train").iterdir()) == []


def test_rerun_skips_complete_records_and_rebuilds_the_rest(tmp_path):
    out = tmp_path / "ds"
    args = dict(val_records=1, test_records=0, size=SIZE, seed=2, progress=False)
    generate_contrails(out, records=3, **args)
    before = _tree_bytes(out)
    victim = _records(out, "train")[1]
    (victim / "band_12.npy").unlink()  # as if damaged
    (out / "train" / f".{victim.name}.tmp").mkdir()  # as if a run was killed mid-record

    summary = generate_contrails(out, records=5, **args)
    assert (summary.written, summary.skipped) == (3, 3)  # 1 damaged + 2 new; 2 train + 1 validation intact
    after = _tree_bytes(out)
    assert {k: v for k, v in after.items() if k in before and not k.endswith("metadata.json")} == {
        k: v for k, v in before.items() if not k.endswith("metadata.json")
    }
    assert len(_records(out, "train")) == 5 and not list((out / "train").glob(".*"))
    fresh = tmp_path / "fresh"
    generate_contrails(fresh, records=5, **args)
    assert after == _tree_bytes(fresh)

    with pytest.raises(DataError, match="--records"):
        generate_contrails(out, records=2, **args)


def test_another_seed_is_refused_unless_overwriting(tmp_path):
    out = tmp_path / "ds"
    generate_contrails(out, records=2, val_records=0, test_records=0, size=SIZE, seed=1, progress=False)
    with pytest.raises(DataError) as err:
        generate_contrails(out, records=2, val_records=0, test_records=0, size=SIZE, seed=9, progress=False)
    assert PARAMS_FILE in str(err.value) and "--overwrite" in str(err.value) and "seed=1" in str(err.value)
    with pytest.raises(DataError, match=PARAMS_FILE):
        generate_contrails(
            out, records=2, val_records=0, test_records=0, size=SIZE + 16, seed=1, progress=False
        )

    (out / "notes.txt").write_text("mine")
    generate_contrails(
        out, records=2, val_records=0, test_records=0, size=SIZE, seed=9, progress=False, overwrite=True
    )
    assert [p.name for p in _records(out, "train")] == sorted(record_ids(9, "train", 2))
    assert json.loads((out / PARAMS_FILE).read_text())["seed"] == 9
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(records=0), "--records"),
        (dict(records=2, val_records=-1), "--val-records"),
        (dict(records=2, test_records=-3), "--test-records"),
        (dict(records=2, size=4), "--size"),
        (dict(records=2, seed=-1), "--seed"),
    ],
)
def test_bad_numbers_are_refused_before_writing(tmp_path, kwargs, message):
    with pytest.raises(DataError, match=message):
        generate_contrails(tmp_path / "ds", progress=False, **kwargs)
    assert not (tmp_path / "ds").exists()


def test_unusable_output_paths_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        generate_contrails(tmp_path / "file", records=1, size=SIZE, progress=False)
    foreign = tmp_path / "real"
    (foreign / "train").mkdir(parents=True)
    for overwrite in (False, True):
        with pytest.raises(DataError, match="not empty"):
            generate_contrails(foreign, records=1, size=SIZE, progress=False, overwrite=overwrite)
    assert (foreign / "train").is_dir()


def test_cli_writes_the_dataset_and_reports_errors(tmp_path):
    import typer.main
    from typer.testing import CliRunner

    import segladder.cli.synth  # noqa: F401  (registers the command group)
    from segladder.cli import app

    args = [
        "synth",
        "contrails",
        str(tmp_path / "ds"),
        "--records",
        "2",
        "--val-records",
        "1",
        "--test-records",
        "1",
        "--size",
        str(SIZE),
        "--seed",
        "5",
        "--no-progress",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "train" in res.output and str(tmp_path / "ds") in res.output.replace("\n", "")
    assert [p.name for p in _records(tmp_path / "ds", "train")] == sorted(record_ids(5, "train", 2))

    bad = CliRunner().invoke(app, args[:3] + ["--records", "0"])
    assert isinstance(bad.exception, DataError)

    params = typer.main.get_command(app).commands["synth"].commands["contrails"].params
    assert all(p.help for p in params), [p.name for p in params if not p.help]


def test_width_scale_widens_the_contrails_and_belongs_to_the_dataset(tmp_path):
    def positives(scale):
        recs = [make_record(record_rng(4, "train", i), size=64, width_scale=scale) for i in range(12)]
        return sum(int(r[PIXEL_MASK_FILE].sum()) for r in recs)

    real, wide = positives(1.0), positives(2.0)
    assert real > 0 and 1.5 * real < wide < 4 * real
    args = dict(records=1, val_records=0, test_records=0, size=SIZE, seed=1, progress=False)
    generate_contrails(tmp_path / "w", width_scale=2.0, **args)
    assert json.loads((tmp_path / "w" / PARAMS_FILE).read_text())["width_scale"] == 2.0
    with pytest.raises(
        DataError, match=r"width_scale=2\.0, opacity_scale=1\.0, but this run asks for .*width_scale=1\.0"
    ):
        generate_contrails(tmp_path / "w", **args)
    with pytest.raises(DataError, match="--width-scale is 0: give a factor between 0.5 and 8"):
        generate_contrails(tmp_path / "x", width_scale=0.0, **args)


def test_opacity_scale_cools_the_contrails_only_and_belongs_to_the_dataset(tmp_path):
    """The same draws with thicker ice: contrail pixels colder in band 14 at the label, the rest untouched."""
    faint = [make_record(record_rng(6, "train", i), size=64) for i in range(12)]
    thick = [make_record(record_rng(6, "train", i), size=64, opacity_scale=3.0) for i in range(12)]
    cooling = {1.0: [], 3.0: []}
    for f, t in zip(faint, thick, strict=True):
        mask = f[PIXEL_MASK_FILE][..., 0] > 0
        far = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)) == 0  # no contrail within 4 px
        b14f, b14t = f["band_14.npy"][..., 4], t["band_14.npy"][..., 4]
        if mask.any():
            cooling[1.0].append(float(b14f[far].mean() - b14f[mask].mean()))
            cooling[3.0].append(float(b14t[far].mean() - b14t[mask].mean()))
        # Clouds and surface are the same draws: away from the lines (unlabelled and aged wide ones
        # included, up to a third of a 64² record) nothing moved.
        assert np.isclose(b14f, b14t, atol=1e-3).mean() > 0.6
    assert len(cooling[1.0]) >= 4
    assert np.mean(cooling[3.0]) > 2.0 * np.mean(cooling[1.0]) > 0
    args = dict(records=1, val_records=0, test_records=0, size=SIZE, seed=1, progress=False)
    generate_contrails(tmp_path / "o", opacity_scale=3.0, **args)
    assert json.loads((tmp_path / "o" / PARAMS_FILE).read_text())["opacity_scale"] == 3.0
    with pytest.raises(DataError, match=r"opacity_scale=3\.0, but this run asks for .*opacity_scale=1\.0"):
        generate_contrails(tmp_path / "o", **args)
    with pytest.raises(DataError, match="--opacity-scale is 0: give a factor between 0.25 and 8"):
        generate_contrails(tmp_path / "y", opacity_scale=0.0, **args)

"""Contrail injection: measured cooling per band, real labels kept, turned skies, the dataset it writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from segladder.data import inject as inj
from segladder.data.check import check_dataset
from segladder.data.contrails import discover_records, load_mask
from segladder.data.layout import BANDS, INDIVIDUAL_MASKS_FILE, PIXEL_MASK_FILE, band_file
from segladder.data.synth import injection_backgrounds
from segladder.errors import DataError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "opencontrails_crops"


def _flat_record(size: int = 96, t14: float = 290.0) -> dict[str, np.ndarray]:
    """A clear sky with a different temperature per band (so a band mix-up shows) and no contrail."""
    files = {band_file(b): np.full((size, size, 8), t14 - (16 - b), np.float32) for b in BANDS}
    files[PIXEL_MASK_FILE] = np.zeros((size, size, 1), np.int32)
    return files


def _dense(rng_seed: int, size: int, corridors: float = 5.0):
    """An injected flat sky; a fifth of records get no corridor, so the next seed is tried until one has."""
    for seed in range(rng_seed, rng_seed + 20):
        out, n = inj.inject_record(_flat_record(size), np.random.default_rng(seed), corridors=corridors)
        if n:
            return out, n
    raise AssertionError("20 seeds without a labelled contrail")


def test_each_band_cools_by_its_measured_share_of_band_14():
    base = _flat_record(128)
    for seed in range(6):
        out, n = inj.inject_record(base, np.random.default_rng(seed), corridors=5.0)
        if n:
            break
    assert n > 0
    cool = {b: base[band_file(b)] - out[band_file(b)] for b in BANDS}
    on = cool[14] > 0.05
    assert on.any() and (cool[14] >= -1e-4).all()
    for b in BANDS:  # a swapped or mis-keyed ratio moves this by far more than float error
        assert np.allclose(cool[b][on] / cool[14][on], inj.BAND_RATIO[b], atol=1e-3), b
    # The split-window signature the ash RGB shows: B15 − B14 and B14 − B11 both fall over the contrail.
    assert (cool[15][on] > cool[14][on]).all() and (cool[11][on] < cool[14][on]).all()


@pytest.mark.medium
def test_measuring_an_injected_sky_gives_back_the_signature_it_was_drawn_with():
    rows = []
    for seed in range(12):
        out, _ = _dense(seed, 128)
        bands = {b: out[band_file(b)][..., 4] for b in BANDS}
        rows += inj.component_coolings(bands, out[PIXEL_MASK_FILE][..., 0])
    c14 = np.array([r.cooling[14] for r in rows])
    assert len(rows) >= 20 and (c14 > 0).mean() > 0.9
    for b in (11, 15):
        cb = np.array([r.cooling[b] for r in rows])
        assert abs((cb * c14).sum() / (c14 * c14).sum() - inj.BAND_RATIO[b]) < 0.03
    # Over a flat sky the contrasts follow the drawn distribution: its median near the measured real one.
    assert 0.5 * inj.CONTRAST_MEDIAN_K < np.median(c14) < 2.5 * inj.CONTRAST_MEDIAN_K


def test_a_sky_colder_than_the_ice_is_not_cooled():
    out, n = inj.inject_record(_flat_record(96, t14=200.0), np.random.default_rng(3), corridors=5.0)
    assert n >= 0
    assert np.array_equal(out[band_file(14)], _flat_record(96, t14=200.0)[band_file(14)])


@pytest.mark.parametrize("transform", [0, 1, 5])
def test_real_labels_and_pixels_are_kept_and_turned_together(transform):
    ref = discover_records(FIXTURE, "train")[1]
    files = inj.read_record_files(ref)
    real = files[PIXEL_MASK_FILE][..., 0]
    assert real.any()
    out, _ = inj.inject_record(files, np.random.default_rng(0), corridors=0.0, transform=transform)
    turned = inj._dihedral(real, transform)
    if transform:
        assert not np.array_equal(turned, real)  # the fixture's mask is not symmetric, so a turn shows
    assert (out[PIXEL_MASK_FILE][..., 0] >= turned).all()  # every real contrail pixel stays positive
    untouched = inj._dihedral(files[band_file(13)], transform)
    cooled = out[band_file(14)] != inj._dihedral(files[band_file(14)], transform)
    assert np.array_equal(out[band_file(13)][~cooled], untouched[~cooled])  # and each band turned alike
    real_ind = inj._dihedral(files[INDIVIDUAL_MASKS_FILE], transform)
    ind = out[INDIVIDUAL_MASKS_FILE]
    assert ind.shape == real_ind.shape and ((ind | real_ind) == ind).all()  # each annotator's marks stay


def test_the_pixel_mask_is_the_annotators_majority_of_the_injected_lines():
    out, n = _dense(1, 128)
    assert n > 0
    ind = out[INDIVIDUAL_MASKS_FILE][:, :, 0, :]
    majority = 2 * ind.sum(-1) > ind.shape[-1]
    assert np.array_equal(out[PIXEL_MASK_FILE][..., 0].astype(bool), majority)
    cooled = (_flat_record(128)[band_file(14)] - out[band_file(14)])[..., 4] > 0.3
    # The labels sit on the cooled lines: most mask pixels are cooled, most of the sky is not masked.
    assert cooled[majority].mean() > 0.7 and majority[~cooled].mean() < 0.01


def _write(tmp_path: Path, **kw):
    out = tmp_path / "inj"
    args = {"records": 6, "val_records": 2, "seed": 4, "progress": False, **kw}
    return out, inj.inject_contrails(FIXTURE, out, **args)


@pytest.mark.medium
def test_the_dataset_is_in_the_competition_layout_and_data_check_passes(tmp_path):
    out, summary = _write(tmp_path)
    assert summary.records == {"train": 6, "validation": 2} and summary.written == 8
    report = check_dataset(out)
    assert report.ok, report
    assert set(summary.backgrounds["validation"]).isdisjoint(summary.backgrounds["train"])
    assert len(summary.backgrounds["validation"]) == 1 and len(summary.backgrounds["train"]) == 3
    val = discover_records(out, "validation")
    assert not (val[0].path / INDIVIDUAL_MASKS_FILE).exists() and load_mask(val[0].path) is not None
    meta = json.loads((out / "train_metadata.json").read_text())
    assert sorted(m["record_id"] for m in meta) == [r.record_id for r in discover_records(out, "train")]
    assert (out / inj.FIGURE_FILE).stat().st_size > 10_000  # the before/after figure beside the records
    assert injection_backgrounds(out) == set(summary.backgrounds["train"] + summary.backgrounds["validation"])


@pytest.mark.medium
def test_same_arguments_same_bytes_and_a_rerun_resumes(tmp_path):
    out, _ = _write(tmp_path)
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.npy")}
    victim = discover_records(out, "train")[2].path
    shutil.rmtree(victim)
    inj.inject_contrails(FIXTURE, out, records=6, val_records=2, seed=4, progress=False)
    second = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.npy")}
    assert first == second
    other = tmp_path / "other"
    inj.inject_contrails(FIXTURE, other, records=6, val_records=2, seed=5, progress=False)
    assert {p.relative_to(other): p.read_bytes() for p in other.rglob("*.npy")} != first


@pytest.mark.medium
def test_a_rerun_reports_what_it_skipped(tmp_path):
    out, _ = _write(tmp_path)
    shutil.rmtree(discover_records(out, "train")[0].path)
    summary = inj.inject_contrails(FIXTURE, out, records=6, val_records=2, seed=4, progress=False)
    assert summary.written == 1 and summary.skipped == 7


@pytest.mark.medium
def test_other_arguments_into_the_same_folder_are_refused(tmp_path):
    out, _ = _write(tmp_path)
    with pytest.raises(DataError, match="--overwrite"):
        inj.inject_contrails(FIXTURE, out, records=6, val_records=2, seed=4, corridors=1.0, progress=False)


def test_records_are_chosen_and_left_out_by_id(tmp_path):
    val_ids = {r.record_id for r in discover_records(FIXTURE, "validation")}
    pool = inj.background_pool(FIXTURE, exclude_like=FIXTURE / "validation")
    assert val_ids and not val_ids & {r.record_id for r in pool} and len(pool) == 3
    only = discover_records(FIXTURE, "train")[0].record_id
    assert [r.record_id for r in inj.background_pool(FIXTURE, use=[only])] == [only]
    with pytest.raises(DataError, match="no record of .* is left"):  # a root: every split's ids go
        inj.background_pool(FIXTURE, exclude_like=FIXTURE)


def test_bad_choices_name_the_option(tmp_path):
    with pytest.raises(DataError, match=r"record 42 \(--use/--exclude\) is not in"):
        inj.background_pool(FIXTURE, exclude=["42"])
    with pytest.raises(DataError, match="no record of .* is left"):
        inj.background_pool(
            FIXTURE, exclude_like=FIXTURE / "train", use=[discover_records(FIXTURE, "train")[0].record_id]
        )
    with pytest.raises(DataError, match="--val-backgrounds is 4"):
        inj.inject_contrails(
            FIXTURE, tmp_path / "o", records=2, val_records=1, val_backgrounds=4, progress=False
        )
    with pytest.raises(DataError, match="lies inside REAL"):
        inj.inject_contrails(FIXTURE, FIXTURE / "inj", records=2, progress=False)
    assert not (FIXTURE / "inj").exists()


def test_measure_signature_on_real_crops_reads_cooling_contrails():
    sig = inj.measure_signature(discover_records(FIXTURE, "train") + discover_records(FIXTURE, "validation"))
    assert sig.contrails >= 1 and sig.band_ratio[14] == 1.0
    assert sig.contrast_quantiles_k["50"] > 0  # contrails are colder than the sky around them
    assert sig.wide_contrails == len(sig.wide_cooling_k)


@pytest.mark.slow
def test_the_commands_inject_then_compare_without_the_skies_it_used(tmp_path):
    from tests.cli.conftest import run_many

    train = [r.record_id for r in discover_records(FIXTURE, "train")]
    out = tmp_path / "inj"
    good, compare, bad = run_many(
        [
            [
                "synth",
                "inject",
                FIXTURE,
                "--out",
                out,
                "--records",
                "4",
                "--val-records",
                "0",
                "--use",
                train[0],
                "--use",
                train[1],
                "--no-progress",
            ],
            [
                "synth",
                "compare",
                FIXTURE,
                out,
                "--out",
                tmp_path / "cmp",
                "--json",
                tmp_path / "c.json",
                "--no-progress",
            ],
            ["synth", "inject", FIXTURE, "--out", tmp_path / "x", "--exclude", "123", "--no-progress"],
        ],
        tmp_path,
    )
    assert good.code == 0 and "4 record(s) written" in good.out, good
    assert len(discover_records(out, "train")) == 4
    doc = json.loads((tmp_path / "c.json").read_text())
    syn = doc["classifier"]["synthetic"]
    # 2 of the 4 real records are the injected set's skies: the classifier meets only the other 2.
    assert syn["real_records_left_out"] == 2 and syn["train_records"][0] + syn["test_records"][0] == 2
    assert "2 real records left out: SYNTH's skies" in compare.out, compare
    assert bad.code != 0 and "record 123 (--use/--exclude) is not in" in bad.error(), bad
    assert not (tmp_path / "x").exists()


def test_the_band_shares_are_those_of_real_contrails():
    # The fixture's 4 real contrails (crops of the sample the constants were measured on) give each band's
    # share of band 14's cooling within 0.15 of the constant, in the same order: a swapped or mistyped
    # constant would not.
    sig = inj.measure_signature(discover_records(FIXTURE, "train") + discover_records(FIXTURE, "validation"))
    for b in BANDS:
        assert abs(sig.band_ratio[b] - inj.BAND_RATIO[b]) < 0.15, b
    order = sorted(BANDS, key=inj.BAND_RATIO.__getitem__)
    assert order[-2:] == [14, 15] and order[:2] == [8, 9]
    assert sorted(BANDS, key=sig.band_ratio.__getitem__)[-2:] == [14, 15]


def test_validation_skies_are_apart_shared_or_absent_as_asked():
    pool = inj.background_pool(FIXTURE)
    apart = inj.split_backgrounds(pool, val_records=4, val_backgrounds=2, seed=0)
    assert len(apart["validation"]) == 2 and not set(apart["validation"]) & set(apart["train"])
    assert len(apart["validation"] + apart["train"]) == len(pool) and set(apart["train"]) <= set(pool)
    shared = inj.split_backgrounds(pool, val_records=4, val_backgrounds=0, seed=0)
    assert shared["validation"] == shared["train"] == pool
    assert inj.split_backgrounds(pool, val_records=0, val_backgrounds=None, seed=0)["validation"] == []
    # Spread over the skies ranked by their own contrail pixels: the richest one always trains.
    richest = max(pool, key=lambda r: (int(load_mask(r.path).sum()), r.record_id))
    for v in (1, 2, 3):
        split = inj.split_backgrounds(pool, val_records=4, val_backgrounds=v, seed=0)
        assert richest in split["train"] and len(split["validation"]) == v


@pytest.mark.medium
def test_aged_wide_contrails_are_drawn_colder_than_young_ones():
    young, wide = [], []
    for seed in range(60):
        labelled, _ = inj.draw_lines(np.random.default_rng(seed), 256)
        for c in labelled:
            (wide if c.width >= inj.WIDE_PX else young).append(c.contrast(0.0))
    assert len(wide) >= 5 and len(young) >= 100
    ratio = np.median(wide) / np.median(young)
    # The measured medians, drawn through their gains: 4.62 × 0.82 against ~2.38 × 0.72 (young lines that
    # pass the labelling rules are a little stronger than drawn).
    assert 1.5 < ratio < 3.0, ratio

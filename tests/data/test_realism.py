"""`segladder synth compare`: its measures on hand-made masks, and its verdicts on the real fixture."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from segladder.data.realism import (
    ROWS,
    RecordStats,
    annotator_agreement,
    circular_wasserstein,
    compare_rows,
    contrail_components,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "opencontrails_crops"
ROW_NAMES = [spec.name for spec in ROWS]
# Rows that read band 14 (directly, as a split-window difference, or through ash RGB).
VAL_ID = "1002777035567823518"
READS_B14 = {"bt_14", "diff_15_14", "diff_14_11", "ash_r", "ash_g", "ash_b", "frame_change"}


def compare(capsys, *args) -> tuple[int, str, str]:
    from segladder.cli import run

    code = run(["synth", "compare", *[str(a) for a in args], "--no-progress", "--workers", "1"])
    out, err = capsys.readouterr()
    return code, out, err


def test_contrail_components_measure_width_length_and_orientation():
    mask = np.zeros((40, 40), np.uint8)
    mask[2, 5:15] = 1  # horizontal, 10 × 1
    mask[10:22, 30:33] = 1  # vertical bar, 3 wide, 12 long
    for i in range(8):  # down-right diagonal: on a map (y up) it points to −45°, i.e. 135°
        mask[25 + i, 2 + i] = 1
    mask[38, 38] = 1  # a single pixel: no orientation
    comps = contrail_components(mask)
    assert len(comps) == 4
    by_length = {round(c[1]): c for c in comps}
    np.testing.assert_allclose(by_length[10], [1.0, 10.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(by_length[12], [3.0, 12.0, 90.0], atol=1e-9)
    diag = comps[np.nanargmin(np.abs(comps[:, 2] - 135))]
    assert diag[2] == pytest.approx(135.0) and diag[1] == pytest.approx(7 * np.sqrt(2) + 1)
    single = comps[comps[:, 1] == 1][0]
    assert single[0] == 1 and np.isnan(single[2])


def test_annotator_agreement_is_the_mean_pairwise_iou_of_those_who_marked():
    ind = np.zeros((4, 4, 1, 4), np.int32)
    ind[0, :, 0, 0] = 1  # annotator 0: four pixels
    ind[0, :2, 0, 1] = 1  # annotator 1: two of them; annotators 2 and 3 mark nothing
    # Pairs with a union: (0,1) IoU 0.5, (0,2), (0,3), (1,2), (1,3) IoU 0; (2,3) has no union and is left out.
    assert annotator_agreement(ind) == pytest.approx(0.1)
    assert annotator_agreement(np.zeros((4, 4, 1, 4), np.int32)) is None


def test_orientations_are_compared_on_a_circle():
    a, b = np.full(50, 5.0), np.full(50, 175.0)
    assert circular_wasserstein(a, b) == pytest.approx(10.0)  # not 170: 5° and 175° are 10° apart
    assert circular_wasserstein(a, np.full(50, 45.0)) == pytest.approx(40.0)


@pytest.mark.medium
def test_real_against_itself_is_within_every_tolerance(capsys, tmp_path):
    code, out, err = compare(
        capsys, FIXTURE, FIXTURE, "--out", tmp_path / "fig", "--json", tmp_path / "r.json"
    )
    assert code == 0, out + err
    assert "17 of 17 rows within tolerance" in out
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["ok"] is True and doc["records"] == {"real": 4, "synthetic": 4}
    assert [r["name"] for r in doc["rows"]] == ROW_NAMES
    for row in doc["rows"]:
        assert {"name", "real", "synthetic", "distance", "tolerance", "ok"} <= set(row)
        assert row["ok"] is True and row["distance"] == 0 and row["real"] == row["synthetic"], row
        assert row["tolerance"] > 0
    rows = {r["name"]: r for r in doc["rows"]}
    # Values known from the fixture: 2 of 4 records with contrails; 3 + 1 components; T15 − T14 mean.
    assert rows["records_with_contrails"]["real"] == 0.5
    assert rows["contrails_per_record"]["real"] == 1.0 and rows["contrail_width"]["n_real"] == 4
    assert rows["diff_15_14"]["real"] == pytest.approx(-3.064, abs=1e-3)
    for name in ("stats.png", "grid.png"):
        png = (tmp_path / "fig" / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.medium
def test_a_warmer_band_14_fails_exactly_the_rows_that_read_it(capsys, tmp_path):
    shifted = tmp_path / "shifted"
    shutil.copytree(FIXTURE, shifted)
    # +30 K: the fixture's four records span thick cloud and clear sky, so its own halves already differ
    # by 20.6 K in T14 and a +20 K shift would sit inside that row's tolerance.
    for path in shifted.glob("*/*/band_14.npy"):
        np.save(path, np.load(path) + np.float32(30.0))
    code, out, _ = compare(capsys, FIXTURE, shifted, "--out", tmp_path / "fig", "--json", tmp_path / "r.json")
    assert code == 1
    rows = {r["name"]: r for r in json.loads((tmp_path / "r.json").read_text())["rows"]}
    failed = {name for name, r in rows.items() if r["ok"] is False}
    assert {"bt_14", "diff_15_14", "diff_14_11"} <= failed <= READS_B14
    # A translated distribution is exactly the shift away in Wasserstein-1.
    for name in ("bt_14", "diff_15_14", "diff_14_11"):
        assert rows[name]["distance"] == pytest.approx(30.0, abs=1e-3)
    for name in set(ROW_NAMES) - READS_B14:
        assert rows[name]["distance"] == 0 and rows[name]["ok"] is True, name
    assert rows["frame_change"]["distance"] == pytest.approx(0.0, abs=1e-4)  # a constant shift does not move
    assert rows["bt_14"]["synthetic"] == pytest.approx(rows["bt_14"]["real"] + 30, abs=1e-3)
    assert sum("OUT" in line for line in out.splitlines()) == len(failed)
    assert f"{len(ROW_NAMES) - len(failed)} of {len(ROW_NAMES)} rows within tolerance" in out


@pytest.mark.medium
def test_tolerance_is_the_real_halves_distance_times_the_factor(capsys, tmp_path):
    docs = {}
    for factor in ("1", "2"):
        code, *_ = compare(
            capsys,
            FIXTURE,
            FIXTURE,
            "--out",
            tmp_path / "f",
            "--json",
            tmp_path / f"{factor}.json",
            "--factor",
            factor,
        )
        assert code == 0
        docs[factor] = {r["name"]: r for r in json.loads((tmp_path / f"{factor}.json").read_text())["rows"]}
    floors = {spec.name: spec.floor for spec in ROWS}
    for name in ROW_NAMES:
        one, two = docs["1"][name], docs["2"][name]
        half = one["half_distance"]
        if half is None:  # a half without the data: the floor alone
            assert one["tolerance"] == two["tolerance"] == floors[name], name
        else:
            assert one["tolerance"] == pytest.approx(max(half, floors[name])), name
            assert two["tolerance"] == pytest.approx(max(2 * half, floors[name])), name
    assert docs["2"]["bt_14"]["tolerance"] == pytest.approx(2 * docs["1"]["bt_14"]["tolerance"])
    # The two halves of the fixture: {empty, one-annotator} and {contrails, validation}: no contrail in one.
    assert docs["1"]["contrail_width"]["half_distance"] is None


@pytest.mark.medium
def test_rows_that_need_what_records_lack_are_skipped(capsys, tmp_path):
    # Two validation records (the fixture's, and a copy under another id): pixel masks only, one contrail.
    real = tmp_path / "val-only"
    shutil.copytree(FIXTURE / "validation", real / "validation")
    shutil.copytree(real / "validation" / VAL_ID, real / "validation" / "1002777035567823519")
    code, out, _ = compare(capsys, real, real, "--out", tmp_path / "fig", "--json", tmp_path / "r.json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads((tmp_path / "r.json").read_text())["rows"]}
    assert rows["annotator_agreement"]["skipped"] == "no individual masks in REAL"
    assert rows["annotator_agreement"]["ok"] is None and rows["annotator_agreement"]["distance"] is None
    for name in ("contrail_width", "contrail_length", "contrail_orientation"):
        assert rows[name]["skipped"] == "REAL has 2 contrail(s), fewer than 4", name
    assert rows["bt_14"]["skipped"] is None and rows["bt_14"]["ok"] is not None
    assert "skipped: no individual masks in REAL" in " ".join(out.split()) and "4 skipped" in out


@pytest.mark.medium
def test_without_synth_a_fresh_set_of_the_generator_is_measured(capsys, tmp_path):
    code, out, _ = compare(
        capsys, FIXTURE, "--records", "3", "--out", tmp_path / "fig", "--json", tmp_path / "r.json"
    )
    assert code in (0, 1)
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["records"] == {"real": 4, "synthetic": 3}
    assert doc["synthetic"] == "3 records of `segladder synth contrails` (seed 0, 32²)"
    assert doc["ok"] is (code == 0)
    assert (tmp_path / "fig" / "grid.png").exists()


def test_bad_input_is_one_error_line(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    shutil.copytree(FIXTURE / "validation", tmp_path / "one" / "validation")
    for args, pattern in (
        ([tmp_path / "empty"], "holds no records"),
        ([FIXTURE / "validation" / VAL_ID], "holds no records"),
        ([tmp_path / "one"], "1 record: the tolerances need at least 2"),
        ([tmp_path / "nowhere"], "nowhere does not exist"),
        ([FIXTURE, FIXTURE, "--factor", "3"], "--factor 3.0: a tolerance is 1 to 2 times"),
    ):
        code, out, err = compare(capsys, *args, "--out", tmp_path / "fig")
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(lines) == 1 and pattern in lines[0], (args, err)
        assert "Traceback" not in out + err


def test_synth_at_another_size_is_refused_before_any_reading(capsys, tmp_path):
    """The fixture's records are 32²: a 16² synthetic set would be compared at another scale."""
    from segladder.data.synth import generate_contrails

    generate_contrails(tmp_path / "s16", records=2, val_records=0, test_records=0, size=16, progress=False)
    code, out, err = compare(capsys, FIXTURE, tmp_path / "s16", "--out", tmp_path / "fig")
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    assert "32² records and SYNTH" in lines[0] and "16² ones" in lines[0] and "--size 32" in lines[0]
    assert not (tmp_path / "fig").exists()


def _stats(rid: str, split: str, t14: float, angles: list[float]) -> RecordStats:
    pixels = {name: np.full(16, 0.5) for name in ("bt_11", "bt_13", "bt_15", "diff_15_14", "diff_14_11")}
    pixels |= {"bt_14": np.full(16, t14), "ash_r": np.zeros(16), "ash_g": np.zeros(16), "ash_b": np.zeros(16)}
    comps = np.array([[1.0, 20.0, a] for a in angles]).reshape(-1, 3)
    return RecordStats(rid, split, Path(rid), pixels, 1.0, 0.01, comps, None)


def test_rows_from_hand_made_records_use_the_circle_and_the_floor():
    # Real: halves (sorted by split, id; alternating) are {1, 3} and {2, 4}, identical in every statistic.
    real = [
        _stats("1", "train", 280.0, [5.0, 175.0]),
        _stats("2", "train", 280.0, [5.0, 175.0]),
        _stats("3", "train", 290.0, [5.0, 175.0]),
        _stats("4", "train", 290.0, [5.0, 175.0]),
    ]
    synth = [_stats("9", "train", 285.0, [0.0, 0.0])]
    rows = {r.name: r for r in compare_rows(real, synth)}
    orient = rows["contrail_orientation"]
    assert orient.distance == pytest.approx(5.0)  # on a line it would be 87.5°
    assert orient.half_distance == 0 and orient.tolerance == 5.0 and orient.ok  # the floor, not zero
    assert rows["bt_14"].distance == pytest.approx(5.0) and rows["bt_14"].half_distance == 0
    assert rows["bt_14"].tolerance == 0.5 and rows["bt_14"].ok is False
    assert rows["bt_11"].distance == 0 and rows["bt_11"].ok
    assert rows["annotator_agreement"].skipped == "no individual masks in REAL"


@pytest.mark.medium
def test_the_statistics_import_no_torch():
    import subprocess
    import sys

    code = "import sys, segladder.data.realism, segladder.data.synth; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_the_command_generates_as_many_records_as_the_library_by_default():
    """The CLI writes the default out (importing realism would slow every command's start); they must agree."""
    import inspect

    import typer

    from segladder.cli.app import app
    from segladder.data.realism import DEFAULT_SYNTH_RECORDS, compare_datasets

    params = typer.main.get_command(app).commands["synth"].commands["compare"].params
    (records,) = [p for p in params if p.name == "records"]
    assert records.default == DEFAULT_SYNTH_RECORDS
    assert inspect.signature(compare_datasets).parameters["synth_records"].default == DEFAULT_SYNTH_RECORDS

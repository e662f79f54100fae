"""The patch classifier of `synth compare`: what it samples, and that it tells a difference apart from none."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from segladder.data.realism import dataset_refs
from segladder.data.realism_classifier import PATCH, realism_auc, record_patches

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "opencontrails_crops"


def _record(root: Path, size: int, t14: float, mask_at: tuple[int, int] | None) -> Path:
    rec = root / "train" / "r1"
    rec.mkdir(parents=True)
    for band in range(8, 17):
        value = t14 - 3.0 if band == 11 else (t14 + 1.0 if band == 15 else t14)
        np.save(rec / f"band_{band:02d}.npy", np.full((size, size, 8), value, np.float32))
    mask = np.zeros((size, size, 1), np.int32)
    if mask_at is not None:
        mask[mask_at[0], mask_at[1], 0] = 1
    np.save(rec / "human_pixel_masks.npy", mask)
    return rec


def test_record_patches_scale_temperatures_and_centre_half_on_contrails(tmp_path):
    rec = _record(tmp_path, 80, 285.0, mask_at=(70, 5))
    p = record_patches(rec, 10, PATCH, np.random.default_rng(0))
    assert p.shape == (10, 3, PATCH, PATCH) and p.dtype == np.float32
    # T14 − 260 over 25, T15 − T14 over 3, T14 − T11 over 5: channel order and scale both show.
    assert np.allclose(p[:, 0], 1.0) and np.allclose(p[:, 1], 1 / 3) and np.allclose(p[:, 2], 3 / 5)
    small = _record(tmp_path / "s", 20, 250.0, mask_at=None)
    assert record_patches(small, 4, PATCH, np.random.default_rng(0)).shape == (4, 3, 20, 20)


def test_record_patches_put_half_their_centres_on_the_mask(tmp_path):
    rec = _record(tmp_path, 96, 270.0, mask_at=(90, 3))
    bands = np.zeros((96, 96), np.float32)
    bands[90, 3] = 25.0  # a hot pixel where the only contrail pixel is: every mask-centred patch holds it
    orig = np.load(rec / "band_14.npy")
    np.save(rec / "band_14.npy", orig + bands[..., None])
    p = record_patches(rec, 16, PATCH, np.random.default_rng(1))
    holds = (p[:, 0] > 1.0).any(axis=(1, 2))  # 0.4 everywhere but the hot pixel, 1.4
    assert holds[:8].all() and holds.sum() < 16


@pytest.mark.medium
def test_the_classifier_tells_a_warmer_copy_apart_and_not_the_same_records(tmp_path):
    shifted = tmp_path / "shifted"
    shutil.copytree(FIXTURE, shifted)
    for path in shifted.glob("*/*/band_14.npy"):  # +6 K in T14 moves all three channels
        np.save(path, np.load(path) + np.float32(6.0))
    real = dataset_refs(FIXTURE)
    apart = realism_auc(real, dataset_refs(shifted))
    assert apart.auc > 0.95 and apart.train_records == (2, 2) and apart.test_records == (2, 2)
    same = realism_auc(real, dataset_refs(FIXTURE))
    assert 0.25 < same.auc < 0.75, same  # the very same records: nothing to learn but noise


@pytest.mark.medium
def test_compare_reports_the_classifier_and_can_leave_it_out(capsys, tmp_path):
    from segladder.cli import run

    args = ["synth", "compare", str(FIXTURE), str(FIXTURE), "--no-progress", "--out", str(tmp_path / "f")]
    assert run([*args, "--json", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    doc = json.loads((tmp_path / "a.json").read_text())
    assert (
        set(doc["classifier"]) == {"synthetic", "floor"} and 0.0 <= doc["classifier"]["synthetic"]["auc"] <= 1
    )
    assert doc["classifier"]["floor"]["train_records"] == (1, 1) or doc["classifier"]["floor"][
        "train_records"
    ] == [
        1,
        1,
    ]
    assert "patch classifier AUC, synthetic vs real:" in out and "real vs real:" in out
    assert run([*args, "--json", str(tmp_path / "b.json"), "--no-classifier"]) == 0
    assert "patch classifier" not in capsys.readouterr().out
    assert json.loads((tmp_path / "b.json").read_text())["classifier"] is None

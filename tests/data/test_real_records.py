"""The real path end to end on real OpenContrails records (tests/fixtures/opencontrails_crops, CC BY 4.0).

check → prepare → soft labels → one training step → predict → submission, through the commands users run.
The fixture holds four real records cropped to 32×32 (see its NOTICE and scripts/make_real_fixture.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "opencontrails_crops"
TRAIN_IDS = ["1000216489776414077", "1002294268041839364", "1010450737335314351"]
VAL_IDS = ["1002777035567823518"]


def invoke(*args) -> str:
    from segladder.cli import _register, app

    _register()
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


def rle_to_mask(rle: str, h: int, w: int) -> np.ndarray:
    """Decode a competition RLE (1-indexed starts, column-major) without segladder's decoder."""
    flat = np.zeros(h * w, np.uint8)
    if rle != "-":
        nums = [int(x) for x in rle.split()]
        for start, length in zip(nums[::2], nums[1::2], strict=True):
            flat[start - 1 : start - 1 + length] = 1
    return flat.reshape(w, h).T  # pixels were numbered top to bottom, then left to right


def test_the_fixture_looks_real():
    """Ash RGB at the labelled frame as measured on real records, far from the old synthetic 0.68 red."""
    from segladder.data.contrails import ash_rgb, discover_records

    means = {}
    for split in ("train", "validation"):
        for ref in discover_records(FIXTURE, split):
            means[ref.record_id] = ash_rgb(ref.path, [4])[0].reshape(-1, 3).mean(0)
    assert sorted(means) == sorted(TRAIN_IDS + VAL_IDS)
    pooled = np.mean(list(means.values()), axis=0)
    assert 0.04 <= pooled[0] <= 0.26, pooled  # real OpenContrails records' ash red mean: 0.04–0.26
    assert means["1002294268041839364"] == pytest.approx([0.0836, 0.7570, 0.7961], abs=1e-3)
    assert means["1002777035567823518"] == pytest.approx([0.0023, 0.6068, 0.8108], abs=1e-3)
    assert means["1000216489776414077"][2] == pytest.approx(0.2911, abs=1e-3)  # thick cold cloud


def test_masks_and_soft_labels_are_the_annotators(tmp_path):
    """The pixel mask is the > 50 % majority, and the cache's soft label is the annotators' mean × 255."""
    invoke("data", "prepare", FIXTURE, "--out", tmp_path / "cache", "--frames", "4", "--workers", "1")
    cache = tmp_path / "cache" / "train"
    ids = json.loads((cache / "ids.json").read_text())
    assert ids == TRAIN_IDS
    soft = np.load(cache / "soft.npy")
    masks = np.load(cache / "masks.npy")
    assert soft.shape == (3, 32, 32)  # the records' own size: no resizing without --size
    for row, rid in enumerate(ids):
        ind = np.load(FIXTURE / "train" / rid / "human_individual_masks.npy")
        assert ind.shape == (32, 32, 1, 4) and ind.dtype == np.int32
        votes = ind[:, :, 0, :].astype(np.int64).sum(-1)
        expected = np.floor(votes * 255 / 4 + 0.5).astype(np.uint8)  # 0, 64, 128, 191, 255
        np.testing.assert_array_equal(soft[row], expected)
        np.testing.assert_array_equal(masks[row], (2 * votes > 4).astype(np.uint8))
    # The record where one annotator of four marked 89 pixels: a soft label of 0.25 there, no hard label.
    one = ids.index("1010450737335314351")
    assert (soft[one] == 64).sum() == 89 and soft[one].max() == 64 and masks[one].sum() == 0
    assert masks[ids.index("1002294268041839364")].sum() == 242
    assert soft[ids.index("1000216489776414077")].max() == 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`data check`, `data prepare --size 64` (twice the records' 32²), one training step, `predict`."""
    base = tmp_path_factory.mktemp("real")
    out = invoke("data", "check", FIXTURE, "--workers", "1")
    assert "checked 4 records (3 train, 1 validation)" in out and "all good" in out
    cache, run, pred = base / "cache", base / "run", base / "pred"
    invoke("data", "prepare", FIXTURE, "--out", cache, "--size", "64", "--frames", "3,4", "--workers", "1")
    invoke(
        "train",
        "tiny_synthetic",
        "--set",
        f"data.root={cache}",
        "trainer.max_epochs=1",
        "trainer.progress=false",
        "trainer.overlays=0",
        "seed=3",
        "--out",
        run,
    )
    # The 90th percentile of the predicted pixels: a mask that is neither empty nor full.
    invoke(
        "predict",
        run / "checkpoints" / "last.ckpt",
        "--data",
        FIXTURE,
        "--split",
        "train",
        "--percentile",
        "90",
        "--out",
        pred,
        "--device",
        "cpu",
    )
    return {"cache": cache, "run": run, "pred": pred}


@pytest.mark.medium
def test_one_training_step_on_real_records(trained):
    metrics = json.loads((trained["run"] / "metrics.json").read_text())
    (epoch,) = metrics["epochs"]
    assert np.isfinite(epoch["train/loss_epoch"]) and 0 <= epoch["val/dice_best"] <= 1
    ckpt = torch.load(trained["run"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 1  # 3 training records, batch 8: one optimiser step
    assert ckpt["segladder"]["stats"]["channels"] == ["ash_r", "ash_g", "ash_b"]


@pytest.mark.medium
def test_prediction_and_submission_at_the_records_own_size(trained):
    pred = trained["pred"]
    summary = json.loads((pred / "predict.json").read_text())
    th = summary["threshold"]
    rows = (pred / "submission.csv").read_text().splitlines()
    assert rows[0] == "record_id,encoded_pixels"
    rles = dict(r.split(",") for r in rows[1:])
    assert sorted(rles) == TRAIN_IDS
    positive = 0
    for rid, rle in rles.items():
        probs = np.load(pred / "probs" / f"{rid}.npy")
        mask = np.load(pred / "masks" / f"{rid}.npy")
        assert probs.shape == mask.shape == (32, 32)  # the model ran at 64², the records are 32²
        np.testing.assert_array_equal(mask, (probs > th).astype(np.uint8))
        np.testing.assert_array_equal(rle_to_mask(rle, 32, 32), mask)
        positive += int(mask.sum())
    # About 10 % of the 3 × 1024 pixels (ties in float16 aside): the decoded masks are not trivial.
    assert 0.05 * 3072 <= positive <= 0.12 * 3072, positive
    assert summary["positive_pixels"] == positive
    assert invoke("submission", "check", pred / "submission.csv", "--data", FIXTURE, "--split", "train")


@pytest.mark.parametrize("source", ["raw", "cache"])
def test_train_and_validation_join_with_the_pixel_mask_as_the_validation_soft_label(tmp_path, source):
    """`data.train_split=train+validation` on real records: validation has no individual masks, so its pixel
    mask is its soft label and the batch collates; the training records keep their annotators' mean."""
    from segladder.config import build_config
    from segladder.data.datasets import decode_batch
    from segladder.data.module import ContrailsDataModule

    root = FIXTURE
    if source == "cache":
        root = tmp_path / "cache"
        invoke("data", "prepare", FIXTURE, "--out", root, "--frames", "4", "--workers", "1")
    data = {"root": str(root), "frames": [4], "image_size": 32, "batch_size": 4, "num_workers": 0}
    data["train_split"] = "train+validation"
    dm = ContrailsDataModule(build_config({"data": data}).data, seed=0)
    dm.build_train()
    batch = decode_batch(next(iter(dm.train_dataloader())))  # the cache's batches travel as uint8
    assert sorted(batch["record_id"]) == sorted(TRAIN_IDS + VAL_IDS)
    soft, mask = {}, {}
    for i, rid in enumerate(batch["record_id"]):
        soft[rid], mask[rid] = batch["soft"][i, 0].float(), batch["mask"][i, 0].float()
    assert mask[VAL_IDS[0]].sum() > 0 and torch.equal(soft[VAL_IDS[0]], mask[VAL_IDS[0]])
    # The record one annotator of four marked: an empty pixel mask, a soft label of 0.25 where they drew.
    lone = "1010450737335314351"
    assert mask[lone].sum() == 0 and soft[lone].max() == pytest.approx(0.25, abs=0.01)

"""The ladder report's pictures and worst records come from what `evaluate` scores, record by record."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from segladder.config import build_config
from segladder.inference.checkpoint import load_checkpoint
from segladder.inference.evaluate import evaluate
from segladder.inference.inputs import InputSpec
from segladder.report import record_predictions
from segladder.training.build import build_datamodule
from tests.inference.helpers import make_checkpoint


@pytest.fixture(scope="module")
def cache(synth_root, tmp_path_factory):
    from segladder.data.cache import CacheOptions, prepare_cache

    out = tmp_path_factory.mktemp("report-cache") / "cache"
    prepare_cache(
        synth_root, out, CacheOptions(frames=(0, 1, 2, 3, 4), image_size=32), workers=1, progress=False
    )
    return out


@pytest.mark.medium
def test_report_per_record_dice_is_evaluates(cache, tmp_path):
    ckpt = make_checkpoint(tmp_path / "best.ckpt", seed=1)
    # A threshold at the median probability of the decoded records, so the masks are neither empty nor full.
    ck = load_checkpoint(ckpt)
    spec_ds = InputSpec.from_checkpoint(ck).dataset(cache, "validation")
    with torch.no_grad():
        p = torch.sigmoid(ck.model(torch.stack([spec_ds[i]["image"] for i in range(len(spec_ds))])))
    ckpt = make_checkpoint(tmp_path / "best.ckpt", seed=1, threshold=float(p.median()))

    # The ladder's validation set: the data module's, which hands out stored uint8 bytes.
    dm = build_datamodule(
        build_config(
            {"data": {"root": str(cache), "image_size": 32, "frames": [0, 1, 2, 3, 4], "val_records": 3}}
        )
    )
    dm.build_val()
    assert dm.val_set[0]["image"].dtype == torch.uint8  # what the report must not feed the model
    scores = record_predictions({"U": ckpt}, dm.val_set)["U"]

    evaluate(ckpt, cache, "validation", out=tmp_path / "eval", progress=False)
    with open(tmp_path / "eval" / "per_record.csv") as fh:
        evaluated = {row["record_id"]: float(row["dice"]) for row in csv.DictReader(fh)}
    assert len(scores.record_ids) == 3 and scores.record_ids == [dm.val_set[i]["record_id"] for i in range(3)]
    assert scores.dice.tolist() == pytest.approx([evaluated[r] for r in scores.record_ids], abs=1e-12)
    assert len(set(np.round(scores.dice, 6))) > 1  # not a constant (all-empty or all-full) prediction


def test_report_md_and_json_give_the_same_final_loss(tmp_path):
    import json

    from segladder.ladder import LadderResult, RungResult
    from segladder.report import write_report

    # The epoch mean and the end-of-training loss differ; both files give the one the gates read.
    epochs = [{"epoch": 0, "train/loss_epoch": 0.9, "train/loss_end": 0.4, "val/dice_best": 0.3}]
    rung = RungResult("ResNet18_U", "passed", metrics={"epochs": epochs, "final": epochs[-1]})
    md = write_report(LadderResult([rung], tmp_path), None).read_text()
    loss = json.loads((tmp_path / "report.json").read_text())["rungs"][0]["loss"]
    row = next(line for line in md.splitlines() if line.startswith("| ResNet18_U |"))
    assert loss == 0.4 and row.split("|")[4].strip() == "0.4000"

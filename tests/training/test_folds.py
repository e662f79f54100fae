"""Cross-validation: folds as data, K-fold training, out-of-fold choices and the fold ensemble's submission."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from segladder.cli import _register, app
from segladder.data.folds import assign_folds, make_folds, read_folds
from segladder.errors import DataError
from segladder.inference.errors import InferenceError
from segladder.inference.evaluate import evaluate
from segladder.inference.folds import read_fold_ensemble
from segladder.inference.submission import check_submission
from segladder.metrics import ThresholdSweepDice
from segladder.training.folds import MIN_COMPONENT_GRID, _best_min_component, train_folds
from tests.training.conftest import quick_config


def test_groups_stay_whole_and_folds_are_stratified():
    groups = [f"g{i // 3}" for i in range(30)]  # ten groups of three
    positive = [i % 2 == 0 for i in range(30)]
    folds = assign_folds(groups, positive, k=5, seed=1)
    for g in set(groups):
        assert len({f for f, gg in zip(folds, groups, strict=True) if gg == g}) == 1
    sizes = np.bincount(folds, minlength=5)
    pos = np.bincount(folds, weights=positive, minlength=5)
    assert sizes.tolist() == [6] * 5 and pos.max() - pos.min() <= 2
    assert folds == assign_folds(groups, positive, k=5, seed=1)  # reproducible from the seed
    with pytest.raises(DataError, match="only 10 group"):
        assign_folds(groups, positive, k=11)


def test_by_time_keeps_a_time_cluster_together(synth_copy, tmp_path):
    meta_path = synth_copy / "train_metadata.json"
    meta = json.loads(meta_path.read_text())
    # Three bursts of records ten minutes apart inside a burst, days apart between bursts.
    for i, m in enumerate(meta):
        m["timestamp"] = 1.6e9 + (i % 3) * 86400 * 3 + (i // 3) * 600
    meta_path.write_text(json.dumps(meta))
    rows = make_folds(synth_copy, tmp_path / "folds.csv", k=3, by="time", window_minutes=30)
    cluster_of = {m["record_id"]: i % 3 for i, m in enumerate(meta)}
    for c in range(3):
        assert len({r.fold for r in rows if cluster_of[r.record_id] == c}) == 1
    assert len({r.fold for r in rows}) == 3
    back = read_folds(tmp_path / "folds.csv")
    assert [(r.record_id, r.fold) for r in back] == [(r.record_id, r.fold) for r in rows]
    assert len({(r.split, r.record_id) for r in back}) == len(back)  # no record in two folds


def test_bad_fold_inputs_are_one_clear_line(synth_copy, tmp_path):
    with pytest.raises(DataError, match="--group-key nope: not a metadata field"):
        make_folds(synth_copy, tmp_path / "f.csv", k=2, by="group", group_key="nope")
    with pytest.raises(DataError, match="folds file .* does not exist"):
        read_folds(tmp_path / "missing.csv")
    (tmp_path / "bad.csv").write_text("record_id,split\n1,train\n")
    with pytest.raises(DataError, match="missing column"):
        read_folds(tmp_path / "bad.csv")


def test_min_component_choice_matches_a_hand_computation(tmp_path):
    oof = tmp_path / "oof"
    oof.mkdir()
    p = np.zeros((16, 16), np.float16)
    truth = np.zeros((16, 16), np.float16)
    p[2:6, 2:6] = 0.9  # a 16-pixel true blob
    truth[2:6, 2:6] = 1
    p[10:12, 10:13] = 0.8  # a 6-pixel false blob: removed by min sizes >= 10
    np.save(oof / "a.npy", np.stack([p, truth]))
    size, dice = _best_min_component(oof, ["a"], 0.5)
    # min 0 or 5: Dice = 2·16 / (22 + 16) = 0.842; min 10: 2·16/(16+16) = 1; min 20 and up drop the true
    # blob too: nothing kept, 0.
    assert size == 10 and dice == pytest.approx(1.0)
    assert MIN_COMPONENT_GRID[:4] == (0, 5, 10, 20)
    # Without the false blob, 0, 5 and 10 tie at Dice 1: the smallest (no removal) wins.
    p[10:12, 10:13] = 0
    np.save(oof / "b.npy", np.stack([p, truth]))
    assert _best_min_component(oof, ["b"], 0.5) == (0, pytest.approx(1.0))


@pytest.mark.slow
def test_folds_to_a_submission(train_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(train_root, data)
    from segladder.data.synth import generate_contrails

    generate_contrails(
        tmp_path / "with_test", records=2, val_records=0, test_records=3, size=64, seed=9, progress=False
    )
    shutil.copytree(tmp_path / "with_test" / "test", data / "test", dirs_exist_ok=True)
    _register()
    runner = CliRunner()
    res = runner.invoke(app, ["data", "folds", str(data), "--k", "3", "--out", str(tmp_path / "folds.csv")])
    assert res.exit_code == 0, res.output
    cfg = quick_config(
        data,
        **{
            "data.folds": str(tmp_path / "folds.csv"),
            "trainer.max_epochs": 1,
            "trainer.limit_train_batches": 2,
            "model.name": "ResNet18_Simple",
            "data.frames": "[3,4]",
            "trainer.overlays": 0,
        },
    )
    run = tmp_path / "cv"
    first = train_folds(cfg, run, only=[0], progress=False)
    assert first.ensemble is None and (run / "fold_0" / "fold_done.json").exists()
    done = train_folds(cfg, run, progress=False)  # continues: fold 0 kept, folds 1 and 2 trained
    ens = done.ensemble
    assert ens is not None and len(ens.checkpoints) == 3 and ens.oof_records == 40
    assert ens.min_component in MIN_COMPONENT_GRID
    # The chosen threshold is the best of the pooled out-of-fold maps (re-read from oof/, stored as fp16).
    sweep = ThresholdSweepDice()
    maps = sorted((run / "oof").glob("*.npy"))
    assert len(maps) == 40
    for path in maps:
        p, m = np.load(path).astype(np.float32)
        sweep.update(torch.from_numpy(p)[None], torch.from_numpy(m)[None])
    swept = sweep.compute()
    curve = dict(zip(np.round(swept["thresholds"].numpy(), 4).tolist(), swept["curve"].tolist(), strict=True))
    assert curve[round(ens.threshold, 4)] == pytest.approx(float(swept["dice_best"]), abs=2e-3)
    assert ens.oof_dice_at_0_5 == pytest.approx(curve[0.5], abs=2e-3)
    assert (
        ens.oof_dice >= curve[round(ens.threshold, 4)] - 2e-3
    )  # component removal never loses (0 is a choice)
    for name in ("ensemble.json", "folds_summary.json", "folds_summary.png", "oof_threshold_curve.png"):
        assert (run / name).exists(), name
    summary = json.loads((run / "folds_summary.json").read_text())
    assert summary["mean"] == pytest.approx(np.mean(ens.fold_dice))
    assert read_fold_ensemble(run).threshold == ens.threshold
    res = runner.invoke(
        app,
        [
            "predict",
            str(run),
            "--folds",
            "--data",
            str(data),
            "--split",
            "test",
            "--out",
            str(tmp_path / "pred"),
        ],
    )
    assert res.exit_code == 0, res.output
    predicted = json.loads((tmp_path / "pred" / "predict.json").read_text())
    assert predicted["threshold"] == pytest.approx(ens.threshold) and len(predicted["models"]) == 3
    assert check_submission(tmp_path / "pred" / "submission.csv", data, "test") == []
    # The fold ensemble through evaluate and export, as the issue asks: same threshold, same maps.
    res = runner.invoke(
        app, ["evaluate", str(run), "--folds", "--data", str(data), "--out", str(tmp_path / "ev")]
    )
    assert res.exit_code == 0, res.output
    scored = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert scored["fold_ensemble"] and len(scored["checkpoints"]) == 3
    assert scored["stored_threshold"] == pytest.approx(ens.threshold)
    assert scored["min_component"] == ens.min_component and "after removing components" in res.output
    if ens.min_component == 0:  # nothing removed: the post-processed Dice is the plain one
        assert scored["dice_after_min_component"] == pytest.approx(
            scored["dice_at_stored_threshold"], abs=1e-6
        )
    onnx_path = tmp_path / "cv.onnx"
    res = runner.invoke(
        app, ["export", "onnx", str(run), "--folds", "--out", str(onnx_path), "--data", str(data)]
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app,
        [
            "predict",
            "--onnx",
            str(onnx_path),
            "--data",
            str(data),
            "--split",
            "test",
            "--out",
            str(tmp_path / "po"),
        ],
    )
    assert res.exit_code == 0, res.output
    via_onnx = json.loads((tmp_path / "po" / "predict.json").read_text())
    assert via_onnx["threshold"] == pytest.approx(ens.threshold)
    assert via_onnx["min_component"] == predicted["min_component"] == ens.min_component
    maps = sorted((tmp_path / "pred" / "probs").glob("*.npy"))
    assert len(maps) == 3
    for path in maps:
        a = np.load(path).astype(np.float32)
        b = np.load(tmp_path / "po" / "probs" / path.name).astype(np.float32)
        assert np.abs(a - b).max() < 2e-3
    with pytest.raises(InferenceError, match="no ensemble.json"):
        evaluate(run / "fold_0", data, folds=True, progress=False)


@pytest.mark.parametrize("splits", [("train",), ("train", "validation")])
def test_oof_threshold_is_the_pooled_best_and_each_fold_scores_its_own_records(
    synth_root, tmp_path, monkeypatch, splits
):
    """Toy fold models give 0.25 on every contrail pixel and 0.05 elsewhere, so on the pooled maps Dice is 1
    at every threshold from 0.05 to 0.24 and 0 from 0.25 on (0.5 included): ties go to the one nearest 0.5,
    0.24. Each fold's model knows only its own held-out records, so a fold scored by another fold's model
    fails with a KeyError."""
    import segladder.training.folds as folds_mod
    from segladder.config import ExperimentConfig
    from segladder.data.datasets import dataset_from_config
    from segladder.inference.checkpoint import LoadedCheckpoint
    from segladder.training.folds import out_of_fold
    from tests.inference.helpers import Lookup, row_key

    # The validation split has no individual masks: pooled with train, its records must still collate.
    rows = make_folds(synth_root, tmp_path / "folds.csv", k=3, splits=splits)
    cfg = ExperimentConfig(data={"root": str(synth_root), "frames": [4], "image_size": 32})
    sets = {split: dataset_from_config(cfg.data, split) for split in splits}
    logit = torch.logit(torch.tensor([0.05, 0.25])).float()
    tables: list[dict] = [{} for _ in range(3)]
    for r in rows:
        ds = sets[r.split]
        item = ds[list(ds.record_ids).index(r.record_id)]
        tables[r.fold][row_key(item["image"])] = logit[(item["mask"] > 0.5).long()]
    masks = torch.stack([ds[i]["mask"] for ds in sets.values() for i in range(len(ds))])
    positives, pixels = int((masks > 0.5).sum()), masks.numel()
    assert 0 < positives < pixels / 2

    def load(path):
        fold = int(path.parent.parent.name.removeprefix("fold_"))
        return LoadedCheckpoint(Lookup(tables[fold]), cfg, 0.5, "segmentation", path)

    monkeypatch.setattr(folds_mod, "load_checkpoint", load)
    ens = out_of_fold(tmp_path / "run", rows, 3, batch_size=5, progress=False)
    assert ens.threshold == pytest.approx(0.24) and ens.oof_dice == pytest.approx(1.0)
    assert ens.oof_dice_at_0_5 == 0.0 and ens.min_component == 0
    assert ens.oof_records == len(rows) == sum(len(ds) for ds in sets.values()) == 12 + 4 * (len(splits) - 1)
    assert ens.percentile == pytest.approx(100 * (1 - positives / pixels), abs=1e-6)
    assert json.loads((tmp_path / "run" / "ensemble.json").read_text())["threshold"] == ens.threshold

"""Behaviours the configs promise, checked against values computed here from the files on disk:
data.positives_only / train_records, ClassificationTask end to end, and the epoch-end loss the ladder's gates read."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segladder.data.datasets import ContrailsDataset
from segladder.data.module import ContrailsDataModule
from segladder.errors import SegladderError
from tests.training.conftest import quick_config


def _raw_positive(root, rid: str) -> bool:
    return bool(np.load(root / "train" / rid / "human_pixel_masks.npy").any())


@pytest.mark.parametrize("source", ["raw", "cache"])
def test_positives_only_and_train_records_select_the_right_records(train_root, train_cache, source):
    root = train_root if source == "raw" else train_cache
    order = list(ContrailsDataset(root, "train", frames=[3, 4], image_size=64).record_ids)
    positives = [rid for rid in order if _raw_positive(train_root, rid)]
    assert 0 < len(positives) < len(order)  # the synthetic split holds both kinds

    def chosen(**over):
        dm = ContrailsDataModule(quick_config(root, **over).data, seed=0)
        dm.build_train()
        return [dm.train_set[i]["record_id"] for i in range(len(dm.train_set))]

    assert chosen(**{"data.positives_only": True}) == positives
    assert chosen(**{"data.train_records": 7}) == order[:7]
    assert chosen(**{"data.positives_only": True, "data.train_records": 3}) == positives[:3]


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC-AUC as the probability that a positive outscores a negative (ties count half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    return float(
        ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    )


@pytest.mark.medium
def test_classification_task_end_to_end_and_the_epoch_end_loss(train_cache, tmp_path, monkeypatch):
    from segladder.inference.checkpoint import load_checkpoint
    from segladder.inference.evaluate import evaluate
    from segladder.tasks.base import Task
    from segladder.training.run import train

    losses: list[float] = []
    step = Task.training_step

    def recorded(self, batch, batch_idx):
        loss = step(self, batch, batch_idx)
        losses.append(float(loss.detach()))
        return loss

    monkeypatch.setattr(Task, "training_step", recorded)
    # batch 2 over 24 records: 12 steps, so "the last 10 steps" differs from "the whole epoch".
    cfg = quick_config(
        train_cache,
        **{
            "task": "classification",
            "model.name": "Classifier",
            "data.batch_size": 2,
            "data.train_records": 24,
            "loss": "[{name: bce}]",
            "trainer.max_epochs": 1,
            "trainer.overlays": 0,
        },
    )
    res = train(cfg, out=tmp_path / "cls")
    final = res.metrics["final"]
    assert {"val/acc", "val/auc"} <= set(final) and "val/dice_best" not in final
    assert len(losses) == 12
    assert final["train/loss_end"] == pytest.approx(np.mean(losses[-10:]), rel=1e-5)
    assert final["train/loss_end"] != pytest.approx(np.mean(losses), rel=1e-5)

    # The best checkpoint re-scored here, by hand, gives the logged accuracy and AUC.
    ck = load_checkpoint(res.best_checkpoint)
    assert ck.task == "classification"
    val = ContrailsDataset(train_cache, "validation", frames=[3, 4], image_size=64)
    items = [val[i] for i in range(len(val))]
    with torch.no_grad():
        logits = ck.model(torch.stack([it["image"] for it in items]))
    assert logits.shape == (len(items), 1)
    scores = torch.sigmoid(logits[:, 0]).numpy()
    labels = np.array([int(it["mask"].any()) for it in items])
    assert final["val/acc"] == pytest.approx(((scores > 0.5) == labels).mean(), abs=1e-6)
    assert final["val/auc"] == pytest.approx(_auc(scores, labels), abs=1e-6)
    with pytest.raises(
        SegladderError, match="a classification checkpoint; evaluate scores segmentation masks"
    ):
        evaluate(res.best_checkpoint, train_cache, "validation", tmp_path / "eval", progress=False)


@pytest.mark.medium
@pytest.mark.parametrize("source", ["raw", "cache"])
def test_crops_train_at_native_resolution_and_validation_sees_whole_images(
    train_root, train_cache, source, tmp_path
):
    """data.augment.crop_size: training batches are the crop's side, validation keeps the records' 64²,
    and a run through `train` (one epoch) validates and checkpoints as usual."""
    from segladder.training.run import train

    root = train_root if source == "raw" else train_cache
    cfg = quick_config(root, **{"data.augment.crop_size": 24, "data.augment.crop_positive_share": 1.0})
    dm = ContrailsDataModule(cfg.data, seed=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert tuple(batch["image"].shape[-2:]) == (24, 24) and tuple(batch["mask"].shape[-2:]) == (24, 24)
    # Every crop of a record with contrails holds some (share 1.0); records without stay empty.
    has = {rid: _raw_positive(train_root, rid) for rid in batch["record_id"]}
    for rid, mask in zip(batch["record_id"], batch["mask"], strict=True):
        assert bool(mask.any()) == has[rid], rid
    val = next(iter(dm.val_dataloader()))
    assert tuple(val["image"].shape[-2:]) == (64, 64)
    if source == "cache":
        res = train(quick_config(root, **{"data.augment.crop_size": 32, "trainer.max_epochs": 1}), tmp_path)
        assert 0.0 <= res.metrics["final"]["val/dice_best"] <= 1.0
        assert res.best_checkpoint is not None and res.best_checkpoint.exists()

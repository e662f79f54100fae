"""The classification task, "does this record hold a contrail?": stage 1 of classify-then-segment."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segladder.config import ExperimentConfig
from segladder.metrics import ClassificationMetrics
from segladder.tasks.base import TASKS, LossTask


@TASKS.register("classification")
class ClassificationTask(LossTask):
    """Trains a label model; the target is whether the record's mask has any pixel. Validation: AUC, accuracy.

    Args:
        cfg: the experiment (its `loss` section is applied to the (B, 1) logits).
        model: a model whose output kind is "label".
    """

    accepts = ("label",)
    monitor = "val/auc"

    def __init__(self, cfg: ExperimentConfig, model: nn.Module):
        super().__init__(cfg, model)
        self.val_metric = ClassificationMetrics(from_logits=True)

    @staticmethod
    def labels(batch: dict) -> Tensor:
        """(B, 1) labels of a batch: whether each mask holds a contrail pixel."""
        return batch["mask"].flatten(1).amax(1, keepdim=True)

    def compute_loss(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of the logits against the per-record labels."""
        return self.loss(self(batch["image"]), {"mask": self.labels(batch)})

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Log the loss and add the batch to accuracy and ROC-AUC."""
        logits = self(batch["image"])
        labels = self.labels(batch)
        loss, _ = self.loss(logits, {"mask": labels})
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=batch["image"].shape[0])
        self.val_metric.update(logits.float(), labels)

    def on_validation_epoch_end(self) -> None:
        """Log accuracy and ROC-AUC (accuracy in its place while the labels hold one class)."""
        out = self.val_metric.compute()
        self.val_metric.reset()
        auc = out["auc"] if torch.isfinite(out["auc"]) else out["acc"]
        self.log("val/acc", out["acc"], prog_bar=True, sync_dist=True)
        self.log("val/auc", auc, prog_bar=True, sync_dist=True)

    def checkpoint_section(self) -> dict:
        """Threshold 0.5 and the data's channel statistics."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return {"threshold": 0.5, "stats": getattr(dm, "stats", None)}

"""The LightningModules: a model, its loss, its metrics and its optimiser, joined for training."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segladder.config import ExperimentConfig
from segladder.inference.checkpoint import CHECKPOINT_KEY, CHECKPOINT_VERSION
from segladder.losses import build_loss
from segladder.metrics import ClassificationMetrics, ThresholdSweepDice
from segladder.training.optim import build_optimizer, build_scheduler


class SegmentationTask(L.LightningModule):
    """Trains a mask model; validation sweeps thresholds over all pixels (global Dice, domain-facts §3)."""

    monitor = "val/dice_best"

    def __init__(self, config: dict, model: nn.Module | None = None):
        super().__init__()
        self.save_hyperparameters({"config": config}, ignore=["model"])
        self.cfg = ExperimentConfig.model_validate(config)
        if model is None:
            from segladder.models import create

            model = create(self.cfg.model.name, **self.cfg.model.kwargs)
        self.model = model
        self.loss = build_loss([t.model_dump(exclude_none=True) for t in self.cfg.loss])
        self.val_metric = self._make_metric()
        self.threshold = 0.5
        self.nonfinite = None  # set by NonFiniteGuard: which batch was skipped and why
        self._compiled: Any = None
        if self.cfg.trainer.channels_last:
            self.model.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------------------------ forward

    def _make_metric(self):
        return ThresholdSweepDice(from_logits=True)

    def configure_model(self) -> None:
        if self.cfg.trainer.compile and self._compiled is None:
            # Compiled forward kept beside the module so state_dict keys stay those of the plain model.
            object.__setattr__(self, "_compiled", torch.compile(self.model))

    def forward(self, x: Tensor) -> Tensor:
        return (self._compiled or self.model)(self._layout(x))

    def targets(self, batch: dict) -> dict[str, Tensor]:
        return batch

    # ----------------------------------------------------------------------------------- training

    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        loss, parts = self._training_loss(batch)
        if not torch.isfinite(loss):
            # Returning None makes Lightning skip backward and the optimiser step for this batch.
            self.nonfinite = {"kind": "loss", "batch": batch, "parts": {k: float(v) for k, v in parts.items()}}
            return None
        bs = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs, sync_dist=True)
        for name, value in parts.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        return loss

    def _training_loss(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        aux = self.cfg.aux
        if aux.cls_weight == 0 and not aux.seg_on_positives_only:
            return self.loss(self(batch["image"]), self.targets(batch))
        # Seed 001: a classification head beside the mask; the mask loss only where there is a contrail.
        out = self.model(self._layout(batch["image"]), aux=True) if aux.cls_weight > 0 else {"mask": self(batch["image"])}
        targets = self.targets(batch)
        positive = batch["mask"].flatten(1).amax(1) > 0.5
        if aux.seg_on_positives_only:
            keep = positive.nonzero().flatten()
            seg, parts = (self.loss(out["mask"][keep], {k: v[keep] for k, v in targets.items() if torch.is_tensor(v)})
                          if len(keep) else (out["mask"].sum() * 0.0, {}))
        else:
            seg, parts = self.loss(out["mask"], targets)
        if aux.cls_weight > 0:
            cls = F.binary_cross_entropy_with_logits(out["cls"].float().flatten(), positive.float())
            parts = {**parts, "cls": cls.detach()}
            seg = seg + aux.cls_weight * cls
        return seg, parts

    def _layout(self, x: Tensor) -> Tensor:
        if self.cfg.trainer.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def on_train_epoch_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(self.current_epoch)

    # --------------------------------------------------------------------------------- validation

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch["image"])
        loss, _ = self.loss(logits, self.targets(batch))
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=batch["image"].shape[0])
        self._update_metric(logits, batch)

    def _update_metric(self, logits: Tensor, batch: dict) -> None:
        self.val_metric.update(logits.float(), batch["mask"])

    def on_validation_epoch_end(self) -> None:
        out = self.val_metric.compute()
        self.val_metric.reset()
        self.last_curve = (out["thresholds"].cpu(), out["curve"].cpu())
        self.threshold = float(out["threshold"])
        # compute() has already reduced across processes; sync_dist only averages equal values.
        self.log("val/dice_best", out["dice_best"], prog_bar=True, sync_dist=True)
        self.log("val/threshold", out["threshold"], sync_dist=True)
        self.log("val/dice_0.5", out["dice_at_0.5"], sync_dist=True)
        self.log("val/iou", out["iou_at_best"], sync_dist=True)

    # --------------------------------------------------------------------------------- optimiser

    def configure_optimizers(self):
        opt = build_optimizer(self.model, self.cfg.optim)
        total = self._total_steps()
        sched = build_scheduler(opt, self.cfg.optim, total)
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _total_steps(self) -> int:
        t = self.trainer
        if t.max_steps and t.max_steps > 0:
            return t.max_steps
        return max(1, int(t.estimated_stepping_batches)) if math.isfinite(t.estimated_stepping_batches) else 1

    # ------------------------------------------------------------------------------- checkpoints

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "version": CHECKPOINT_VERSION,
            "task": self.cfg.task,
            "threshold": self.threshold,
            "config": self.cfg.model_dump(mode="json"),
            "stats": getattr(getattr(self._trainer, "datamodule", None), "stats", None),
        }


class ClassificationTask(SegmentationTask):
    """Trains a "contrail present" classifier: the target is whether the record's mask has any pixel."""

    monitor = "val/auc"

    def _make_metric(self):
        return ClassificationMetrics(from_logits=True)

    def targets(self, batch: dict) -> dict[str, Tensor]:
        return {"mask": batch["mask"].flatten(1).amax(1, keepdim=True)}

    def _update_metric(self, logits: Tensor, batch: dict) -> None:
        self.val_metric.update(logits.float(), self.targets(batch)["mask"])

    def on_validation_epoch_end(self) -> None:
        out = self.val_metric.compute()
        self.val_metric.reset()
        auc = out["auc"] if torch.isfinite(out["auc"]) else out["acc"]
        self.log("val/acc", out["acc"], prog_bar=True, sync_dist=True)
        self.log("val/auc", auc, prog_bar=True, sync_dist=True)


def task_class(kind: str) -> type[SegmentationTask]:
    return {"segmentation": SegmentationTask, "classification": ClassificationTask}[kind]

"""The segmentation task: a mask model trained with a composite loss, validated by global Dice over thresholds."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segladder.config import ExperimentConfig, LossTerm
from segladder.errors import ConfigError
from segladder.losses import build_loss
from segladder.metrics import ThresholdSweepDice
from segladder.tasks.base import TASKS, LossTask


@TASKS.register("segmentation")
class SegmentationTask(LossTask):
    """Trains a mask model; validation sweeps thresholds for the best global Dice.

    Global Dice is the Kaggle competition's metric: P and G pooled over all pixels of all records.

    With `aux.cls_weight` > 0 or `aux.seg_on_positives_only`, the classify-then-segment pipeline's segmenter
    with a classification head (`SegCls2D`, `Unet25DCls`) trains both outputs.

    Args:
        cfg: the experiment (its `loss` and `aux` sections are used here).
        model: a model whose output kind is "mask".
    """

    accepts = ("mask",)
    monitor = "val/dice_best"

    def __init__(self, cfg: ExperimentConfig, model: nn.Module):
        super().__init__(cfg, model)
        self.hard_loss = build_loss([LossTerm(name="dice", target="mask")])
        self.val_metric = ThresholdSweepDice(from_logits=True)
        self.threshold = 0.5
        self._curve: tuple[np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------------------- training

    def compute_loss(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        """The mask loss, plus the classification and hard-mask heads' losses where `aux` asks for them."""
        aux = self.cfg.aux
        heads = aux.cls_weight > 0 or aux.hard_mask_weight > 0
        if not heads and not aux.seg_on_positives_only:
            return self.loss(self(batch["image"]), batch)
        # Classify-then-segment: a classification head beside the mask; the mask loss only where there is a
        # contrail.
        # 3rd place: a hard-mask head beside the soft-label one.
        out = self.model(self.layout(batch["image"]), aux=True) if heads else {"mask": self(batch["image"])}
        for key, weight, option in (
            ("cls", aux.cls_weight, "aux_classifier"),
            ("hard", aux.hard_mask_weight, "hard_head"),
        ):
            if weight > 0 and key not in out:
                raise ConfigError(
                    f"aux.{'cls_weight' if key == 'cls' else 'hard_mask_weight'} > 0 needs a model with "
                    f"that head ({option}=True); {self.cfg.model.name} has none."
                )
        positive = batch["mask"].flatten(1).amax(1) > 0.5
        if aux.seg_on_positives_only:
            keep = positive.nonzero().flatten()
            seg, parts = (
                self.loss(out["mask"][keep], {k: v[keep] for k, v in batch.items() if torch.is_tensor(v)})
                if len(keep)
                else (out["mask"].sum() * 0.0, {})
            )
        else:
            seg, parts = self.loss(out["mask"], batch)
        if aux.cls_weight > 0:
            cls = F.binary_cross_entropy_with_logits(out["cls"].float().flatten(), positive.float())
            parts = {**parts, "cls": cls.detach()}
            seg = seg + aux.cls_weight * cls
        if aux.hard_mask_weight > 0:
            hard, _ = self.hard_loss(out["hard"], batch)
            parts = {**parts, "hard": hard.detach()}
            seg = seg + aux.hard_mask_weight * hard
        return seg, parts

    # ----------------------------------------------------------------------------- validation

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Log the loss and add the batch to the threshold sweep."""
        logits = self(batch["image"])
        if "soft" not in batch and "mask" in batch:
            # The competition's validation records have no individual masks, so no soft label: a loss
            # trained on soft labels (the 3rd place's soft_bce) is scored against the pixel mask there.
            batch = {**batch, "soft": batch["mask"]}
        loss, _ = self.loss(logits, batch)
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=batch["image"].shape[0])
        self.val_metric.update(logits.float(), batch["mask"])

    def on_validation_epoch_end(self) -> None:
        """Log the best global Dice, its threshold, Dice at 0.5 and IoU; keep the threshold and its curve."""
        out = self.val_metric.compute()
        self.val_metric.reset()
        self._curve = (out["thresholds"].cpu().numpy(), out["curve"].cpu().numpy())
        self.threshold = float(out["threshold"])
        # compute() has already reduced across processes; sync_dist only averages equal values.
        self.log("val/dice_best", out["dice_best"], prog_bar=True, sync_dist=True)
        self.log("val/threshold", out["threshold"], sync_dist=True)
        self.log("val/dice_0.5", out["dice_at_0.5"], sync_dist=True)
        self.log("val/iou", out["iou_at_best"], sync_dist=True)

    @property
    def threshold_curve(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(thresholds, Dice) of the last validation."""
        return self._curve

    def pictures(self, batch: dict, n: int) -> np.ndarray | None:
        """Overlays of the model's masks on `n` validation records, at the current threshold."""
        from segladder.viz import overlay_grid

        x = batch["image"][:n].to(self.device)
        with torch.no_grad(), self.trainer.precision_plugin.forward_context():
            probs = torch.sigmoid(self(x).float()).cpu()
        return overlay_grid(batch["image"][:n], batch["mask"][:n], probs, self.threshold)

    def checkpoint_section(self) -> dict:
        """The threshold chosen on validation and the data's channel statistics."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return {"threshold": self.threshold, "stats": getattr(dm, "stats", None)}

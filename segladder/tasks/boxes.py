"""The box-adjustment task (seed 003, Snapper): per-edge position distributions trained on jittered COCO boxes."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from segladder.config import ExperimentConfig
from segladder.data.boxes import to_crop, to_image
from segladder.errors import ConfigError
from segladder.metrics import BOX_KEYS, BoxMetrics
from segladder.models.snapper import decode, edge_loss
from segladder.tasks.base import TASKS, Task


@TASKS.register("boxes")
class BoxesTask(Task):
    """Trains a box model (output kind "box") to move each edge of a rough box onto the object.

    Training: cross-entropy of each edge's position distribution against a Gaussian soft target
    (`boxes.sigma`). Validation: decodes the boxes (`boxes.decode`), maps them back to image pixels and
    reports the paper's Table 1 (`val/miou`, `val/iou_over_0.9`, `val/edges_within_1px`, ...) beside the
    same numbers for the rough boxes (`val/rough_miou`, ...); the best checkpoint is chosen by `val/miou`.

    Args:
        cfg: the experiment (its `data` crop fields and `boxes` section are used here).
        model: a model whose output kind is "box", giving (B, 4, S) logits for an (B, 3, S, S) crop.
    """

    accepts = ("box",)
    monitor = "val/miou"
    curve_keys = ("val/miou", "val/rough_miou", "val/edges_within_1px", "val/rough_edges_within_1px")
    curve_title = "validation: snapped against rough boxes"

    @classmethod
    def check(cls, cfg: ExperimentConfig) -> None:
        if cfg.data.resolved_format != "coco":
            raise ConfigError(
                "task boxes reads COCO boxes: set data.images, data.train and data.val "
                "(and data.format=coco or auto)."
            )
        if cfg.data.folds is not None:
            raise ConfigError(
                "data.folds cuts the contrails layout into folds; task boxes validates on data.val "
                "(split the COCO file instead)."
            )

    def __init__(self, cfg: ExperimentConfig, model: nn.Module):
        super().__init__(cfg, model)
        self.val_metric = BoxMetrics()
        self.rough_metric = BoxMetrics()

    def compute_loss(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        loss = edge_loss(self(batch["image"]), batch["target"], self.cfg.boxes.sigma)
        return loss, {}

    def snap(self, logits: Tensor, region: Tensor) -> Tensor:
        """(B, 4, S) logits and (B, 4) crop regions → (B, 4) snapped xyxy boxes in image pixels (float64)."""
        b = self.cfg.boxes
        edges, _ = decode(logits, b.decode, b.window)
        return to_image(edges.double(), region.double(), logits.shape[-1])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch["image"])
        n = batch["image"].shape[0]
        self.log(
            "val/loss",
            edge_loss(logits, batch["target"], self.cfg.boxes.sigma),
            on_epoch=True,
            sync_dist=True,
            batch_size=n,
        )
        self.val_metric.update(self.snap(logits, batch["region"]), batch["true"])
        self.rough_metric.update(batch["rough"], batch["true"])

    def on_validation_epoch_end(self) -> None:
        snapped, rough = self.val_metric.compute(), self.rough_metric.compute()
        self.val_metric.reset()
        self.rough_metric.reset()
        for key in BOX_KEYS:
            # compute() has already reduced across processes; sync_dist only averages equal values.
            self.log(f"val/{key}", snapped[key].float(), prog_bar=key == "miou", sync_dist=True)
            self.log(f"val/rough_{key}", rough[key].float(), sync_dist=True)

    def pictures(self, batch: dict, n: int) -> np.ndarray | None:
        from segladder.viz import box_grid, denormalise, draw_boxes

        x = batch["image"][:n].to(self.device)
        with torch.no_grad(), self.trainer.precision_plugin.forward_context():
            logits = self(x).float().cpu()
        size = x.shape[-1]
        edges, _ = decode(logits, self.cfg.boxes.decode, self.cfg.boxes.window)
        region = batch["region"][:n].double()
        rough = to_crop(batch["rough"][:n].double(), region, size)
        true = to_crop(batch["true"][:n].double(), region, size)
        scale = max(1, 256 // size)
        panels = [
            draw_boxes(
                denormalise(batch["image"][i]),
                {"rough": rough[i], "true": true[i], "snapped": edges[i]},
                scale,
            )
            for i in range(len(edges))
        ]
        return box_grid(panels)

    def checkpoint_section(self) -> dict:
        return {"threshold": 0.5}

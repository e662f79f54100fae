"""The box-adjustment task (Snapper): per-edge position distributions trained on jittered COCO boxes."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from segladder.config import ExperimentConfig
from segladder.data.boxes import to_crop, to_image
from segladder.errors import ConfigError
from segladder.inference.box_gate import EdgeRecords, calibration, choose_gate, edge_errors
from segladder.metrics import BOX_KEYS, BoxMetrics
from segladder.models.snapper import decode, edge_loss
from segladder.tasks.base import TASKS, Task


@TASKS.register("boxes")
class BoxesTask(Task):
    """Trains a box model (output kind "box") to move each edge of a rough box onto the object.

    Training: cross-entropy of each edge's position distribution against a Gaussian soft target
    (`boxes.sigma`). Validation: decodes the boxes (`boxes.decode`), maps them back to image pixels and
    reports the paper's Table 1 (`val/miou`, `val/iou_over_0.9`, `val/edges_within_1px`, ...) beside the
    same numbers for the rough boxes (`val/rough_miou`, ...).
    Each validation also chooses the do-no-harm gate on its boxes (`choose_gate`: a minimum confidence and a
    largest move, kept only when its cross-validated gain clears the noise, else "keep every rough edge"),
    logs `val/min_confidence`, `val/gate_accepted`, `val/gated_miou` and `val/edges_moved`, and stores the
    gate (`min_confidence`, `max_move`) with its calibration (`box_gate`) in every checkpoint; training ends
    by writing them for `best.ckpt` as `box_calibration.json` and `reliability.png` in the run directory.
    The best checkpoint is chosen by the ungated `val/miou`: chosen by `val/gated_miou` it was an overfit
    epoch whose gate fitted the validation photos and lost on held-out ones (docs/boxes.md).

    Args:
        cfg: the experiment (its `data.coco` crop geometry and `boxes` section are used here).
        model: a model whose output kind is "box", giving (B, 4, S) logits for an (B, 3, S, S) crop.
    """

    accepts = ("box",)
    monitor = "val/miou"
    curve_keys = (
        "val/miou",
        "val/gated_miou",
        "val/rough_miou",
        "val/edges_within_1px",
        "val/rough_edges_within_1px",
    )
    curve_title = "validation: snapped against rough boxes"

    @classmethod
    def check(cls, cfg: ExperimentConfig) -> None:
        """Refuse data that is not COCO boxes, and folds (the boxes task validates on data.coco.val)."""
        if cfg.data.resolved_format != "coco":
            raise ConfigError(
                "task boxes reads COCO boxes: set data.coco.images, data.coco.train and data.coco.val "
                "(and data.format=coco or auto)."
            )
        if cfg.data.folds is not None:
            raise ConfigError(
                "data.folds cuts the contrails layout into folds; task boxes validates on data.coco.val "
                "(split the COCO file instead)."
            )

    def __init__(self, cfg: ExperimentConfig, model: nn.Module):
        super().__init__(cfg, model)
        self.val_metric = BoxMetrics()
        self.rough_metric = BoxMetrics()
        self.edge_records = EdgeRecords()
        self.box_gate: dict | None = None  # the last validation's gate choice and calibration

    def compute_loss(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        """The edge loss of the batch's crops against their true edges; no parts."""
        loss = edge_loss(self(batch["image"]), batch["target"], self.cfg.boxes.sigma)
        return loss, {}

    def snap(self, logits: Tensor, region: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 4, S) logits and (B, 4) crop regions → ((B, 4) snapped xyxy boxes in image pixels (float64), (B, 4) confidence)."""
        b = self.cfg.boxes
        edges, conf = decode(logits, b.decode, b.window)
        return to_image(edges.double(), region.double(), logits.shape[-1]), conf

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Log the edge loss; score the snapped boxes and the rough ones, and keep them for the gate."""
        logits = self(batch["image"])
        n = batch["image"].shape[0]
        self.log(
            "val/loss",
            edge_loss(logits, batch["target"], self.cfg.boxes.sigma),
            on_epoch=True,
            sync_dist=True,
            batch_size=n,
        )
        boxes, conf = self.snap(logits, batch["region"])
        self.val_metric.update(boxes, batch["true"])
        self.rough_metric.update(batch["rough"], batch["true"])
        self.edge_records.update(batch["rough"], boxes, batch["true"], conf)

    def on_validation_epoch_end(self) -> None:
        """Log the snapped and rough boxes' scores, and choose the gate on this epoch's boxes."""
        snapped, rough = self.val_metric.compute(), self.rough_metric.compute()
        records = self.edge_records.compute()
        self.val_metric.reset()
        self.rough_metric.reset()
        self.edge_records.reset()
        for key in BOX_KEYS:
            # compute() has already reduced across processes; sync_dist only averages equal values.
            self.log(f"val/{key}", snapped[key].float(), prog_bar=key == "miou", sync_dist=True)
            self.log(f"val/rough_{key}", rough[key].float(), sync_dist=True)
        if len(records["true"]):
            choice = choose_gate(records["rough"], records["snapped"], records["conf"], records["true"])
            cal = calibration(records["conf"], edge_errors(records["snapped"], records["true"]))
            self.box_gate = {**choice.as_dict(), "calibration": cal}
            self.log("val/min_confidence", float(choice.min_confidence), sync_dist=True)
            self.log("val/gate_accepted", float(choice.accepted), sync_dist=True)
            self.log("val/gated_miou", float(choice.miou_gated), sync_dist=True)
            self.log("val/edges_moved", float(choice.edges_moved), sync_dist=True)

    def pictures(self, batch: dict, n: int) -> np.ndarray | None:
        """The rough, snapped and true boxes of `n` validation crops drawn on them."""
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
        """The gate chosen on this epoch's validation boxes, when one was."""
        # The gate chosen on this epoch's validation boxes travels with this epoch's weights, as segmentation's
        # threshold does; a checkpoint saved before any validation has none (inference then moves every edge).
        gate = (
            {}
            if self.box_gate is None
            else {
                "min_confidence": self.box_gate["min_confidence"],
                "max_move": self.box_gate.get("max_move"),
                "box_gate": self.box_gate,
            }
        )
        return {"threshold": 0.5, **gate}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Take back the gate a resumed checkpoint carries."""
        # A resumed run keeps its last gate until its next validation chooses one, so a checkpoint saved
        # in between (an interruption) still carries it.
        from segladder.inference.checkpoint import CHECKPOINT_KEY

        self.box_gate = (checkpoint.get(CHECKPOINT_KEY) or {}).get("box_gate")

    def callbacks(self) -> list[L.Callback]:
        """The report of the gate and its calibration when training ends."""
        return [BoxGateReport()]


class BoxGateReport(L.Callback):
    """When training ends, write the gate and calibration stored in `best.ckpt` into the run directory.

    They go to `box_calibration.json` and `reliability.png`, with one line saying what the gate does on
    validation.
    """

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        """Write the report from the best checkpoint (on the main process)."""
        if not trainer.is_global_zero:
            return
        run_dir = Path(trainer.default_root_dir)
        write_gate_report(run_dir / "checkpoints" / "best.ckpt", run_dir)


def write_gate_report(checkpoint: Path, run_dir: Path) -> dict | None:
    """box_calibration.json and reliability.png of `checkpoint`'s stored gate, in `run_dir`; None when it has none."""
    from segladder.inference.box_gate import gate_from_checkpoint_section, reliability_png
    from segladder.inference.checkpoint import CHECKPOINT_KEY, read_checkpoint_file
    from segladder.io import atomic_write_json
    from segladder.progress import console

    if not checkpoint.is_file():
        return None
    gate = read_checkpoint_file(checkpoint).get(CHECKPOINT_KEY, {}).get("box_gate")
    if not gate:
        return None
    atomic_write_json(run_dir / "box_calibration.json", {"checkpoint": str(checkpoint), **gate})
    reliability_png(gate["calibration"], run_dir / "reliability.png", f"validation, {checkpoint.name}")
    cal = gate["calibration"]
    auc = "n/a" if cal["auc"] is None else f"{cal['auc']:.3f}"
    described = gate_from_checkpoint_section(gate)
    why = f"; {gate['reason']}" if gate.get("reason") else ""
    console.print(
        f"do-no-harm gate of {checkpoint.name}: {described.describe()}{why} "
        f"(validation mIoU rough {gate['miou_rough']:.4f}, adjusted {gate['miou_adjusted']:.4f}, "
        f"gated {gate['miou_gated']:.4f}; {100 * gate['edges_moved']:.1f}% of edges moved); calibration "
        f"ECE {cal['ece']:.3f}, AUC {auc}: "
        f"{run_dir / 'reliability.png'}",
        soft_wrap=True,
    )
    return gate

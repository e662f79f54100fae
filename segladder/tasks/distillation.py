"""Knowledge distillation: a frozen teacher checkpoint teaches a student segmenter through its logits.

Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015, arXiv:1503.02531; the
EfficientNet-B3 → B0 recipe and its schedules are in docs/distillation.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.classification import BinaryF1Score, MulticlassJaccardIndex

from segladder.config import ExperimentConfig
from segladder.errors import ConfigError
from segladder.inference.checkpoint import CHECKPOINT_KEY, input_mismatches, load_checkpoint
from segladder.inference.errors import CheckpointError
from segladder.losses import BinaryKDLoss, build_loss
from segladder.optim import build_optimizer, build_scheduler
from segladder.tasks.base import TASKS
from segladder.tasks.segmentation import SegmentationTask


def cosine_temperature(start: float, end: float, progress: float) -> float:
    """The KD temperature at `progress` ∈ [0, 1] of training: `start` at 0, `end` at 1, cosine in between."""
    progress = min(1.0, max(0.0, progress))
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _cli_value(value: object) -> str:
    """A config value as `--set key=VALUE` takes it (lists without spaces)."""
    return str(value).replace(" ", "").replace("'", "")


@TASKS.register("distillation")
class DistillationTask(SegmentationTask):
    """Trains a student mask model on `α·KD(T) + β·MSE(σ(z_s), σ(z_t)) + γ·BCE + δ·Dice`.

    The teacher (`distill.teacher`, a segladder checkpoint loaded weights-only) is frozen, in eval mode and
    held outside the module tree, so it is neither trained, nor switched to train mode, nor saved in the
    student's checkpoint. It sees the very batch the student sees (after augmentation). The temperature falls
    by cosine from `temperature_start` to `temperature_end` per epoch or per step; the student's encoder is
    unfrozen block by block by `tasks.finetuning.ProgressiveUnfreezing` (see `callbacks`). The checkpoint
    is an ordinary segmentation checkpoint (`task: segmentation`, plus a `distilled_from` note), so
    evaluate, predict and export read it unchanged.

    Args:
        cfg: the experiment; its `distill` section holds the teacher, the weights and the schedules.
        model: the student, a model whose output kind is "mask".
    """

    accepts = ("mask",)
    monitor = "val/dice_best"

    @classmethod
    def check(cls, cfg: ExperimentConfig) -> None:
        """Refuse no teacher, auxiliary heads, one-cycle, augmentation with cached logits, or no loss weight."""
        d = cfg.distill
        if d.teacher is None:
            raise ConfigError(
                "task distillation needs distill.teacher: the teacher's checkpoint "
                "(--set distill.teacher=runs/NAME/STAMP/checkpoints/best.ckpt)."
            )
        if not Path(d.teacher).is_file():
            raise ConfigError(
                f"distill.teacher: checkpoint {d.teacher} does not exist; train the teacher first "
                "(e.g. `segladder train seg_unet_b3`) and give its checkpoints/best.ckpt."
            )
        if cfg.aux.cls_weight > 0 or cfg.aux.seg_on_positives_only:
            raise ConfigError(
                "task distillation trains the mask output only; set aux.cls_weight=0 and "
                "aux.seg_on_positives_only=false."
            )
        if cfg.optim.schedule == "onecycle":
            raise ConfigError(
                "distillation with progressive unfreezing needs optim.schedule cosine or constant "
                "(one-cycle cannot schedule the encoder groups added during training)."
            )
        if d.cache_teacher_logits and cfg.data.augment.enabled:
            on = [k for k, v in cfg.data.augment.model_dump().items() if k.endswith("_p") and v > 0]
            if cfg.data.augment.preset != "none":
                on.insert(0, f"preset={cfg.data.augment.preset}")
            raise ConfigError(
                "distill.cache_teacher_logits needs augmentation off (the teacher must see each record "
                f"unchanged every epoch), but data.augment has {', '.join(on)}; set "
                f"{' '.join(f'data.augment.{k}=0' for k in on if '=' not in k) or 'data.augment.preset=none'}"
                " or distill.cache_teacher_logits=false."
            )
        if not d.alpha + d.beta + d.gamma + d.delta > 0:
            raise ConfigError(
                "distill.alpha/beta/gamma/delta are all 0: at least one loss term needs a weight."
            )

    def __init__(self, cfg: ExperimentConfig, model: nn.Module):
        super().__init__(cfg, model)
        self._schedule_sums: dict[str, tuple[float, int]] = {}
        d = cfg.distill
        terms = [
            {"name": "kd", "weight": d.alpha, "temperature": d.temperature_start},
            {"name": "mse_prob", "weight": d.beta},
            {"name": "bce", "weight": d.gamma},
            {"name": "dice", "weight": d.delta},
        ]
        self.loss = build_loss([t for t in terms if t["weight"] > 0], where="distill")
        self.temperature = d.temperature_start
        try:
            teacher = load_checkpoint(d.teacher)
        except CheckpointError as exc:
            raise ConfigError(f"distill.teacher: {exc}") from None
        self._check_teacher(teacher)
        teacher.model.requires_grad_(False).eval()
        # Held in a tuple: not a submodule, so not in state_dict, not moved to train mode, not optimised.
        self._teacher = (teacher.model,)
        self.teacher_threshold = teacher.threshold
        # (stage, record_id) → fp16 logits on the CPU; None when the teacher runs on every batch.
        self.logit_cache: dict[tuple[str, str], Tensor] | None = {} if d.cache_teacher_logits else None
        self.teacher_passes = 0  # teacher forward passes run (what the cache saves)
        self.val_miou = MulticlassJaccardIndex(num_classes=2, average="macro")
        self.val_agreement = BinaryF1Score(threshold=0.5)  # F1 of binary maps is their Dice
        self.val_dice = BinaryF1Score(threshold=0.5)

    def _check_teacher(self, teacher) -> None:
        from segladder.models import info

        tc, path = teacher.config, self.cfg.distill.teacher
        kind = info(tc.model.name).output
        if kind != "mask":
            raise ConfigError(
                f"distill.teacher {path}: model {tc.model.name} outputs a {kind}, not a mask; "
                "the teacher must be a segmentation checkpoint."
            )
        if teacher.task not in ("segmentation", "distillation"):
            raise ConfigError(
                f"distill.teacher {path}: a {teacher.task} checkpoint; give a segmentation checkpoint."
            )
        differ = input_mismatches(tc, self.cfg)
        if differ:
            # model.in_chans follows from data.channels and data.frames; the data keys are the ones to set.
            fix = " ".join(f"{k}={_cli_value(t)}" for k, t, _ in differ if k.startswith("data.")) or " ".join(
                f"{k}={_cli_value(t)}" for k, t, _ in differ
            )
            raise ConfigError(
                f"distill.teacher {path}: the teacher and the student read different input: "
                + ", ".join(f"{k} {t} vs {s}" for k, t, s in differ)
                + f" (teacher vs student); set {fix} as the teacher was trained, or give a teacher trained "
                "like the student."
            )

    @property
    def teacher(self) -> nn.Module:
        """The frozen teacher (kept outside the module's children, so it is neither trained nor saved)."""
        return self._teacher[0]

    def callbacks(self) -> list:
        """The progressive unfreezing of the student's encoder, as `distill` sets it."""
        from segladder.tasks.finetuning import ProgressiveUnfreezing

        d = self.cfg.distill
        return [ProgressiveUnfreezing(d.unfreeze_start_epoch, d.unfreeze_every, d.encoder_lr_scale)]

    # ------------------------------------------------------------------------------- teacher

    @torch.no_grad()
    def teacher_logits(self, x: Tensor) -> Tensor:
        """The teacher's logits on `x` (the student's own, augmented input), under the same autocast."""
        t = self.teacher
        first = next(t.parameters(), None)
        if first is not None and first.device != x.device:
            t.to(x.device)
        t.eval()
        self.teacher_passes += 1
        return t(self.layout(x)).float()

    def batch_teacher_logits(self, batch: dict, stage: str) -> Tensor:
        """The teacher's logits for `batch`: from `logit_cache` when every record in it is there, else live.

        With the cache on, live logits are stored rounded to fp16 and the rounded values are returned, so the
        first epoch and every later one see the same targets. Records are keyed by stage and `record_id`
        (image folders may reuse a file stem across train and val).
        """
        x, cache, ids = batch["image"], self.logit_cache, batch.get("record_id")
        if cache is None or ids is None:
            return self.teacher_logits(x)
        keys = [(stage, str(rid)) for rid in ids]
        if all(k in cache for k in keys):
            return torch.stack([cache[k] for k in keys]).to(x.device, torch.float32)
        logits = self.teacher_logits(x).to(torch.float16)
        for key, z in zip(keys, logits.cpu(), strict=True):
            cache[key] = z.clone()  # a copy: not a view that would keep the whole batch alive
        return logits.float()

    # ------------------------------------------------------------------------------ schedules

    def progress(self) -> float:
        """Fraction of training done, per epoch or per step as `distill.schedule` says (0 at the start, 1 at the end)."""
        trainer = self._trainer
        if trainer is None:
            return 0.0
        if self.cfg.distill.schedule == "step":
            return trainer.global_step / max(1, self._total_steps() - 1)
        return trainer.current_epoch / max(1, trainer.max_epochs - 1)

    def set_temperature(self) -> float:
        """Set the KD terms' temperature from the cosine schedule at the current progress; returns it."""
        d = self.cfg.distill
        self.temperature = cosine_temperature(d.temperature_start, d.temperature_end, self.progress())
        for term in self.loss.terms:
            if isinstance(term, BinaryKDLoss):
                term.temperature = self.temperature
        return self.temperature

    # ------------------------------------------------------------------------------- training

    def compute_loss(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of the student against the batch's labels and the teacher's logits."""
        self.set_temperature()
        x = batch["image"]
        student = self(x)
        return self.loss(student, {**batch, "teacher": self.batch_teacher_logits(batch, "train")})

    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        """The loss, with the schedules' values summed for their epoch means."""
        loss = super().training_step(batch, batch_idx)
        # Host numbers, averaged over the epoch here and logged once at its end: a logged Python number
        # becomes a device tensor, a blocking copy, on every step.
        lrs = self.group_lrs()
        for key, value in (
            ("distill/temperature", self.temperature),
            ("distill/unfrozen_blocks", float(self.unfrozen_blocks())),
            ("lr/decoder", lrs["decoder"]),
            ("lr/encoder", lrs["encoder"]),
        ):
            total, n = self._schedule_sums.get(key, (0.0, 0))
            self._schedule_sums[key] = (total + value, n + 1)
        return loss

    def train_epoch_metrics(self) -> dict[str, Tensor]:
        """The epoch's training means and the schedules' means (temperature, unfrozen blocks, LRs)."""
        means = {k: torch.tensor(total / n) for k, (total, n) in self._schedule_sums.items() if n}
        return {**super().train_epoch_metrics(), **means}

    def on_train_epoch_start(self) -> None:
        """Also reset the schedules' sums."""
        super().on_train_epoch_start()
        self._schedule_sums = {}

    def unfrozen_blocks(self) -> int:
        """How many encoder blocks the unfreezing callback has unfrozen."""
        from segladder.tasks.finetuning import ProgressiveUnfreezing

        trainer = self._trainer
        found = [
            c
            for c in (trainer.callbacks if trainer is not None else [])
            if isinstance(c, ProgressiveUnfreezing)
        ]
        return found[0].unfrozen if found else 0

    def group_lrs(self) -> dict[str, float]:
        """The current decoder LR and encoder LR (0 while the encoder is frozen)."""
        out = {"decoder": 0.0, "encoder": 0.0}
        for opt in self.trainer.optimizers if self._trainer is not None else []:
            for g in opt.param_groups:
                kind = "encoder" if str(g.get("name", "")).startswith("encoder") else "decoder"
                out[kind] = max(out[kind], float(g["lr"]))
        return out

    def configure_optimizers(self):
        """The optimiser and a schedule that follows the groups the unfreezing adds later."""
        # Unfrozen encoder blocks join as new groups, so the schedule must follow groups added later.
        opt = build_optimizer(
            self.model,
            self.cfg.optim.model_copy(update={"encoder_lr_mult": self.cfg.distill.encoder_lr_scale}),
        )
        try:
            sched = build_scheduler(opt, self.cfg.optim, self._total_steps(), groups_may_grow=True)
        except ValueError as exc:
            raise ConfigError(f"distillation: {exc}") from None
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ----------------------------------------------------------------------------- validation

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Also log the loss's parts and add the student's masks to mIoU, agreement and Dice at 0.5."""
        x = batch["image"]
        logits = self(x)
        teacher = self.batch_teacher_logits(batch, "val")
        loss, parts = self.loss(logits, {**batch, "teacher": teacher})
        bs = x.shape[0]
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=bs)
        for name, value in parts.items():
            self.log(f"val/{name}", value, on_epoch=True, sync_dist=True, batch_size=bs)
        self.val_metric.update(logits.float(), batch["mask"])
        student_mask = (torch.sigmoid(logits.float()) > 0.5).long()
        self.val_miou.update(student_mask.flatten(), batch["mask"].long().flatten())
        teacher_mask = (torch.sigmoid(teacher) > self.teacher_threshold).long()
        self.val_agreement.update(student_mask.flatten(), teacher_mask.flatten())
        self.val_dice.update(student_mask.flatten(), batch["mask"].long().flatten())

    def on_validation_epoch_end(self) -> None:
        """Also log mIoU, agreement with the teacher and Dice at 0.5."""
        super().on_validation_epoch_end()
        self.log("val/miou", self.val_miou.compute(), sync_dist=True)
        self.log("val/agreement", self.val_agreement.compute(), sync_dist=True)
        # val/dice is global Dice at 0.5, the figure `distill compare` reports; val/dice_best picks best.ckpt.
        self.log("val/dice", self.val_dice.compute(), sync_dist=True)
        for metric in (self.val_miou, self.val_agreement, self.val_dice):
            metric.reset()

    def on_train_epoch_end(self) -> None:
        """Also draw the schedules and loss parts as PNG in the run directory."""
        super().on_train_epoch_end()
        # Runs after RunRecorder has written this epoch's metrics.json: the schedules and parts as PNG.
        run_dir = Path(self.trainer.default_root_dir)
        if not self.trainer.is_global_zero or not (run_dir / "metrics.json").exists():
            return
        import json

        from segladder.viz import plot_histories

        epochs = {"": json.loads((run_dir / "metrics.json").read_text())["epochs"]}
        plot_histories(
            epochs,
            run_dir / "distill_curves.png",
            ("train/kd", "train/mse_prob", "train/bce", "train/dice"),
            ("val/dice", "val/miou", "val/agreement"),
            ("loss parts", "validation (at 0.5)"),
        )
        plot_histories(
            epochs,
            run_dir / "distill_schedule.png",
            ("distill/temperature", "distill/unfrozen_blocks"),
            ("lr/decoder", "lr/encoder"),
            ("temperature and unfrozen blocks", "learning rates"),
        )

    # ---------------------------------------------------------------------------- checkpoints

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Save the student as an ordinary segmentation checkpoint, naming its teacher."""
        super().on_save_checkpoint(checkpoint)
        # The student is an ordinary segmentation model: evaluate, predict and export read it unchanged.
        section = checkpoint[CHECKPOINT_KEY]
        section["task"] = "segmentation"
        section["config"] = {**section["config"], "task": "segmentation"}
        section["distilled_from"] = str(self.cfg.distill.teacher)

"""The task family's base: what every task shares, the contract callbacks rely on, and the task registry."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from segladder.config import ExperimentConfig
from segladder.errors import ConfigError
from segladder.inference.checkpoint import CHECKPOINT_KEY, CHECKPOINT_VERSION
from segladder.losses import build_loss
from segladder.metrics import StepMeans
from segladder.optim import build_optimizer, build_scheduler
from segladder.registry import Registry

TASKS: Registry[type[Task]] = Registry("task")


class Task(L.LightningModule):
    """A model, its loss, its metrics and its optimiser joined for training; one subclass per kind of training.

    A subclass sets `accepts` (the model output kinds it can train: "mask", "label", "box"), `monitor` (the
    logged metric that picks the best checkpoint, higher is better) and implements `compute_loss`,
    `validation_step` and `on_validation_epoch_end`; it is registered with `@TASKS.register("name")` and
    gets its config section in `segladder/config.py`. The callbacks talk to it only through the members
    below (`model_input`, `compute_loss`, `step_losses`, `step_parts`, `threshold_curve`, `pictures`,
    `monitor`, `curve_keys`, `curve_title`).

    A training step never reads a value back from the device, and launches no device work beyond the
    model's and the loss's: the coming optimiser step's losses are kept (`step_losses`) for `NonFiniteGuard`
    to check with the gradients in one fused kernel, and the epoch's training loss is a device-side mean of
    the finite steps, folded from kept references (`StepMeans`).

    Args:
        cfg: the experiment; `cfg.model` already holds every argument the model was built with.
        model: the `nn.Module` to train, built from `cfg.model` by `segladder.training.build.build_task`.
    """

    accepts: ClassVar[tuple[str, ...]] = ()
    monitor: ClassVar[str] = "val/loss"
    # The validation metrics drawn per epoch in the run's curves.png (absent keys are skipped), and its title.
    curve_keys: ClassVar[tuple[str, ...]] = ("val/dice_best", "val/dice_0.5", "val/auc", "val/acc")
    curve_title: ClassVar[str] = "validation (F1 = global Dice at the best threshold)"

    def __init__(self, cfg: ExperimentConfig, model: nn.Module):
        super().__init__()
        # Kept for TensorBoard's hparams view only; the typed config travels as `self.cfg`.
        self.save_hyperparameters({"config": cfg.model_dump(mode="json")})
        self.cfg = cfg
        self.model = model
        # The (detached) losses of the micro-batches of the coming optimiser step, and the last loss's parts;
        # NonFiniteGuard checks the losses with the gradients and clears them once the step is decided.
        self.step_losses: list[Tensor] = []
        self.step_parts: dict[str, Tensor] = {}
        self.last_loss: Tensor | None = None
        self.train_means = StepMeans()
        self._compiled: Any = None
        if cfg.trainer.channels_last:
            self.model.to(memory_format=torch.channels_last)

    # ---------------------------------------------------------------------------- the contract

    @classmethod
    def check(cls, cfg: ExperimentConfig) -> None:
        """Refuse a config this task cannot train, before anything is built (subclasses add their checks)."""

    def model_input(self, batch: dict) -> Tensor:
        """The tensor the model reads from a batch."""
        return batch["image"]

    def compute_loss(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        """(total loss, detached parts by name) of one training batch."""
        raise NotImplementedError

    @property
    def threshold_curve(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(thresholds, score) of the last validation, for the threshold-curve PNG; None when the task has none."""
        return None

    def pictures(self, batch: dict, n: int) -> np.ndarray | None:
        """An (H, W, 3) uint8 picture of the model on `n` validation records, or None when the task draws none."""
        return None

    def checkpoint_section(self) -> dict:
        """What inference needs besides the weights (threshold, statistics, ...), stored in every checkpoint."""
        return {}

    def callbacks(self) -> list[L.Callback]:
        """Callbacks this task trains with besides segladder's own (e.g. distillation's progressive unfreezing)."""
        return []

    # -------------------------------------------------------------------------------- forward

    def configure_model(self) -> None:
        """Compile the model with torch.compile when `trainer.compile` asks, once."""
        t = self.cfg.trainer
        if t.compile and self._compiled is None:
            # Compiled forward kept beside the module so state_dict keys stay those of the plain model.
            compiled = torch.compile(self.model, mode=t.compile_mode, dynamic=t.compile_dynamic)
            object.__setattr__(self, "_compiled", compiled)

    def forward(self, x: Tensor) -> Tensor:
        """The model's output for `x`, through its compiled form when there is one."""
        # `is None`, not `or`: truth-testing a module calls its __len__, which a compiled wrapper may lack.
        model = self.model if self._compiled is None else self._compiled
        return model(self.layout(x))

    def layout(self, x: Tensor) -> Tensor:
        """`x` in channels-last memory format when `trainer.channels_last` asks and it is 4-D, else as it is."""
        if self.cfg.trainer.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # ------------------------------------------------------------------------------- training

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """The batch's loss; its detached value and parts are kept for the NaN guard and the epoch means."""
        loss, parts = self.compute_loss(batch)
        self.last_loss = loss.detach()
        self.step_losses.append(self.last_loss)
        self.step_parts = parts
        bs = self.model_input(batch).shape[0]
        # Per step without sync_dist (an all-reduce a step); the epoch means are reduced once, at its end.
        # Not prog_bar: Lightning turns every progress-bar value into a number after every batch, a host
        # read that waits for the device; IntervalProgressBar shows `last_loss` at log steps instead.
        if logs_this_step(self.trainer):
            self.log("train/loss", self.last_loss, on_step=True, on_epoch=False, batch_size=bs)
        # The epoch means are logged once, in on_train_epoch_end: a logged Metric object costs Lightning a
        # walk over its state on every self.log.
        self.train_means.update(
            {"train/loss_epoch": self.last_loss, **{f"train/{n}": v for n, v in parts.items()}}, bs
        )
        return loss

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Clip gradients here: Lightning's precision plugin refuses a fused optimiser under mixed precision.

        The fused kernel unscales fp16 gradients itself: under 16-mixed the gradients are unscaled first, as
        the plugin would, and the GradScaler then steps with them as they are.
        """
        if not gradient_clip_val:
            return
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
            scaler.unscale_(optimizer)
        grads = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(grads, gradient_clip_val, foreach=True)
        else:
            torch.nn.utils.clip_grad_norm_(grads, gradient_clip_val, foreach=True)

    def train_epoch_metrics(self) -> dict[str, Tensor]:
        """The epoch's training loss and loss parts so far (means of the finite steps, reduced over processes)."""
        return self.train_means.compute()

    def on_train_epoch_end(self) -> None:
        """Log the epoch's training means once, at its end."""
        for key, value in self.train_epoch_metrics().items():
            self.log(key, value, on_step=False, on_epoch=True)

    def on_train_epoch_start(self) -> None:
        """Reset the epoch's training means and pass the epoch on to the data module."""
        self.train_means.reset()
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(self.current_epoch)

    # ------------------------------------------------------------------------------ optimiser

    def configure_optimizers(self):
        """The optimiser of `optim`, with its LR schedule stepped every optimiser step."""
        opt = build_optimizer(self.model, self.cfg.optim)
        sched = build_scheduler(opt, self.cfg.optim, self._total_steps())
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _total_steps(self) -> int:
        t = self.trainer
        if t.max_steps and t.max_steps > 0:
            return t.max_steps
        return max(1, int(t.estimated_stepping_batches)) if math.isfinite(t.estimated_stepping_batches) else 1

    # ---------------------------------------------------------------------------- checkpoints

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Store the task, the config and `checkpoint_section` beside the weights for inference."""
        checkpoint[CHECKPOINT_KEY] = {
            "version": CHECKPOINT_VERSION,
            "task": self.cfg.task,
            "config": self.cfg.model_dump(mode="json"),
            **self.checkpoint_section(),
        }


class LossTask(Task):
    """A task trained with the experiment's `loss` section: a weighted sum of registered loss terms.

    Args:
        cfg: the experiment; its `loss` section builds the loss.
        model: the `nn.Module` to train.
    """

    @classmethod
    def check(cls, cfg: ExperimentConfig) -> None:
        """Refuse a bad loss term before the model is built."""
        build_loss(cfg.loss)  # a bad loss term is reported before the model is built

    def __init__(self, cfg: ExperimentConfig, model: nn.Module):
        super().__init__(cfg, model)
        self.loss = build_loss(cfg.loss)


def logs_this_step(trainer) -> bool:
    """Whether the loggers write at this step (Lightning's own rule, as its LearningRateMonitor reads it).

    A value logged at other steps is never written, yet each self.log costs Lightning ~0.1 ms of Python.
    """
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", True))


def require_task(pl_module: L.LightningModule, user: str) -> Task:
    """`pl_module` as a Task, or a ConfigError naming the callback `user` that needs one (checked up front)."""
    if not isinstance(pl_module, Task):
        raise ConfigError(
            f"{user} works with segladder tasks (segladder.tasks.Task); got {type(pl_module).__name__}."
        )
    return pl_module

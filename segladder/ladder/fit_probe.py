"""Can a rung fit one fixed small batch? The ladder's evidence that a rung's model, loss and loop can learn.

A rung short of its F1 bound may be broken or may simply be untrained: on data as hard as real contrails
(1–3 px lines a few kelvin from their background) the calibrated budget of 60 steps is not enough for some
rungs to leave the constant prediction. What separates the two cases must not depend on how hard the data
is, and fitting one batch does not: any working model, loss and optimiser memorise a handful of records
in a few dozen steps, whatever those records hold (the advice of Karpathy's "A Recipe for Training Neural
Networks", 2019: "overfit a single batch"). A loop that does not step, a loss that does not reach the
weights, a model whose output ignores its input cannot.

The probe trains a fresh copy of the rung with the rung's own config (optimiser, schedule, clipping,
precision, loss, initial output prior) and the same fault callbacks as the rung, on its first `records`
training records that hold a contrail, as one batch, for `steps` optimiser steps without augmentation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from lightning.pytorch.callbacks import Callback

from segladder.config import ExperimentConfig

# One batch of 4 positive records for 30 steps costs about a fifth of a calibrated rung. On the realistic
# synthetic world at 64² every clean rung took its batch loss to 0.08–0.45 of its first step's in 40 steps
# (ResNet18_SimplerFCN, whose 16-px output grid cannot draw a thin line, the highest); a loop with a zero
# LR stays at 1.0. The bound sits between the two.
FIT_RECORDS, FIT_STEPS, FIT_RATIO_MAX = 4, 30, 0.75


@dataclass(frozen=True)
class FitStats:
    """How far a fresh copy of a rung took the loss of one fixed batch.

    Args:
        records: records in the batch.
        steps: optimiser steps taken.
        first_loss: the loss of the first step (the untrained model, started at the prior).
        last_loss: the mean loss of the last 5 steps.
        ratio_max: the bound on last_loss / first_loss under which the batch counts as fitted.
        seconds: wall time of the probe.
    """

    records: int
    steps: int
    first_loss: float
    last_loss: float
    ratio_max: float = FIT_RATIO_MAX
    seconds: float = 0.0

    @property
    def ratio(self) -> float:
        """last_loss / first_loss; infinite when a loss is not finite or the first not positive."""
        if not (math.isfinite(self.first_loss) and math.isfinite(self.last_loss)) or self.first_loss <= 0:
            return math.inf
        return self.last_loss / self.first_loss

    @property
    def fitted(self) -> bool:
        """Whether the loss fell below `ratio_max` × its start."""
        return self.ratio <= self.ratio_max

    def detail(self) -> str:
        """The probe's result in words, for the check's detail."""
        return (
            f"a fresh copy took the loss of one fixed batch ({self.records} records) from {self.first_loss:.4f} "
            f"to {self.last_loss:.4f} in {self.steps} steps ({self.ratio:.2f}× its start; fitted below "
            f"{self.ratio_max:g}×)"
        )

    def as_dict(self) -> dict:
        """The probe's figures as report JSON holds them."""
        return {
            "records": self.records,
            "steps": self.steps,
            "first_loss": self.first_loss,
            "last_loss": self.last_loss,
            "ratio": self.ratio if math.isfinite(self.ratio) else None,
            "ratio_max": self.ratio_max,
            "fitted": self.fitted,
            "seconds": round(self.seconds, 2),
        }


class _StepLosses(Callback):
    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss.detach()) if isinstance(loss, torch.Tensor) else math.nan)


def one_batch_config(cfg: ExperimentConfig, records: int, steps: int) -> ExperimentConfig:
    """The rung's config narrowed to its first `records` positive training records, one batch a step."""
    data = cfg.data.model_copy(
        update={
            "positives_only": True,
            "train_records": records,
            "batch_size": records,
            "num_workers": 0,
            "augment": type(cfg.data.augment)(),
        }
    )
    trainer = cfg.trainer.model_copy(
        update={"max_epochs": steps, "max_steps": steps, "accumulate_grad_batches": 1, "progress": False}
    )
    return cfg.model_copy(update={"data": data, "trainer": trainer})


def fit_one_batch(
    cfg: ExperimentConfig,
    callbacks: list[Callback] = (),
    records: int = FIT_RECORDS,
    steps: int = FIT_STEPS,
) -> FitStats:
    """Train a fresh copy of `cfg`'s model on one fixed batch for `steps` steps; see the module's docstring."""
    import lightning as L

    from segladder.training.build import build_datamodule, build_task, quiet_library_notices

    quiet_library_notices()
    probe_cfg = one_batch_config(cfg, records, steps)
    datamodule, task = build_datamodule(probe_cfg), build_task(probe_cfg)
    losses = _StepLosses()
    t = probe_cfg.trainer
    trainer = L.Trainer(
        max_epochs=steps,
        max_steps=steps,
        precision=t.precision,
        accelerator=t.accelerator,
        devices=1,
        gradient_clip_val=t.gradient_clip_val,
        gradient_clip_algorithm=t.gradient_clip_algorithm if t.gradient_clip_val else None,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[losses, *callbacks],
    )
    t0 = time.perf_counter()
    trainer.fit(task, datamodule=datamodule)
    seconds = time.perf_counter() - t0
    got = losses.losses
    first = got[0] if got else math.nan
    last = sum(got[-5:]) / len(got[-5:]) if got else math.nan
    n = len(datamodule.train_set) if datamodule.train_set is not None else records
    return FitStats(n, len(got), first, last, seconds=seconds)

"""A run's record, written as training goes: metrics.json, curves and overlays as PNG, one line per epoch."""

from __future__ import annotations

import math
import time
from collections import deque
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from segladder.io import atomic_write_json
from segladder.progress import console
from segladder.tasks.base import logs_this_step, require_task
from segladder.viz import plot_histories, save_figure, save_image, threshold_curve_figure

# "Loss at the end of an epoch" as a training log shows it (fastai's smoothed loss): the mean of the last steps.
LOSS_END_STEPS = 10


class RunRecorder(Callback):
    """Per epoch: metrics.json, and overlays as PNG and in TensorBoard; curves as PNG now and then.

    The loss/Dice curves and the threshold curve are drawn at most every `REFRESH_S` seconds while training,
    and always when training ends.

    Drawing those two costs ~0.5 s an epoch on a CPU: a quarter of an epoch of the demo's rungs, nothing
    against a GPU epoch of minutes, which still gets them every epoch.

    Args:
        run_dir: the run's folder.
        overlays: validation records drawn each epoch (0: none).
    """

    REFRESH_S = 20.0

    def __init__(self, run_dir: Path, overlays: int = 8):
        self.run_dir, self.n_overlays = Path(run_dir), overlays
        self.history: list[dict] = []
        self._drawn_at: dict[str, float] = {}
        self._stale: dict[str, object] = {}  # picture → what draws it once training ends
        self._t0 = time.perf_counter()
        self._samples = 0
        self.samples_per_s: float | None = None
        self._epoch_t0 = time.perf_counter()
        self._recent: deque[torch.Tensor] = deque(maxlen=LOSS_END_STEPS)  # on the device until epoch end

    def state_dict(self) -> dict:
        """The per-epoch history, so a resumed run's metrics.json keeps its earlier epochs."""
        return {"history": self.history}

    def load_state_dict(self, state: dict) -> None:
        """Take back the per-epoch history."""
        self.history = list(state.get("history", []))

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Refuse a module that is not a segladder task."""
        require_task(pl_module, type(self).__name__)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        """Restart the epoch's sample count, clock and recent losses."""
        self._samples, self._epoch_t0 = 0, time.perf_counter()
        self._recent.clear()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Count the batch's samples and keep its loss; log samples/s at log steps."""
        self._samples += pl_module.model_input(batch).shape[0]
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._recent.append(loss.detach())
        elapsed = time.perf_counter() - self._epoch_t0
        self.samples_per_s = self._samples / elapsed if elapsed > 0 else None
        # A logged Python number becomes a device tensor (a blocking host→device copy): only at log steps.
        if self.samples_per_s and logs_this_step(trainer):
            pl_module.log("samples_per_s", self.samples_per_s, on_step=True, on_epoch=False)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        """Draw the threshold curve and the overlays (on the main process, not in the sanity check)."""
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if pl_module.threshold_curve is not None:
            epoch = pl_module.current_epoch
            self._refresh("threshold", lambda: self._threshold_png(pl_module, epoch))
        if self.n_overlays:
            self._overlays(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """Add the epoch's row to metrics.json, draw the curves and print the epoch's line (main process)."""
        if not trainer.is_global_zero:
            return
        # The task's training means are logged after the callbacks' epoch end; they are read from it here.
        logged = {**trainer.callback_metrics, **pl_module.train_epoch_metrics()}
        metrics = {k: float(v) for k, v in logged.items() if v.numel() == 1}
        elapsed = time.perf_counter() - self._epoch_t0
        row = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "samples_per_s": self._samples / elapsed if elapsed else None,
            **metrics,
        }
        recent = torch.stack(list(self._recent)).float() if self._recent else None
        if recent is not None and bool(torch.isfinite(recent).any()):
            row["train/loss_end"] = float(recent[torch.isfinite(recent)].mean())
        self.history = [h for h in self.history if h["epoch"] != row["epoch"]] + [row]
        final = {k: v for k, v in row.items() if k not in ("epoch", "step")}
        atomic_write_json(
            self.run_dir / "metrics.json",
            {"final": final, "epochs": self.history, "world_size": trainer.world_size},
        )
        self._refresh("curves", lambda: self._curves_png(pl_module))
        val = metrics.get(pl_module.monitor)
        train_loss = metrics.get("train/loss_epoch", metrics.get("train/loss"))
        console.print(
            f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} · train loss "
            f"{train_loss if train_loss is None else f'{train_loss:.4f}'} · {pl_module.monitor} "
            f"{'-' if val is None else f'{val:.4f}'}"
            + (f" @ {metrics['val/threshold']:.2f}" if "val/threshold" in metrics else "")
            + f" · {row['samples_per_s'] or 0:.1f} samples/s · {time.perf_counter() - self._t0:.0f}s",
            soft_wrap=True,
        )

    def on_fit_end(self, trainer, pl_module) -> None:
        """Draw the pictures left stale by the refresh interval."""
        self._draw_stale(trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        """Draw the pictures left stale, so a stopped run keeps pictures of where it stopped."""
        self._draw_stale(trainer)  # a stopped run (NaN, Ctrl-C) keeps pictures of where it stopped

    def _refresh(self, name: str, draw) -> None:
        now = time.perf_counter()
        if now - self._drawn_at.get(name, -math.inf) >= self.REFRESH_S:
            draw()
            self._drawn_at[name] = now
            self._stale.pop(name, None)
        else:
            self._stale[name] = draw

    def _draw_stale(self, trainer) -> None:
        if trainer.is_global_zero:
            for draw in self._stale.values():
                draw()
        self._stale.clear()

    def _curves_png(self, pl_module) -> None:
        plot_histories(
            {"": self.history},
            self.run_dir / "curves.png",
            loss_keys=("train/loss_epoch", "val/loss"),
            metric_keys=pl_module.curve_keys,
            titles=("loss", pl_module.curve_title),
        )

    def _threshold_png(self, pl_module, epoch: int) -> None:
        import matplotlib.pyplot as plt

        th, curve = pl_module.threshold_curve
        fig = threshold_curve_figure(th, curve, f"validation, epoch {epoch + 1}")
        save_figure(fig, self.run_dir / "threshold_curve.png")
        tb = _tensorboard(pl_module)
        if tb is not None:
            tb.add_figure("val/threshold_curve", fig, global_step=pl_module.global_step)
        plt.close(fig)

    def _overlays(self, trainer, pl_module) -> None:
        loader = trainer.val_dataloaders
        if loader is None:
            return
        from segladder.data.datasets import decode_batch

        batch = decode_batch(next(iter(loader)))  # the loader may hand out uint8 (see ContrailsDataset)
        grid = pl_module.pictures(batch, min(self.n_overlays, pl_module.model_input(batch).shape[0]))
        if grid is None:
            return
        save_image(grid, self.run_dir / "overlays" / f"epoch_{trainer.current_epoch + 1:03d}.png")
        tb = _tensorboard(pl_module)
        if tb is not None:
            tb.add_image("val/overlays", grid, global_step=pl_module.global_step, dataformats="HWC")


def _tensorboard(pl_module):
    logger = pl_module.logger
    return (
        getattr(logger, "experiment", None) if logger is not None and hasattr(logger, "log_graph") else None
    )

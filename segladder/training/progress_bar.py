"""The training progress bar: epochs counted from 1, loss and samples/s read only at logging steps."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar

from segladder.tasks.base import logs_this_step
from segladder.training.recorder import RunRecorder


class EpochProgressBar(RichProgressBar):
    """Lightning's rich progress bar, counting epochs from 1 ("Epoch 1/3" … "Epoch 3/3").

    The log lines, metrics and overlays file names count so too (Lightning's own bar shows "Epoch 0/2" …
    "Epoch 2/2").
    """

    def _get_train_description(self, current_epoch: int) -> str:
        text = f"Epoch {current_epoch + 1}" + (
            f"/{self.trainer.max_epochs}" if self.trainer.max_epochs not in (None, -1) else ""
        )
        return f"{text:{len(self.validation_description)}}"


class IntervalProgressBar(EpochProgressBar):
    """Lightning's rich progress bar, showing the training loss and samples/s read every `log_every_n_steps`.

    Each read waits for the device to finish all the work queued so far, so the training step logs nothing to
    the bar itself (Lightning would read every progress-bar value after every batch).

    Args:
        *args: passed on to `RichProgressBar`.
        **kwargs: passed on to `RichProgressBar`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._shown: dict = {}

    def get_metrics(self, trainer, pl_module) -> dict:
        """The bar's metrics, with the training loss and samples/s as read at the last log step."""
        metrics = super().get_metrics(trainer, pl_module)
        if trainer.training and (logs_this_step(trainer) or not self._shown):
            loss = getattr(pl_module, "last_loss", None)
            recorder = next((c for c in trainer.callbacks if isinstance(c, RunRecorder)), None)
            self._shown = {
                **({"train/loss": f"{float(loss):.4g}"} if loss is not None else {}),
                **(
                    {"samples/s": f"{recorder.samples_per_s:.1f}"}
                    if recorder and recorder.samples_per_s
                    else {}
                ),
            }
        return {**metrics, **self._shown}

"""SIGINT and SIGTERM during training: stop at the next batch boundary, keeping a checkpoint to resume from."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from segladder.errors import Interrupted


class GracefulStop(Callback):
    """SIGINT or SIGTERM stops training at the next batch boundary with an `Interrupted` error.

    The unfinished epoch is dropped; checkpoints/last.ckpt keeps the last finished one, from which
    `segladder train --resume RUN` continues exactly. A second signal stops at once.
    (Lightning would turn Ctrl-C into `sys.exit(1)` and SIGTERM into a mid-epoch exit; this replaces both.)

    Args:
        run_dir: the run's folder, named in the message saying how to resume.
    """

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.received: str | None = None
        self._previous: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.received is not None:  # asked twice: stop now
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def on_train_start(self, trainer, pl_module) -> None:
        """Install the SIGINT and SIGTERM handlers (main thread only), keeping the ones they replace."""
        # Here, not in on_fit_start: Lightning installs its own SIGTERM handler between the two.
        if threading.current_thread() is not threading.main_thread():
            return  # signals can only be handled by the main thread
        for name in self.SIGNALS:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handler)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def on_fit_end(self, trainer, pl_module) -> None:
        """Restore the previous signal handlers."""
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        """Restore the previous signal handlers."""
        self._restore()

    def _check(self, trainer) -> None:
        if self.received is None:
            return
        last = self.run_dir / "checkpoints" / "last.ckpt"
        kept = (
            "checkpoints/last.ckpt keeps the last finished epoch"
            if last.exists()
            else "no epoch had finished, so nothing to keep"
        )
        raise Interrupted(
            f"training stopped on {self.received} during epoch {trainer.current_epoch + 1} (step "
            f"{trainer.global_step}); {kept}",
            hint=f"segladder train --resume {self.run_dir}",
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Stop with `Interrupted` when a signal arrived."""
        self._check(trainer)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        """Stop with `Interrupted` when a signal arrived."""
        self._check(trainer)

"""What a checkpoint holds and how it is written: atomically, only with finite weights, lean, with the RNG state."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from segladder.io import atomic_path, link_or_copy
from segladder.progress import console


def tensor_bytes(obj: Any) -> int:
    """Bytes of all tensors in a nested checkpoint: what torch.save will need on disk, give or take the index."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file and renames it: a full disk never clobbers the old one.

    A full disk becomes one `DiskFullError` naming the file, the bytes it needs and the bytes free.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        """Write `checkpoint` to `path` atomically, its space checked first."""
        with atomic_path(path, needed=tensor_bytes(checkpoint) + (1 << 16)) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        """Load the checkpoint at `path` weights-only, onto the CPU unless `map_location` says otherwise."""
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class FiniteModelCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that refuses to write weights holding NaN or inf, and spends no disk twice.

    When `last` is saved at the step `best` was just saved, it becomes a hard link to it (or a copy-on-write
    clone, or a copy where links are unsupported). With `optimizer_state="last"` only `last` carries the
    optimiser and scheduler state; `best` holds weights and what inference needs.

    Args:
        optimizer_state: "all" (every checkpoint can resume training) or "last" (only last.ckpt can).
    """

    def __init__(self, *args, optimizer_state: str = "all", **kwargs):
        super().__init__(*args, **kwargs)
        self.optimizer_state = optimizer_state

    # Lightning ≥ 2.4 writes last.ckpt only at steps where a top-k checkpoint was written, so after the best
    # epoch "last" would stay the best one and a resumed run would redo every later epoch.
    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        """Also save `last` after every validation, not only when a top-k checkpoint was written."""
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        """Also save `last` after every epoch, when checkpoints are saved at epoch ends."""
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def _ensure_last(self, trainer: L.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        bad = [
            k
            for k, v in trainer.lightning_module.state_dict().items()
            if v.is_floating_point() and not torch.isfinite(v).all()
        ]
        if bad:
            console.print(
                f"[red]not writing {Path(filepath).name}: non-finite weights in {', '.join(bad[:3])}[/]"
            )
            return
        is_last = Path(filepath).stem == self.CHECKPOINT_NAME_LAST
        same_step = self._last_checkpoint_saved and self._last_global_step_saved == trainer.global_step
        if (
            is_last
            and same_step
            and self.optimizer_state == "all"
            and self._last_checkpoint_saved != filepath
        ):
            if trainer.is_global_zero:
                link_or_copy(self._last_checkpoint_saved, filepath)
            trainer.strategy.barrier()
            self._last_checkpoint_saved = filepath
            return
        if not is_last and self.optimizer_state == "last":
            trainer.save_checkpoint(filepath, weights_only=True)
            self._last_global_step_saved, self._last_checkpoint_saved = trainer.global_step, filepath
            return
        super()._save_checkpoint(trainer, filepath)


class RNGState(Callback):
    """Saves and restores the global RNGs with each checkpoint so a resumed run draws what it would have."""

    def state_dict(self) -> dict:
        """The torch, NumPy, Python (and CUDA) RNG states."""
        np_state = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore the RNG states `state_dict` saved."""
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
        p = state["python"]
        random.setstate((p[0], tuple(p[1]), p[2]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

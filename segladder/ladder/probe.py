"""What the training loop is fed, measured against the validation set: input ranges and label alignment."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightning.pytorch.callbacks import Callback


@dataclass(frozen=True)
class InputStats:
    """Per input channel, on the labelled (last) frame: mean, std, and how the mask stands out.

    `contrast[c]` is (mean inside the mask − mean outside) / std: the signature a label should have in
    its own frame. Shuffled, transposed or mistimed labels lose it; unconverted inputs change mean and std.
    """

    mean: list[float]
    std: list[float]
    contrast: list[float]

    def as_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "contrast": self.contrast}


class _Accumulator:
    def __init__(self):
        self.n = self.pos = 0.0
        self.s = self.s2 = self.s_in = None

    def add(self, image: torch.Tensor, mask: torch.Tensor) -> None:
        x = image[:, :, -1].double() if image.dim() == 5 else image.double()  # (B, C, H, W), labelled frame
        m = (mask > 0.5).double()  # (B, 1, H, W)
        sums = (x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), (x * m).sum((0, 2, 3)))
        if self.s is None:
            self.s, self.s2, self.s_in = (torch.zeros_like(sums[0]) for _ in range(3))
        self.s += sums[0]
        self.s2 += sums[1]
        self.s_in += sums[2]
        self.n += x.shape[0] * x.shape[2] * x.shape[3]
        self.pos += float(m.sum())

    def stats(self) -> InputStats | None:
        if self.s is None or self.n == 0:
            return None
        mean = self.s / self.n
        std = (self.s2 / self.n - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6)
        if 0 < self.pos < self.n:
            inside = self.s_in / self.pos
            outside = (self.s - self.s_in) / (self.n - self.pos)
            contrast = ((inside - outside) / std).tolist()
        else:
            contrast = [0.0] * len(mean)
        return InputStats(mean.tolist(), std.tolist(), contrast)


def dataset_stats(items) -> InputStats | None:
    """InputStats of dataset items (dicts with `image` and `mask`), e.g. the validation set."""
    acc = _Accumulator()
    for it in items:
        acc.add(it["image"][None], it["mask"][None])
    return acc.stats()


class TrainingBatchProbe(Callback):
    """Measures the first `batches` training batches exactly as the loop receives them (after any wrapper)."""

    def __init__(self, batches: int = 16):
        self.batches = batches
        self._acc = _Accumulator()
        self._seen = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._seen < self.batches and "mask" in batch:
            self._acc.add(batch["image"].detach().cpu(), batch["mask"].detach().cpu())
            self._seen += 1

    @property
    def stats(self) -> InputStats | None:
        return self._acc.stats()

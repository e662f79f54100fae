"""What the training loop does, measured as it runs: the inputs and labels it is fed, and how far each step moves the weights."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch
from lightning.pytorch.callbacks import Callback


@dataclass(frozen=True)
class InputStats:
    """Per input channel, on the labelled (last) frame: mean, std, and how the mask stands out.

    `contrast[c]` is (mean inside the mask − mean of a 4-px ring around it) / std: the signature a label
    should have in its own frame. Local, because on real-like scenes the records that hold contrails differ
    from the empty ones far more than a thin line differs from its surroundings (a pooled inside-vs-outside
    contrast then measures which records were drawn, not the label). Shuffled, transposed or mistimed
    labels lose it; unconverted inputs change mean and std.
    """

    mean: list[float]
    std: list[float]
    contrast: list[float]

    def as_dict(self) -> dict:
        """The statistics as report JSON holds them."""
        return {"mean": self.mean, "std": self.std, "contrast": self.contrast}


class _Accumulator:
    def __init__(self):
        self.n = self.pos = self.ring_n = 0.0
        self.s = self.s2 = self.s_in = self.s_ring = None

    def add(self, image: torch.Tensor, mask: torch.Tensor) -> None:
        x = image[:, :, -1].double() if image.dim() == 5 else image.double()  # (B, C, H, W), labelled frame
        m = (mask > 0.5).double()  # (B, 1, H, W)
        ring = torch.nn.functional.max_pool2d(m, 9, stride=1, padding=4) - m
        sums = (x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), (x * m).sum((0, 2, 3)), (x * ring).sum((0, 2, 3)))
        if self.s is None:
            self.s, self.s2, self.s_in, self.s_ring = (torch.zeros_like(sums[0]) for _ in range(4))
        self.s += sums[0]
        self.s2 += sums[1]
        self.s_in += sums[2]
        self.s_ring += sums[3]
        self.n += x.shape[0] * x.shape[2] * x.shape[3]
        self.pos += float(m.sum())
        self.ring_n += float(ring.sum())

    def stats(self) -> InputStats | None:
        if self.s is None or self.n == 0:
            return None
        mean = self.s / self.n
        std = (self.s2 / self.n - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6)
        if 0 < self.pos and self.ring_n > 0:
            inside = self.s_in / self.pos
            around = self.s_ring / self.ring_n
            contrast = ((inside - around) / std).tolist()
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
    """Measures the first `batches` training batches exactly as the loop receives them (after any wrapper).

    Args:
        batches: how many training batches to measure.
    """

    def __init__(self, batches: int = 16):
        self.batches = batches
        self._acc = _Accumulator()
        self._seen = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """Measure the batch, while fewer than `batches` have been."""
        if self._seen < self.batches and "mask" in batch:
            self._acc.add(batch["image"].detach().cpu(), batch["mask"].detach().cpu())
            self._seen += 1

    @property
    def stats(self) -> InputStats | None:
        """The statistics of the batches measured (None before any)."""
        return self._acc.stats()


@dataclass(frozen=True)
class UpdateStats:
    """How far the optimiser steps moved the weights: ‖Δθ‖ / ‖θ‖ over all trained parameters, per step.

    An update as large as the weights themselves is no longer a small step down the loss: an LR spike, a
    schedule or unit bug (an LR in percent), or an exploding gradient the clipping did not stop.
    """

    steps: int
    max_ratio: float
    max_step: int  # the global step of the largest update
    median_ratio: float

    def as_dict(self) -> dict:
        """The statistics as report JSON holds them."""
        return dict(self.__dict__)


class UpdateSizeProbe(Callback):
    """Records ‖Δθ‖ / ‖θ‖ of every optimiser step (the weights are copied just before each step).

    The copy costs one pass over the weights per step, small next to a step's forward and backward.
    """

    def __init__(self):
        self._before: list[torch.Tensor] | None = None
        self._params: list[torch.Tensor] = []
        self._step = 0
        self._ratios: list[tuple[int, float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """Copy the weights that this step will update."""
        self._params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not self._params:
            return  # a step with no gradients (the NaN guard dropped them) moves nothing
        self._before = [p.detach().clone() for p in self._params]
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Record ‖Δθ‖ / ‖θ‖ of the step just taken."""
        if self._before is None:
            return  # accumulating: no step was taken on this batch
        with torch.no_grad():
            moved = _global_norm(torch._foreach_sub([p.detach() for p in self._params], self._before))
            size = _global_norm(self._before)
        self._before, self._params = None, []
        ratio = float(moved / size) if size > 0 else 0.0
        self._ratios.append((self._step, ratio if math.isfinite(ratio) else math.inf))

    @property
    def stats(self) -> UpdateStats | None:
        """The steps recorded, the largest ratio and its step, and the median ratio (None before any step)."""
        if not self._ratios:
            return None
        step, top = max(self._ratios, key=lambda r: r[1])
        return UpdateStats(len(self._ratios), top, step, statistics.median(r for _, r in self._ratios))


def _global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all `tensors` taken as one vector (the per-tensor norms combined in float64)."""
    return torch.stack([n.double() for n in torch._foreach_norm(tensors)]).norm()

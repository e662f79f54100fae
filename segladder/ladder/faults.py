"""Deliberate faults for the ladder to catch: training-data wrappers and training callbacks, never loop flags.

Each fault is a Lightning callback handed to `train(..., callbacks=...)`. Data faults wrap the training
set in their `setup` hook (the validation set stays the clean reference every gate measures against);
optimisation faults act on the optimiser or the model around the one-cycle peak, where reproductions of the
2nd-place CoaT_ULSTM recipe (DrHB/2nd-place-contrails: fp16, one-cycle LR) met NaN losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import Subset

from segladder.data.contrails import ASH_B_RANGE, ASH_G_RANGE, ASH_R_RANGE
from segladder.data.layout import LABELED_FRAME
from segladder.errors import ConfigError, SegladderError

FIRST_RUNG = "ResNet18_SimplerFCN"


class _TrainingView(Subset):
    """The training set with one thing broken per item; a Subset so the data module still finds its datasets."""

    def __init__(self, base, seed: int = 0):
        super().__init__(base, list(range(len(base))))
        self.seed = seed

    def __getitem__(self, index: int) -> dict:
        return self.broken(dict(self.dataset[index]), index)

    def __getitems__(self, indices: list[int]) -> list[dict]:
        # Subset's batched fetch would bypass __getitem__, and with it the fault.
        return [self[i] for i in indices]

    def broken(self, item: dict, index: int) -> dict:
        raise NotImplementedError


class ShuffledLabels(_TrainingView):
    """Each record gets another record's mask (a fixed derangement): ids and labels misaligned.

    Args:
        base: the training set.
        seed: the seed of the derangement.
    """

    def __init__(self, base, seed: int = 0):
        super().__init__(base, seed)
        order = np.random.default_rng(seed).permutation(len(base))
        self.partner = np.empty(len(base), dtype=np.int64)
        self.partner[order] = np.roll(order, -1)  # one cycle through all records: nobody keeps their own

    def broken(self, item: dict, index: int) -> dict:
        """`item` with the mask and soft label of its partner record."""
        other = self.dataset[int(self.partner[index])]
        for key in ("mask", "soft"):
            if key in other:
                item[key] = other[key]
        return item


class TransposedMasks(_TrainingView):
    """Masks with rows and columns swapped: an (H, W, 1) array read as (W, H, 1)."""

    def broken(self, item: dict, index: int) -> dict:
        """`item` with its mask and soft label transposed (H and W swapped)."""
        for key in ("mask", "soft"):
            if key in item:
                item[key] = item[key].transpose(-1, -2).contiguous()
        return item


class RawKelvin(_TrainingView):
    """Inputs left as brightness temperatures (K of bands 15, 14, 11) instead of ash RGB in [0, 1]."""

    def broken(self, item: dict, index: int) -> dict:
        """`item` with its ash RGB turned back into the bands 15, 14 and 11 in kelvin it was computed from."""
        r, g, b = item["image"][:3]
        b14 = ASH_B_RANGE[0] + b * (ASH_B_RANGE[1] - ASH_B_RANGE[0])
        b15 = b14 + ASH_R_RANGE[0] + r * (ASH_R_RANGE[1] - ASH_R_RANGE[0])
        b11 = b14 - (ASH_G_RANGE[0] + g * (ASH_G_RANGE[1] - ASH_G_RANGE[0]))
        item["image"] = torch.stack([b15, b14, b11, *item["image"][3:]])
        return item


class WrongFrame(_TrainingView):
    """The label paired with frame 7 instead of the labelled frame 4: every frame read 3 steps late.

    Args:
        base: the training set.
        late: the training splits read 3 frames later, in the order of `base`'s splits.
    """

    def __init__(self, base, late: list):
        super().__init__(base)
        self.late = late
        self.row = {rid: (k, i) for k, ds in enumerate(late) for i, rid in enumerate(ds.record_ids)}

    def broken(self, item: dict, index: int) -> dict:
        """`item` with the image of the same record read 3 frames late."""
        k, i = self.row[item["record_id"]]
        item["image"] = self.late[k][i]["image"]
        return item


class _DataFault(Callback):
    def __init__(self, seed: int = 0):
        self.seed = seed

    def setup(self, trainer, pl_module, stage: str) -> None:
        dm = trainer.datamodule
        if (
            stage == "fit"
            and dm is not None
            and dm.train_set is not None
            and not isinstance(dm.train_set.base, _TrainingView)
        ):
            dm.train_set.base = self.wrap(dm.train_set.base, dm.cfg)

    def wrap(self, base, data_cfg):
        raise NotImplementedError


class _Wrap(_DataFault):
    view: type[_TrainingView]

    def wrap(self, base, data_cfg):
        return self.view(base, self.seed)


class _ShuffleLabels(_Wrap):
    view = ShuffledLabels


class _TransposeMasks(_Wrap):
    view = TransposedMasks


class _RawKelvin(_Wrap):
    view = RawKelvin


class _WrongFrame(_DataFault):
    shift = 7 - LABELED_FRAME

    @classmethod
    def late_dataset(cls, data_cfg):
        from segladder.data.datasets import dataset_from_config

        late_cfg = data_cfg.model_copy(update={"frames": [f + cls.shift for f in data_cfg.frames]})
        try:
            return [
                dataset_from_config(late_cfg, split) for split in data_cfg.train_split.split("+") if split
            ]
        except SegladderError as exc:
            raise ConfigError(
                f"fault wrong_frame reads frames {late_cfg.frames}, which {data_cfg.root} cannot serve "
                f"({str(exc).splitlines()[0]}); prepare the cache with --frames 0-7."
            ) from None

    @classmethod
    def preflight(cls, cfg) -> None:
        cls.late_dataset(cfg.data)

    def wrap(self, base, data_cfg):
        return WrongFrame(base, self.late_dataset(data_cfg))


def _peak_step(trainer, pl_module) -> int:
    """The optimiser step at which the one-cycle schedule reaches its peak LR."""
    total = (
        pl_module._total_steps()
        if hasattr(pl_module, "_total_steps")
        else int(trainer.estimated_stepping_batches)
    )
    return int(pl_module.cfg.optim.pct_start * total)


class LRSpike(Callback):
    """×`factor` LR for `steps` optimiser steps from the one-cycle peak (a schedule or unit bug).

    Args:
        factor: the LR multiplier.
        steps: how many optimiser steps it lasts.
    """

    def __init__(self, factor: float = 100.0, steps: int = 3):
        self.factor, self.steps = factor, steps
        self._saved: list[float] | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """Multiply the LR by `factor` during the spike, keeping the scheduled one."""
        peak = _peak_step(trainer, pl_module)
        if peak <= trainer.global_step < peak + self.steps:
            self._saved = [g["lr"] for g in optimizer.param_groups]
            for g in optimizer.param_groups:
                g["lr"] *= self.factor

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Restore the scheduled LR after a spiked step."""
        if self._saved is not None:
            for g, lr in zip(trainer.optimizers[0].param_groups, self._saved, strict=True):
                g["lr"] = lr
            self._saved = None


class FrozenWeights(Callback):
    """Every optimiser step taken at LR 0: the loop runs, the loss is computed, the weights never move.

    That is a frozen model or a scheduler that zeroes the LR. No NaN, no large step, no data mismatch shows
    it; only learning does, which on hard data a short budget cannot tell from slow learning, so it is caught
    by the one-batch fit (`segladder.ladder.fit_probe`).
    """

    def __init__(self):
        self._saved: list[float] | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """Set every group's LR to 0 for this step, keeping the scheduled one."""
        self._saved = [g["lr"] for g in optimizer.param_groups]
        for g in optimizer.param_groups:
            g["lr"] = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Restore the scheduled LR after the step."""
        if self._saved is not None:
            for g, lr in zip(trainer.optimizers[0].param_groups, self._saved, strict=True):
                g["lr"] = lr
            self._saved = None


class Fp16Overflow(Callback):
    """NaN in fp16 at the LR peak: from the one-cycle peak, the logits leave float16's range (±65504).

    The BCE then turns NaN, as reproductions of the 2nd-place recipe met it. Emulated on any device: the
    model's last convolution multiplies its output by `gain` and rounds it through float16, as an exploding
    fp16 forward pass would; inf logits make BCE-with-logits NaN.

    Args:
        gain: the factor the last convolution's output is multiplied by.
    """

    def __init__(self, gain: float = 1e6):
        self.gain = gain
        self._handle = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """Hook the model's last convolution once the one-cycle peak is reached."""
        if self._handle is None and trainer.global_step >= _peak_step(trainer, pl_module):
            last = [m for m in pl_module.model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
            self._handle = last.register_forward_hook(lambda m, i, out: (out * self.gain).half().float())

    def teardown(self, trainer, pl_module, stage: str) -> None:
        """Remove the hook."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


@dataclass(frozen=True)
class Fault:
    """One injectable fault: what it breaks, which rung of the ladder must catch it, and its callback."""

    name: str
    description: str
    part: str  # "data", "training loop" or "numerics"
    expected_rung: str
    callback: type[Callback]
    needs_nan_report: bool = False

    def preflight(self, cfg) -> None:
        """Refuse data the fault cannot be planted in, before any rung trains."""
        check = getattr(self.callback, "preflight", None)
        if check is not None:
            check(cfg)

    def callbacks(self, seed: int = 0) -> list[Callback]:
        """The callbacks that plant the fault in a rung's training (data faults drawn with `seed`)."""
        return [self.callback(seed)] if issubclass(self.callback, _DataFault) else [self.callback()]


FAULTS: dict[str, Fault] = {
    f.name: f
    for f in [
        Fault(
            "shuffled_labels", "training masks shuffled across records", "data", FIRST_RUNG, _ShuffleLabels
        ),
        Fault(
            "transposed_masks",
            "training masks transposed (H and W swapped)",
            "data",
            FIRST_RUNG,
            _TransposeMasks,
        ),
        Fault(
            "wrong_frame",
            "label paired with frame 7 instead of the labelled frame 4",
            "data",
            FIRST_RUNG,
            _WrongFrame,
        ),
        Fault("raw_kelvin", "inputs left in Kelvin instead of ash RGB", "data", FIRST_RUNG, _RawKelvin),
        Fault("lr_spike", "LR ×100 for 3 steps at the one-cycle peak", "training loop", FIRST_RUNG, LRSpike),
        Fault(
            "frozen_weights",
            "every optimiser step at LR 0 (the weights never move)",
            "training loop",
            FIRST_RUNG,
            FrozenWeights,
        ),
        Fault(
            "fp16_overflow",
            "logits overflow float16 from the one-cycle peak (the NaN of fp16 runs at the LR peak)",
            "numerics",
            FIRST_RUNG,
            Fp16Overflow,
            needs_nan_report=True,
        ),
    ]
}


def get_fault(name: str) -> Fault:
    """The fault `name`; a ConfigError naming the close ones and all faults when there is none."""
    if name not in FAULTS:
        from segladder.registry import suggest

        raise ConfigError(
            f"--inject {name}: unknown fault.{suggest(name, list(FAULTS))} Faults: {', '.join(FAULTS)}."
        )
    return FAULTS[name]

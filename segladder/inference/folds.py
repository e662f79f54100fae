"""A fold ensemble as inference reads it: the folds' best checkpoints and the out-of-fold post-processing."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from segladder.inference.errors import InferenceError
from segladder.io import atomic_write_json

ENSEMBLE_FILE = "ensemble.json"


@dataclass
class FoldEnsemble:
    """What `segladder train --folds` leaves for `predict RUN --folds`: checkpoints and the OOF choices.

    Args:
        checkpoints: each fold's best checkpoint, in fold order.
        threshold: the threshold of best global Dice on the pooled out-of-fold maps.
        min_component: the small-component size (pixels) that maximised OOF Dice at that threshold.
        percentile: the same threshold as a percentile of all OOF pixels (for `--percentile` on new data).
        oof_dice: pooled OOF global Dice at `threshold` after component removal.
    """

    checkpoints: list[str]
    threshold: float
    min_component: int
    percentile: float
    oof_dice: float
    oof_dice_at_0_5: float
    oof_records: int
    fold_dice: list[float] = field(default_factory=list)
    best_epochs: list[int] = field(default_factory=list)

    @property
    def full_data_epochs(self) -> int:
        """Epochs for a final model on all data: the median over folds of the epoch count that was best."""
        epochs = sorted(e + 1 for e in self.best_epochs)
        return epochs[len(epochs) // 2] if epochs else 0

    def write(self, run_dir: Path) -> Path:
        """Write the ensemble into `run_dir` as its ensemble file; returns the path."""
        path = Path(run_dir) / ENSEMBLE_FILE
        atomic_write_json(path, {**asdict(self), "full_data_epochs": self.full_data_epochs})
        return path


def read_fold_ensemble(run_dir: str | Path) -> FoldEnsemble:
    """The fold ensemble of a cross-validated run directory, with checkpoints resolved against it."""
    run_dir = Path(run_dir)
    path = run_dir / ENSEMBLE_FILE
    if not path.is_file():
        raise InferenceError(
            f"{run_dir}: no {ENSEMBLE_FILE}; give the run directory of `segladder train CONFIG --folds K` "
            "after all its folds finished."
        )
    data = json.loads(path.read_text())
    data.pop("full_data_epochs", None)
    ens = FoldEnsemble(**data)
    ens.checkpoints = [str(p if Path(p).is_absolute() else run_dir / p) for p in ens.checkpoints]
    missing = [p for p in ens.checkpoints if not Path(p).is_file()]
    if missing:
        raise InferenceError(
            f"{run_dir}: fold checkpoint {missing[0]} is missing; run `segladder train --folds` "
            "on that run directory again to finish it."
        )
    return ens


class ProbabilityMean(nn.Module):
    """Models as one: the mean of their probabilities, returned as logits so that one model's contract holds.

    Logits are clamped at probabilities 1e-6 and 1 − 1e-6, far beyond any threshold a practitioner uses.

    Args:
        models: the members; each maps (B, C, T, H, W) to logits (B, 1, H, W).
    """

    def __init__(self, models: list[nn.Module], eps: float = 1e-6):
        super().__init__()
        self.members = nn.ModuleList(models)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logit of the members' mean probability."""
        p = torch.stack([torch.sigmoid(m(x).float()) for m in self.members]).mean(0)
        p = p.clamp(self.eps, 1 - self.eps)
        return torch.log(p) - torch.log(1 - p)

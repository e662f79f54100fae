"""Folds and epochs are numbered as users read them: "fold 1/3" … "fold 3/3", "Epoch 1/3" … "Epoch 3/3"."""

from __future__ import annotations

from types import SimpleNamespace

from segladder.inference.folds import FoldEnsemble
from segladder.training.folds import _summary
from segladder.training.progress_bar import EpochProgressBar


def test_progress_bar_counts_epochs_from_one():
    bar = EpochProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=3)
    assert [bar._get_train_description(e).strip() for e in range(3)] == [
        "Epoch 1/3",
        "Epoch 2/3",
        "Epoch 3/3",
    ]


def test_fold_summary_numbers_folds_as_the_fold_headers_do(tmp_path, capsys):
    ens = FoldEnsemble(
        checkpoints=[f"fold_{f}/checkpoints/best.ckpt" for f in range(3)],
        threshold=0.4,
        min_component=5,
        percentile=99.0,
        oof_dice=0.5,
        oof_dice_at_0_5=0.45,
        oof_records=9,
        fold_dice=[0.25, 0.5, 0.75],
        best_epochs=[0, 1, 2],
    )
    _summary(tmp_path, ens)
    lines = [line for line in capsys.readouterr().err.splitlines() if "global Dice" in line]
    assert lines == [
        "fold 1/3 (fold_0): global Dice 0.2500",
        "fold 2/3 (fold_1): global Dice 0.5000",
        "fold 3/3 (fold_2): global Dice 0.7500",
    ]

"""The ladder stops at the first failing rung unless told to keep going (an inconclusive one does not stop it),
and its gates read the epoch-end loss."""

from __future__ import annotations

from pathlib import Path

import pytest

from segladder.config import build_config
from segladder.ladder import run_ladder

RUNGS = ("ResNet18_SimplerFCN", "ResNet18_Simple", "ResNet18_U")
# Per rung: (train/loss_end, train/loss_epoch, val/dice_best) of its only epoch. ResNet18_Simple fails its
# loss gate (< 0.5) on the epoch-end loss even though the whole epoch's mean passes it.
HISTORIES = {
    "ResNet18_SimplerFCN": (0.40, 0.45, 0.30),
    "ResNet18_Simple": (0.55, 0.45, 0.35),
    "ResNet18_U": (0.30, 0.35, 0.50),
}


@pytest.fixture
def trained(monkeypatch):
    """Replace training with recorded histories; the list holds the rungs that were trained, in order."""
    import segladder.training.run as run_mod

    calls: list[str] = []

    def fake_train(cfg, out=None, resume=None, callbacks=()):
        calls.append(cfg.model.name)
        end, epoch, f1 = HISTORIES[cfg.model.name]
        row = {"epoch": 0, "train/loss_end": end, "train/loss_epoch": epoch, "val/dice_best": f1}
        return run_mod.TrainResult(Path(out), {"final": row, "epochs": [row]}, None, None)

    monkeypatch.setattr(run_mod, "train", fake_train)
    return calls


def fit_stub(monkeypatch, fitted: bool) -> list[str]:
    """Replace the one-batch fit (asked only when a rung missed progress checks alone) by its verdict."""
    import segladder.ladder.run as ladder_run
    from segladder.ladder.gates import FITS_ONE_BATCH, GateCheck

    asked: list[str] = []

    def check(cfg, fault, seed):
        asked.append(cfg.model.name)
        return GateCheck(FITS_ONE_BATCH, fitted, "stub")

    monkeypatch.setattr(ladder_run, "_one_batch_check", check)
    return asked


def test_ladder_stops_at_the_first_failing_rung(trained, tmp_path, monkeypatch):
    # Simple misses a progress check (its loss) and then cannot fit one batch: failed.
    asked = fit_stub(monkeypatch, fitted=False)
    result = run_ladder(build_config({}), tmp_path, RUNGS, profile="absolute")  # the fixed (absolute) gates
    assert asked == ["ResNet18_Simple"]
    assert trained == ["ResNet18_SimplerFCN", "ResNet18_Simple"]
    assert result.stopped_at == "ResNet18_Simple"
    assert [r.status for r in result.rungs] == ["passed", "failed"]
    failed = {c.name: c.passed for c in result.rungs[1].checks}
    assert failed["loss < 0.5"] is False and failed["F1 > 0.2"] is True


def test_keep_going_trains_every_rung(trained, tmp_path, monkeypatch):
    fit_stub(monkeypatch, fitted=False)
    result = run_ladder(build_config({}), tmp_path, RUNGS, keep_going=True, profile="absolute")
    assert trained == list(RUNGS) and result.stopped_at is None
    assert [r.status for r in result.rungs] == ["passed", "failed", "passed"]


def test_an_inconclusive_rung_does_not_stop_the_ladder(trained, tmp_path, monkeypatch):
    # The same progress miss with a batch that fits: no verdict on Simple, and the next rung still trains.
    fit_stub(monkeypatch, fitted=True)
    result = run_ladder(build_config({}), tmp_path, RUNGS, profile="absolute")
    assert trained == list(RUNGS) and result.stopped_at is None
    assert [r.status for r in result.rungs] == ["passed", "inconclusive", "passed"]
    assert result.outcome == "inconclusive" and result.exit_code == 3
    assert "Budget" not in result.rungs[1].note or result.rungs[1].budget is not None

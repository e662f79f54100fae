"""The ladder's gates: the seed's fixed numbers, calibrated ones relative to baselines, and the diagnosis."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from segladder.ladder.probe import InputStats, UpdateStats

# What each rung adds over the one below: the part a failing gate implicates (seed 000, 用途).
IMPLICATES = {
    "ResNet18_SimplerFCN": "data preprocessing or the training loop",
    "ResNet18_Simple": "the learnable (transposed-conv) decoder",
    "ResNet18_U": "the UNet skip connections and FPN",
    "ResNet18_ULSTM": "temporal modelling (the LSTM over frames)",
    "CoaT_ULSTM": "the CoaT encoder (its weights, input scaling or upsampling)",
}

# Seed 000's troubleshooting, by symptom.
ADVICE = {
    "nan": [
        "train in fp32 (--set trainer.precision=32)",
        "lower the LR (1e-3 → 1e-4)",
        "add gradient clipping (--set trainer.gradient_clip_val=1.0)",
        "add an epsilon to the Lovász denominator",
    ],
    "slow": [
        "raise the batch size and lower gradient accumulation",
        "raise data.num_workers",
        "mixed precision when it does not NaN (bf16-mixed)",
    ],
    "accuracy": [
        "a longer one-cycle warm-up (optim.pct_start 0.1 → 0.3)",
        "stronger augmentation (data.augment)",
        "dropout (model.ps=0.1)",
    ],
}


class Gate(BaseModel):
    """Expected results of one rung. `f1` is global Dice at the best threshold.

    The first block holds seed 000's absolute numbers (推奨テスト順序); the second the calibrated checks,
    which are fractions of baselines measured on the same validation set (see `Baselines`).
    """

    model_config = ConfigDict(extra="forbid")
    loss_max: float | None = Field(
        None, description="training loss (mean of an epoch's last 10 steps) must end below this"
    )
    loss_epoch: int | None = Field(None, description="1-based epoch whose loss is checked; None: the last")
    f1_min: float | None = None
    better_than_previous: bool = False
    at_least_previous: bool = False
    no_nan: bool = True

    f1_headroom: float | None = Field(None, description="F1 > floor + this × (ceiling − floor)")
    loss_gap: float | None = Field(
        None,
        description="final training loss < best constant's + this × (uninformed's − "
        "best constant's): the loss has closed part of that gap",
    )
    loss_rise: float | None = Field(
        None, description="no epoch's training loss above this × the lowest before it"
    )
    update_max: float | None = Field(
        None, description="no optimiser step moves the weights by more than this × their norm"
    )
    previous_tolerance: float = Field(
        0.0, ge=0, description="with *_previous: slack as a fraction of the headroom"
    )
    data_match: bool = Field(
        False, description="the training batches' inputs and label signature match validation's"
    )


@dataclass(frozen=True)
class GateProfile:
    """A named set of gates, which F1 of a rung they read (its best epoch's, or its last epoch's), and the
    budget they are meant for: typed config values laid over configs/ladder.yaml (seed 000's phase 1)."""

    name: str
    gates: dict[str, Gate]
    f1: str  # "best" or "last"
    description: str
    budget: dict = field(default_factory=dict)


SEED_GATES: dict[str, Gate] = {
    "ResNet18_SimplerFCN": Gate(loss_max=0.5, loss_epoch=1, f1_min=0.2),
    "ResNet18_Simple": Gate(loss_max=0.5, loss_epoch=1, f1_min=0.2),
    "ResNet18_U": Gate(loss_max=0.4, f1_min=0.4, better_than_previous=True),
    "ResNet18_ULSTM": Gate(loss_max=0.35, f1_min=0.5, better_than_previous=True),
    "CoaT_ULSTM": Gate(at_least_previous=True),
}
DEFAULT_GATES = SEED_GATES  # the seed's numbers, kept under their historical name

_LEARNS = {"loss_rise": 2.0, "loss_gap": 0.5, "update_max": 0.25}
# How far the training batches may drift from validation's before the data is blamed (in validation stds),
# and how much of validation's label signature (mask contrast in the labelled frame) they must keep.
INPUT_SHIFT_MAX, SIGNATURE_MIN = 1.0, 0.5
CALIBRATED_GATES: dict[str, Gate] = {
    "ResNet18_SimplerFCN": Gate(f1_headroom=0.03, data_match=True, **_LEARNS),
    "ResNet18_Simple": Gate(f1_headroom=0.03, **_LEARNS),
    "ResNet18_U": Gate(f1_headroom=0.25, better_than_previous=True, previous_tolerance=0.05, **_LEARNS),
    "ResNet18_ULSTM": Gate(f1_headroom=0.25, better_than_previous=True, previous_tolerance=0.05, **_LEARNS),
    "CoaT_ULSTM": Gate(at_least_previous=True, previous_tolerance=0.05, **_LEARNS),
}

PROFILES: dict[str, GateProfile] = {
    "seed": GateProfile(
        "seed",
        SEED_GATES,
        "best",
        "seed 000's absolute numbers, for real 256² data at the seed's budget "
        "(100 records, 1–2 epochs, batch 8 × accumulation 4)",
    ),
    "calibrated": GateProfile(
        "calibrated",
        CALIBRATED_GATES,
        "last",
        "relative to baselines on the same validation set, the rung below and "
        "the best constant prediction's loss; fits any data and budget",
        # 5 epochs without accumulation at a brisker LR: 60 steps of 100 records, the fewest measured to give
        # every rung a verdict from scratch (seed 000's 6 steps assume pretrained encoders).
        budget={"trainer": {"max_epochs": 5, "accumulate_grad_batches": 1}, "optim": {"lr": 3e-3}},
    ),
}
DEFAULT_PROFILE = "calibrated"


@dataclass(frozen=True)
class Baselines:
    """What a model-free prediction scores on the ladder's validation set; calibrated gates are relative to it.

    Args:
        positive_fraction: contrail pixels / all pixels of the validation masks.
        empty_f1: global Dice of predicting nothing (0 when there is any contrail).
        constant_f1: global Dice of predicting a contrail everywhere (2P / (P + N)).
        ceiling_f1: a single annotator's global Dice against the majority mask (from `human_individual_masks`,
            via the annotators' mean); None when the data holds no individual masks (1.0 is used).
        trivial_loss: the configured loss of the best constant prediction on the validation masks.
        uninformed_loss: the configured loss of predicting 0.5 everywhere (an untrained model's start).
        inputs: the validation set's input statistics (what the first rung's data checks compare with).
        train_prior: the positive-pixel fraction of (up to 64) training masks: where the rungs' outputs start.
        train_records: how many training records each rung trains on (for the budget warning).
        val_records: validation records the rungs are scored on.
        val_positive_records: how many of them hold a contrail (too few and no F1 can be judged).
    """

    positive_fraction: float
    empty_f1: float
    constant_f1: float
    ceiling_f1: float | None
    trivial_loss: float
    uninformed_loss: float = math.nan
    inputs: InputStats | None = None
    train_prior: float | None = None
    train_records: int | None = None
    val_records: int | None = None
    val_positive_records: int | None = None

    @property
    def floor(self) -> float:
        return max(self.empty_f1, self.constant_f1)

    @property
    def ceiling(self) -> float:
        return self.ceiling_f1 if self.ceiling_f1 is not None else 1.0

    @property
    def headroom(self) -> float:
        return max(self.ceiling - self.floor, 0.0)

    def as_dict(self) -> dict:
        return {
            "positive_fraction": self.positive_fraction,
            "empty_f1": self.empty_f1,
            "constant_f1": self.constant_f1,
            "ceiling_f1": self.ceiling_f1,
            "trivial_loss": self.trivial_loss,
            "uninformed_loss": self.uninformed_loss,
            "inputs": self.inputs.as_dict() if self.inputs else None,
            "train_prior": self.train_prior,
            "train_records": self.train_records,
            "val_records": self.val_records,
            "val_positive_records": self.val_positive_records,
        }


@dataclass
class GateCheck:
    name: str
    passed: bool
    detail: str


def _loss_at(history: list[dict], epoch: int | None) -> float | None:
    if not history:
        return None
    row = history[-1] if epoch is None else next((h for h in history if h["epoch"] == epoch - 1), history[-1])
    return row.get("train/loss_end", row.get("train/loss_epoch"))


def rung_f1(history: list[dict], which: str = "best") -> float | None:
    """A rung's F1 from its per-epoch history: the best epoch's, or the last epoch's."""
    f1s = [h.get("val/dice_best") for h in history if h.get("val/dice_best") is not None]
    if not f1s:
        return None
    return max(f1s) if which == "best" else f1s[-1]


def f1_rise(history: list[dict]) -> tuple[float, int]:
    """How much a rung's F1 rose over its last third of epochs (at least two), and over how many epochs;
    (0, 0) for fewer than three epochs, where a rise is mostly the warm-up."""
    f1s = [h["val/dice_best"] for h in history if h.get("val/dice_best") is not None]
    k = min(max(2, len(f1s) // 3), len(f1s) - 1)
    if k < 2:
        return 0.0, 0
    return f1s[-1] - f1s[-1 - k], k


def check_gates(
    gate: Gate,
    history: list[dict],
    previous: float | None,
    nan_steps: int = 0,
    baselines: Baselines | None = None,
    f1_from: str = "best",
    probe: InputStats | None = None,
    updates: UpdateStats | None = None,
) -> list[GateCheck]:
    """Apply one rung's gates to its per-epoch metrics; `previous` is the F1 of the rung below; `probe` what
    the training loop was fed (see `TrainingBatchProbe`); `updates` how far its steps moved the weights
    (see `UpdateSizeProbe`).

    With a tolerance for the rung below (calibrated profile), a rung short of the one below by more than
    the tolerance is not failed while its own F1 still rose over its last epochs by at least the excess
    (`f1_rise`): it has not converged at this budget, and the check says so instead of blaming its part.
    """
    checks: list[GateCheck] = []
    losses = [h.get("train/loss_epoch", h.get("train/loss")) for h in history]
    has_nan = nan_steps > 0 or any(v is None or not math.isfinite(v) for v in losses) or not history
    f1 = rung_f1(history, f1_from)
    f1 = float("nan") if f1 is None else f1
    if gate.no_nan:
        checks.append(
            GateCheck(
                "no NaN",
                not has_nan,
                f"{nan_steps} non-finite step(s)"
                if nan_steps
                else ("no epochs finished" if not history else "all losses finite"),
            )
        )
    if gate.loss_max is not None:
        loss = _loss_at(history, gate.loss_epoch)
        when = f"end of epoch {gate.loss_epoch}" if gate.loss_epoch else "end"
        ok = loss is not None and math.isfinite(loss) and loss < gate.loss_max
        checks.append(
            GateCheck(
                f"loss < {gate.loss_max}",
                ok,
                f"loss {loss:.4f} at the {when}" if loss is not None else "no loss",
            )
        )
    if gate.f1_min is not None:
        checks.append(
            GateCheck(f"F1 > {gate.f1_min}", math.isfinite(f1) and f1 > gate.f1_min, f"F1 {f1:.4f}")
        )
    if gate.loss_rise is not None and history:
        checks.append(_stable_loss(losses, gate.loss_rise))
    if gate.update_max is not None and updates is not None:
        checks.append(
            GateCheck(
                "steps smaller than the weights",
                updates.max_ratio <= gate.update_max,
                f"largest step moved the weights by {updates.max_ratio:.3g} of their norm (step "
                f"{updates.max_step}; median {updates.median_ratio:.3g}); bound {gate.update_max:g}",
            )
        )
    if baselines is not None and gate.loss_gap is not None and history:
        loss = _loss_at(history, None)
        b = baselines
        bound = b.trivial_loss + gate.loss_gap * (b.uninformed_loss - b.trivial_loss)
        if math.isfinite(bound):
            ok = loss is not None and math.isfinite(loss) and loss < bound
            checks.append(
                GateCheck(
                    "loss falls",
                    ok,
                    f"loss {_num(loss)} at the end vs {bound:.4f} = best constant "
                    f"{b.trivial_loss:.4f} + {gate.loss_gap:g} × (uninformed {b.uninformed_loss:.4f} − it)",
                )
            )
    if baselines is not None and gate.f1_headroom is not None:
        if baselines.positive_fraction == 0:
            checks.append(
                GateCheck("F1 above the baselines", True, "validation masks are empty: not checked")
            )
        else:
            bound = baselines.floor + gate.f1_headroom * baselines.headroom
            checks.append(
                GateCheck(
                    "F1 above the baselines",
                    math.isfinite(f1) and f1 > bound,
                    f"F1 {f1:.4f} vs {bound:.4f} = constant {baselines.floor:.4f} + "
                    f"{gate.f1_headroom:g} × ({baselines.ceiling:.4f} − {baselines.floor:.4f})",
                )
            )
    if gate.data_match and baselines is not None and baselines.inputs is not None and probe is not None:
        checks += _data_checks(probe, baselines.inputs)
    if (gate.better_than_previous or gate.at_least_previous) and previous is not None:
        slack = gate.previous_tolerance * (baselines.headroom if baselines is not None else 1.0)
        if slack > 0:
            excess = previous - slack - f1
            rise, epochs = f1_rise(history)
            detail = f"F1 {f1:.4f} vs {previous:.4f} (tolerance {slack:.4f})"
            ok = math.isfinite(f1) and excess <= 0
            if math.isfinite(f1) and not ok and rise >= excess:
                ok = True
                detail += (
                    f"; still rising (+{rise:.4f} over its last {epochs} epochs, more than the "
                    f"{excess:.4f} beyond the tolerance): not converged at this budget, so no verdict on its "
                    "part; train longer to compare"
                )
            checks.append(GateCheck("not worse than the rung below", ok, detail))
        else:
            ok = f1 > previous if gate.better_than_previous else f1 >= previous - 1e-4
            word = "better than" if gate.better_than_previous else "at least"
            checks.append(GateCheck(f"{word} the rung below", ok, f"F1 {f1:.4f} vs {previous:.4f}"))
    return checks


def _data_checks(train: InputStats, val: InputStats) -> list[GateCheck]:
    """Do the training batches look like the validation set: input ranges, and the label's signature?"""
    shift = max(abs(a - b) / s for a, b, s in zip(train.mean, val.mean, val.std, strict=True))
    spread = max(max(a / s, s / a) for a, s in zip(train.std, val.std, strict=True))
    checks = [
        GateCheck(
            "training inputs match validation",
            shift < INPUT_SHIFT_MAX and spread < 3.0,
            f"channel means differ by up to {shift:.2f} validation stds, stds by up to {spread:.2f}×",
        )
    ]
    norm = sum(c * c for c in val.contrast)
    if norm > 0.01:
        kept = sum(a * b for a, b in zip(train.contrast, val.contrast, strict=True)) / norm
        checks.append(
            GateCheck(
                "training labels sit on their signature",
                kept > SIGNATURE_MIN,
                f"the training masks keep {kept:.2f} of validation's mask contrast in the labelled frame",
            )
        )
    return checks


def _stable_loss(losses: list[float | None], factor: float) -> GateCheck:
    """No epoch's training loss above `factor` × the lowest epoch loss before it (an LR spike, a blow-up)."""
    low = math.inf
    for i, v in enumerate(losses):
        if v is None or not math.isfinite(v):
            return GateCheck("loss stable", False, f"epoch {i + 1}: loss not finite")
        if v > factor * low:
            return GateCheck(
                "loss stable", False, f"epoch {i + 1}: loss {v:.4f} > {factor:g} × {low:.4f} before it"
            )
        low = min(low, v)
    return GateCheck("loss stable", True, f"never above {factor:g}× an earlier epoch")


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def curve_shape(history: list[dict]) -> str:
    """A few words on how the training loss moved: the first clue when a rung fails."""
    losses = [h.get("train/loss_epoch", h.get("train/loss")) for h in history]
    if not losses:
        return "no epoch finished"
    if any(v is None or not math.isfinite(v) for v in losses):
        return "non-finite losses"
    if len(losses) == 1:
        return f"one epoch, loss {losses[0]:.4f}"
    drop = (losses[0] - losses[-1]) / max(abs(losses[0]), 1e-12)
    trend = "falling" if drop > 0.05 else ("rising" if drop < -0.05 else "flat")
    return f"{trend}: {losses[0]:.4f} → {losses[-1]:.4f} over {len(losses)} epochs"


@dataclass
class RungResult:
    rung: str
    status: str  # "passed", "failed", "not run"
    run_dir: Path | None = None
    metrics: dict = field(default_factory=dict)
    checks: list[GateCheck] = field(default_factory=list)
    reason: str = ""
    seconds: float = 0.0
    diagnosis: str = ""

    @property
    def history(self) -> list[dict]:
        return self.metrics.get("epochs", [])

    @property
    def f1(self) -> float | None:
        return self.metrics.get("final", {}).get("val/dice_best") if self.metrics else None

    @property
    def best_f1(self) -> float | None:
        return rung_f1(self.history, "best")

    @property
    def f1_last(self) -> float | None:
        return rung_f1(self.history, "last")

    @property
    def loss(self) -> float | None:
        return _loss_at(self.history, None)

    @property
    def nan_report(self) -> Path | None:
        path = self.run_dir / "nan_report.json" if self.run_dir else None
        return path if path is not None and path.exists() else None

    @property
    def implicated(self) -> str | None:
        return (
            IMPLICATES.get(self.rung, "what this model adds over the rung below")
            if self.status == "failed"
            else None
        )


def diagnose(result: RungResult, below: RungResult | None) -> str:
    """The seed's reading of a failed rung: which part is implicated, the evidence and what to try."""
    failed = [c for c in result.checks if not c.passed]
    lines = [
        f"{result.rung} failed: {'; '.join(f'{c.name} ({c.detail})' for c in failed)}.",
        f"Implicated: {IMPLICATES.get(result.rung, 'what this model adds over the rung below')}.",
    ]
    lines.append(f"Evidence: loss curve {curve_shape(result.history)}")
    if below is not None and below.best_f1 is not None and result.best_f1 is not None:
        lines.append(f"          F1 {result.best_f1:.4f} vs {below.best_f1:.4f} for {below.rung}")
    if result.nan_report is not None:
        lines.append(f"          NaN report: {result.nan_report}")
    symptom = "nan" if any(c.name == "no NaN" for c in failed) else "accuracy"
    lines.append("Try (seed 000): " + "; ".join(ADVICE[symptom]))
    return "\n".join(lines)

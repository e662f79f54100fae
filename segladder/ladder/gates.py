"""The ladder's gates: fixed (absolute) numbers, calibrated ones relative to baselines, and the diagnosis."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from segladder.ladder.probe import InputStats, UpdateStats

# What each rung adds over the one below: the part a failing gate implicates. The ResNet-18 rungs are the
# 2nd-place team's baselines (Lunran/2nd-place-contrails `src_inference1/`), each one idea more than the last.
IMPLICATES = {
    "ResNet18_SimplerFCN": "data preprocessing or the training loop",
    "ResNet18_Simple": "the learnable (transposed-conv) decoder",
    "ResNet18_U": "the UNet skip connections and FPN",
    "ResNet18_ULSTM": "temporal modelling (the LSTM over frames)",
    "CoaT_ULSTM": "the CoaT encoder (its weights, input scaling or upsampling)",
}

# The ladder's troubleshooting, by symptom.
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
    "fit": [
        "check that the optimiser steps (optim.lr above 0, no parameter frozen by mistake)",
        "check that the loss reaches the weights (no detach or no_grad in forward)",
        "check that the model's output depends on its input (model.name, a custom forward)",
    ],
}


class Gate(BaseModel):
    """Expected results of one rung. `f1` is global Dice at the best threshold.

    The first block holds the absolute numbers of the ladder's original plan; the second the calibrated
    checks, which are fractions of baselines measured on the same validation set (see `Baselines`).
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
    """A named set of gates, which F1 of a rung they read, and the budget they are meant for.

    The F1 is a rung's best epoch's or its last epoch's. The budget is typed config values laid over
    configs/ladder.yaml (its phase-1 settings).
    """

    name: str
    gates: dict[str, Gate]
    f1: str  # "best" or "last"
    description: str
    budget: dict = field(default_factory=dict)


ABSOLUTE_GATES: dict[str, Gate] = {
    "ResNet18_SimplerFCN": Gate(loss_max=0.5, loss_epoch=1, f1_min=0.2),
    "ResNet18_Simple": Gate(loss_max=0.5, loss_epoch=1, f1_min=0.2),
    "ResNet18_U": Gate(loss_max=0.4, f1_min=0.4, better_than_previous=True),
    "ResNet18_ULSTM": Gate(loss_max=0.35, f1_min=0.5, better_than_previous=True),
    "CoaT_ULSTM": Gate(at_least_previous=True),
}
DEFAULT_GATES = ABSOLUTE_GATES  # the fixed numbers, kept under their historical name

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
    "absolute": GateProfile(
        "absolute",
        ABSOLUTE_GATES,
        "best",
        "fixed loss and F1 numbers, for real 256² data at the ladder's phase-1 budget "
        "(100 records, 1–2 epochs, batch 8 × accumulation 4) with pretrained encoders",
    ),
    "calibrated": GateProfile(
        "calibrated",
        CALIBRATED_GATES,
        "last",
        "relative to baselines on the same validation set, the rung below and "
        "the best constant prediction's loss; fits any data and budget",
        # 5 epochs without accumulation at a brisker LR: 60 steps of 100 records, the fewest measured to give
        # every rung a verdict from scratch (the absolute profile's 6 steps assume pretrained encoders).
        budget={"trainer": {"max_epochs": 5, "accumulate_grad_batches": 1}, "optim": {"lr": 3e-3}},
    ),
}
DEFAULT_PROFILE = "calibrated"


# Annotator agreement where the data cannot measure it (one annotator a record, as in every image/mask
# folder and in the competition's validation split). 1.0 would claim annotators agree on every pixel of
# a 1–3 px line, and raise the F1 bounds out of reach. Measured instead the way `measure_baselines` does
# on the records where it can be: a single annotator's pooled global Dice against the majority mask, over
# the 7 multi-annotator training records of the public OpenContrails sample (4 annotators each; 0.764).
# It stands in for agreement on contrail masks; data of another kind with one annotator should measure
# its own and pass it as `ceiling_f1`.
ASSUMED_AGREEMENT = 0.76


@dataclass(frozen=True)
class Baselines:
    """What a model-free prediction scores on the ladder's validation set; calibrated gates are relative to it.

    Args:
        positive_fraction: contrail pixels / all pixels of the validation masks.
        empty_f1: global Dice of predicting nothing (0 when there is any contrail).
        constant_f1: global Dice of predicting a contrail everywhere (2P / (P + N)).
        ceiling_f1: a single annotator's global Dice against the majority mask (from `human_individual_masks`,
            via the annotators' mean); None when the data holds no individual masks or one annotator a
            record: agreement is then unknown and the gates assume `ASSUMED_AGREEMENT`.
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
        """The F1 any rung must beat: the better of predicting nothing and predicting everything."""
        return max(self.empty_f1, self.constant_f1)

    @property
    def ceiling(self) -> float:
        """The F1 no rung can be asked to pass: the annotators' agreement, measured or assumed."""
        return self.ceiling_f1 if self.ceiling_f1 is not None else ASSUMED_AGREEMENT

    @property
    def ceiling_text(self) -> str:
        """The ceiling as the gates' details print it, saying when it is assumed rather than measured."""
        if self.ceiling_f1 is not None:
            return f"{self.ceiling_f1:.4f}"
        return f"{ASSUMED_AGREEMENT:.4f} assumed"

    @property
    def headroom(self) -> float:
        """The distance from the floor to the ceiling (0 when the floor is not below it)."""
        return max(self.ceiling - self.floor, 0.0)

    def as_dict(self) -> dict:
        """The baselines as report JSON holds them, saying whether the ceiling was measured or assumed."""
        return {
            "positive_fraction": self.positive_fraction,
            "empty_f1": self.empty_f1,
            "constant_f1": self.constant_f1,
            "ceiling_f1": self.ceiling_f1,
            "ceiling": self.ceiling,
            "ceiling_source": "measured" if self.ceiling_f1 is not None else "assumed",
            "trivial_loss": self.trivial_loss,
            "uninformed_loss": self.uninformed_loss,
            "inputs": self.inputs.as_dict() if self.inputs else None,
            "train_prior": self.train_prior,
            "train_records": self.train_records,
            "val_records": self.val_records,
            "val_positive_records": self.val_positive_records,
        }


# What a check's failure shows. A "fault" check fails on a broken part whatever the data (a NaN, an
# oversized step, training batches that do not look like validation): its failure fails the rung. A
# "progress" check compares the rung's F1 or loss with what the data allows at this budget; on hard data
# an untrained rung misses it as a broken one does, so its failure alone makes the rung inconclusive, and
# failed only with evidence that does not depend on the data (the one-batch fit, `fit_probe`).
FAULT, PROGRESS = "fault", "progress"


@dataclass
class GateCheck:
    """One gate's verdict on a rung: passed or not, why, and whether a miss is a fault or a lack of progress."""

    name: str
    passed: bool
    detail: str
    kind: str = FAULT
    target: float | None = None  # the F1 a progress check asked for (what a budget estimate aims at)
    measured: bool = True  # False: the check could not run; it neither passes nor fails the rung

    @property
    def mark(self) -> str:
        """✓ passed, ✗ missed, ? not measured."""
        return "?" if not self.measured else ("✓" if self.passed else "✗")


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
    """How much a rung's F1 rose over its last third of epochs (at least two), and over how many epochs.

    (0, 0) for fewer than three epochs, where a rise is mostly the warm-up.
    """
    f1s = [h["val/dice_best"] for h in history if h.get("val/dice_best") is not None]
    k = min(max(2, len(f1s) // 3), len(f1s) - 1)
    if k < 2:
        return 0.0, 0
    return f1s[-1] - f1s[-1 - k], k


@dataclass
class RungEvidence:
    """What a rung's gates are checked against: its gate, its per-epoch history and what else was measured."""

    gate: Gate
    history: list[dict]
    previous: float | None  # the F1 of the rung below
    nan_steps: int = 0
    baselines: Baselines | None = None
    f1_from: str = "best"
    probe: InputStats | None = None  # what the training loop was fed (`TrainingBatchProbe`)
    updates: UpdateStats | None = None  # how far its steps moved the weights (`UpdateSizeProbe`)

    @property
    def losses(self) -> list[float | None]:
        """The training loss of each epoch (None where none was logged)."""
        return [h.get("train/loss_epoch", h.get("train/loss")) for h in self.history]

    @property
    def f1(self) -> float:
        """The rung's F1 (`f1_from`: its best or its last epoch's), NaN when no epoch has one."""
        f1 = rung_f1(self.history, self.f1_from)
        return float("nan") if f1 is None else f1


def _gate_no_nan(e: RungEvidence) -> list[GateCheck]:
    if not e.gate.no_nan:
        return []
    has_nan = e.nan_steps > 0 or any(v is None or not math.isfinite(v) for v in e.losses) or not e.history
    detail = (
        f"{e.nan_steps} non-finite step(s)"
        if e.nan_steps
        else ("no epochs finished" if not e.history else "all losses finite")
    )
    return [GateCheck("no NaN", not has_nan, detail)]


def _gate_loss_max(e: RungEvidence) -> list[GateCheck]:
    gate = e.gate
    if gate.loss_max is None:
        return []
    loss = _loss_at(e.history, gate.loss_epoch)
    when = f"end of epoch {gate.loss_epoch}" if gate.loss_epoch else "end"
    ok = loss is not None and math.isfinite(loss) and loss < gate.loss_max
    detail = f"loss {loss:.4f} at the {when}" if loss is not None else "no loss"
    return [GateCheck(f"loss < {gate.loss_max}", ok, detail, PROGRESS)]


def _gate_f1_min(e: RungEvidence) -> list[GateCheck]:
    if e.gate.f1_min is None:
        return []
    f1 = e.f1
    ok = math.isfinite(f1) and f1 > e.gate.f1_min
    return [GateCheck(f"F1 > {e.gate.f1_min}", ok, f"F1 {f1:.4f}", PROGRESS, e.gate.f1_min)]


def _gate_loss_rise(e: RungEvidence) -> list[GateCheck]:
    if e.gate.loss_rise is None or not e.history:
        return []
    return [_stable_loss(e.losses, e.gate.loss_rise)]


def _gate_update_max(e: RungEvidence) -> list[GateCheck]:
    u = e.updates
    if e.gate.update_max is None or u is None:
        return []
    return [
        GateCheck(
            "steps smaller than the weights",
            u.max_ratio <= e.gate.update_max,
            f"largest step moved the weights by {u.max_ratio:.3g} of their norm (step "
            f"{u.max_step}; median {u.median_ratio:.3g}); bound {e.gate.update_max:g}",
        )
    ]


def _gate_loss_gap(e: RungEvidence) -> list[GateCheck]:
    b, gap = e.baselines, e.gate.loss_gap
    if b is None or gap is None or not e.history:
        return []
    loss = _loss_at(e.history, None)
    bound = b.trivial_loss + gap * (b.uninformed_loss - b.trivial_loss)
    if not math.isfinite(bound):
        return []
    ok = loss is not None and math.isfinite(loss) and loss < bound
    detail = (
        f"loss {_num(loss)} at the end vs {bound:.4f} = best constant "
        f"{b.trivial_loss:.4f} + {gap:g} × (uninformed {b.uninformed_loss:.4f} − it)"
    )
    return [GateCheck("loss falls", ok, detail)]


def _gate_f1_headroom(e: RungEvidence) -> list[GateCheck]:
    b, headroom = e.baselines, e.gate.f1_headroom
    if b is None or headroom is None:
        return []
    if b.positive_fraction == 0:
        return [
            GateCheck("F1 above the baselines", True, "validation masks are empty: not checked", PROGRESS)
        ]
    f1 = e.f1
    bound = b.floor + headroom * b.headroom
    detail = (
        f"F1 {f1:.4f} vs {bound:.4f} = constant {b.floor:.4f} + "
        f"{headroom:g} × ({b.ceiling_text} − {b.floor:.4f})"
    )
    return [GateCheck("F1 above the baselines", math.isfinite(f1) and f1 > bound, detail, PROGRESS, bound)]


def _gate_data_match(e: RungEvidence) -> list[GateCheck]:
    if not e.gate.data_match or e.baselines is None or e.baselines.inputs is None or e.probe is None:
        return []
    return _data_checks(e.probe, e.baselines.inputs)


def _gate_previous(e: RungEvidence) -> list[GateCheck]:
    gate, previous, f1 = e.gate, e.previous, e.f1
    if not (gate.better_than_previous or gate.at_least_previous) or previous is None:
        return []
    slack = gate.previous_tolerance * (e.baselines.headroom if e.baselines is not None else 1.0)
    if not slack > 0:  # no tolerance (a NaN headroom leaves none either)
        ok = f1 > previous if gate.better_than_previous else f1 >= previous - 1e-4
        word = "better than" if gate.better_than_previous else "at least"
        return [GateCheck(f"{word} the rung below", ok, f"F1 {f1:.4f} vs {previous:.4f}", PROGRESS, previous)]
    excess = previous - slack - f1
    rise, epochs = f1_rise(e.history)
    detail = f"F1 {f1:.4f} vs {previous:.4f} (tolerance {slack:.4f})"
    ok = math.isfinite(f1) and excess <= 0
    if math.isfinite(f1) and not ok and rise >= excess:
        detail += (
            f"; still rising (+{rise:.4f} over its last {epochs} epochs, more than the "
            f"{excess:.4f} beyond the tolerance): not converged at this budget"
        )
    return [GateCheck("not worse than the rung below", ok, detail, PROGRESS, previous - slack)]


# One function a gate, in the order a rung's checks are listed; each returns [] when its gate is off or
# lacks what it needs (the history, the baselines, the probes, the rung below).
GATE_CHECKS = (
    _gate_no_nan,
    _gate_loss_max,
    _gate_f1_min,
    _gate_loss_rise,
    _gate_update_max,
    _gate_loss_gap,
    _gate_f1_headroom,
    _gate_data_match,
    _gate_previous,
)


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
    """Apply one rung's gates to its per-epoch metrics.

    `previous` is the F1 of the rung below; `probe` what the training loop was fed (see `TrainingBatchProbe`);
    `updates` how far its steps moved the weights (see `UpdateSizeProbe`).

    With a tolerance for the rung below (calibrated profile), a rung short of the one below by more than
    the tolerance is not failed while its own F1 still rose over its last epochs by at least the excess
    (`f1_rise`): it has not converged at this budget, and the check says so instead of blaming its part.
    """
    evidence = RungEvidence(gate, history, previous, nan_steps, baselines, f1_from, probe, updates)
    return [check for gate_checks in GATE_CHECKS for check in gate_checks(evidence)]


def rung_verdict(checks: list[GateCheck]) -> str:
    """A rung's status from its checks: "passed", "failed" or "inconclusive".

    Failed on a fault check (evidence of a broken part whatever the data); inconclusive when only progress
    checks missed (this budget cannot judge this data); passed when every check passed.
    """
    if any(not c.passed and c.measured and c.kind == FAULT for c in checks):
        return "failed"
    return "passed" if all(c.passed and c.measured for c in checks) else "inconclusive"


# An estimate past this many times the budget that was trained is not one: the curve is too flat.
BUDGET_FACTOR_MAX = 20.0


@dataclass(frozen=True)
class BudgetEstimate:
    """The budget an inconclusive rung would need, from its own F1 curve.

    F1 is fitted linearly in log(optimiser steps) over every epoch the rung trained (least squares), and the
    fit is followed to the F1 its missed checks asked for. One-cycle schedules flatten a run's last epochs,
    so the fit is a guide, not a promise; `factor` is None when the curve does not rise (no estimate can
    be read from it) or rises too slowly to reach the target within `BUDGET_FACTOR_MAX` × the budget.

    Args:
        target: the F1 the rung's missed progress checks asked for.
        steps: optimiser steps the rung trained.
        epochs: epochs the rung trained.
        gain_per_doubling: the fitted F1 gain per doubling of the steps.
        factor: the estimated budget as a multiple of the steps trained.
    """

    target: float
    steps: int
    epochs: int
    gain_per_doubling: float
    factor: float | None

    @property
    def epochs_needed(self) -> int | None:
        """The epochs the estimate asks for, rounded up; None without an estimate."""
        return None if self.factor is None else math.ceil(self.epochs * self.factor - 1e-9)

    def text(self) -> str:
        """The estimate in words, with the `--budget` to run next."""
        how = (
            f"F1 fitted linearly in log(steps) over its {self.epochs} epochs gains "
            f"{self.gain_per_doubling:+.4f} a doubling of the steps"
        )
        if self.factor is None:
            if self.gain_per_doubling <= 0:
                return (
                    f"{how}, so its curve gives no estimate: double the budget "
                    f"(--budget epochs={2 * self.epochs}) and run the ladder again"
                )
            return (
                f"{how}: reaching F1 {self.target:.4f} would take more than {BUDGET_FACTOR_MAX:g}× the "
                f"{self.steps} steps trained; train with pretrained weights (model.pretrained) or on more "
                "records before judging this rung"
            )
        return (
            f"estimated {self.factor:.1f}× the {self.steps} steps trained to reach F1 {self.target:.4f} "
            f"(--budget epochs={self.epochs_needed}): {how}"
        )

    def as_dict(self) -> dict:
        """The estimate as report JSON holds it."""
        return {
            "target": self.target,
            "steps": self.steps,
            "epochs": self.epochs,
            "gain_per_doubling": self.gain_per_doubling,
            "factor": self.factor,
            "epochs_needed": self.epochs_needed,
        }


def estimate_budget(history: list[dict], checks: list[GateCheck]) -> BudgetEstimate | None:
    """What budget the rung's missed progress checks would need (see `BudgetEstimate`).

    None without a target or with fewer than two epochs that report a step and an F1.
    """
    targets = [c.target for c in checks if c.kind == PROGRESS and not c.passed and c.target is not None]
    points = [
        (math.log(h["step"]), h["val/dice_best"])
        for h in history
        if h.get("step") and h.get("val/dice_best") is not None
    ]
    if not targets or len(points) < 2:
        return None
    target = max(targets)
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx > 0 else 0.0
    last_x, last_f1 = points[-1]
    factor = None
    if slope > 0:
        # From the fitted line's value at the last step (the last epoch alone is noisy).
        needed = (target - (my + slope * (last_x - mx))) / slope
        # At least 1.5×: a fitted line already past the target at this budget means the last epoch fell
        # short by noise, which a second run at the same budget would meet again.
        factor = max(1.5, math.exp(needed))
        if factor > BUDGET_FACTOR_MAX:
            factor = None
    epochs = len(history)
    return BudgetEstimate(target, int(history[-1].get("step") or 0), epochs, slope * math.log(2), factor)


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
    """One rung of a ladder run: its status, metrics, checks and what they implicate."""

    rung: str
    status: str  # "passed", "failed", "inconclusive", "not run"
    run_dir: Path | None = None
    metrics: dict = field(default_factory=dict)
    checks: list[GateCheck] = field(default_factory=list)
    reason: str = ""
    seconds: float = 0.0
    diagnosis: str = ""
    budget: BudgetEstimate | None = None
    note: str = ""  # why an inconclusive rung has no verdict (`explain_inconclusive`)

    @property
    def history(self) -> list[dict]:
        """The rung's per-epoch metrics."""
        return self.metrics.get("epochs", [])

    @property
    def f1(self) -> float | None:
        """The F1 of the rung's final metrics (None before it trained)."""
        return self.metrics.get("final", {}).get("val/dice_best") if self.metrics else None

    @property
    def best_f1(self) -> float | None:
        """The F1 of the rung's best epoch."""
        return rung_f1(self.history, "best")

    @property
    def f1_last(self) -> float | None:
        """The F1 of the rung's last epoch."""
        return rung_f1(self.history, "last")

    @property
    def loss(self) -> float | None:
        """The final training loss the gates read."""
        return _loss_at(self.history, None)

    @property
    def nan_report(self) -> Path | None:
        """The rung's nan_report.json, when the NaN guard wrote one."""
        path = self.run_dir / "nan_report.json" if self.run_dir else None
        return path if path is not None and path.exists() else None

    @property
    def implicated(self) -> str | None:
        """The part a failed rung implicates (what its model adds over the rung below); None unless it failed."""
        return (
            IMPLICATES.get(self.rung, "what this model adds over the rung below")
            if self.status == "failed"
            else None
        )


def diagnose(result: RungResult, below: RungResult | None) -> str:
    """The ladder's reading of a failed rung: which part is implicated, the evidence and what to try."""
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
    names = {c.name for c in failed}
    symptom = "nan" if "no NaN" in names else ("fit" if FITS_ONE_BATCH in names else "accuracy")
    lines.append("Try: " + "; ".join(ADVICE[symptom]))
    return "\n".join(lines)


FITS_ONE_BATCH = "fits one batch"


def explain_inconclusive(result: RungResult) -> str:
    """Why a rung has no verdict: what it missed, the evidence that nothing is broken, the budget it needs."""
    missed = [c for c in result.checks if not c.passed]
    fit = next((c for c in result.checks if c.name == FITS_ONE_BATCH), None)
    if fit is None:
        learns = ""
    elif fit.measured:
        learns = f", and {fit.detail}, so its model and loop can learn"
    else:
        learns = f"; the one-batch fit could not run ({fit.detail}), so whether it can learn is unknown"
    lines = [
        f"{result.rung} inconclusive: {'; '.join(f'{c.name} ({c.detail})' for c in missed)}.",
        "No fault found: "
        + ", ".join(
            c.name for c in result.checks if c.passed and c.measured and c.kind == FAULT and c is not fit
        )
        + " passed"
        + learns
        + ". This budget is too short to judge this data, not evidence of a broken part.",
    ]
    if result.budget is not None:
        lines.append(f"Budget: {result.budget.text()}.")
    return "\n".join(lines)

"""Seed 000's staged debugging as code: train rungs that add one idea each, check gates, name the broken part."""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from segladder.config import ExperimentConfig, build_config
from segladder.errors import SegladderError
from segladder.progress import console

DEFAULT_RUNGS = ("ResNet18_SimplerFCN", "ResNet18_Simple", "ResNet18_U", "ResNet18_ULSTM", "CoaT_ULSTM")

# What each rung adds over the one below: the part a failing gate implicates (seed 000, 用途).
IMPLICATES = {
    "ResNet18_SimplerFCN": "data preprocessing or the training loop",
    "ResNet18_Simple": "the learnable (transposed-conv) decoder",
    "ResNet18_U": "the UNet skip connections and FPN",
    "ResNet18_ULSTM": "temporal modelling (the LSTM over frames)",
    "CoaT_ULSTM": "the CoaT encoder (its weights, input scaling or upsampling)",
}


class Gate(BaseModel):
    """Expected results of one rung (seed 000, 推奨テスト順序). `f1` is global Dice at the best threshold."""

    model_config = ConfigDict(extra="forbid")
    loss_max: float | None = Field(None, description="training loss (mean of an epoch's last 10 steps) must end below this")
    loss_epoch: int | None = Field(None, description="1-based epoch whose loss is checked; None: the last")
    f1_min: float | None = None
    better_than_previous: bool = False
    at_least_previous: bool = False
    no_nan: bool = True


DEFAULT_GATES: dict[str, Gate] = {
    "ResNet18_SimplerFCN": Gate(loss_max=0.5, loss_epoch=1, f1_min=0.2),
    "ResNet18_Simple": Gate(loss_max=0.5, loss_epoch=1, f1_min=0.2),
    "ResNet18_U": Gate(loss_max=0.4, f1_min=0.4, better_than_previous=True),
    "ResNet18_ULSTM": Gate(loss_max=0.35, f1_min=0.5, better_than_previous=True),
    "CoaT_ULSTM": Gate(at_least_previous=True),
}

# Seed 000's troubleshooting, by symptom.
ADVICE = {
    "nan": ["train in fp32 (--set trainer.precision=32)", "lower the LR (1e-3 → 1e-4)",
            "add gradient clipping (--set trainer.gradient_clip_val=1.0)", "add an epsilon to the Lovász denominator"],
    "slow": ["raise the batch size and lower gradient accumulation", "raise data.num_workers",
             "mixed precision when it does not NaN (bf16-mixed)"],
    "accuracy": ["a longer one-cycle warm-up (optim.pct_start 0.1 → 0.3)", "stronger augmentation (data.augment)",
                 "dropout (model.ps=0.1)"],
}


@dataclass
class GateCheck:
    name: str
    passed: bool
    detail: str


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
        vals = [h.get("val/dice_best") for h in self.history if h.get("val/dice_best") is not None]
        return max(vals) if vals else None


def _loss_at(history: list[dict], epoch: int | None) -> float | None:
    if not history:
        return None
    row = history[-1] if epoch is None else next((h for h in history if h["epoch"] == epoch - 1), history[-1])
    return row.get("train/loss_end", row.get("train/loss_epoch"))


def check_gates(gate: Gate, history: list[dict], previous: float | None, nan_steps: int = 0) -> list[GateCheck]:
    """Apply one rung's gates to its per-epoch metrics; `previous` is the best F1 of the rung below."""
    checks: list[GateCheck] = []
    losses = [h.get("train/loss_epoch", h.get("train/loss")) for h in history]
    has_nan = nan_steps > 0 or any(v is None or not math.isfinite(v) for v in losses) or not history
    f1s = [h.get("val/dice_best") for h in history if h.get("val/dice_best") is not None]
    f1 = max(f1s) if f1s else float("nan")
    if gate.no_nan:
        checks.append(GateCheck("no NaN", not has_nan, f"{nan_steps} non-finite step(s)" if nan_steps else
                                ("no epochs finished" if not history else "all losses finite")))
    if gate.loss_max is not None:
        loss = _loss_at(history, gate.loss_epoch)
        when = f"end of epoch {gate.loss_epoch}" if gate.loss_epoch else "end"
        ok = loss is not None and math.isfinite(loss) and loss < gate.loss_max
        checks.append(GateCheck(f"loss < {gate.loss_max}", ok, f"loss {loss:.4f} at the {when}" if loss is not None else "no loss"))
    if gate.f1_min is not None:
        checks.append(GateCheck(f"F1 > {gate.f1_min}", math.isfinite(f1) and f1 > gate.f1_min, f"F1 {f1:.4f}"))
    if (gate.better_than_previous or gate.at_least_previous) and previous is not None:
        ok = f1 > previous if gate.better_than_previous else f1 >= previous - 1e-4
        word = "better than" if gate.better_than_previous else "at least"
        checks.append(GateCheck(f"{word} the rung below", ok, f"F1 {f1:.4f} vs {previous:.4f}"))
    return checks


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


def diagnose(result: RungResult, below: RungResult | None) -> str:
    """The seed's reading of a failed rung: which part is implicated, the evidence and what to try."""
    failed = [c for c in result.checks if not c.passed]
    lines = [f"{result.rung} failed: {'; '.join(f'{c.name} ({c.detail})' for c in failed)}.",
             f"Implicated: {IMPLICATES.get(result.rung, 'what this model adds over the rung below')}."]
    lines.append(f"Evidence: loss curve {curve_shape(result.history)}")
    if below is not None and below.best_f1 is not None and result.best_f1 is not None:
        lines.append(f"          F1 {result.best_f1:.4f} vs {below.best_f1:.4f} for {below.rung}")
    report = result.run_dir / "nan_report.json" if result.run_dir else None
    if report is not None and report.exists():
        lines.append(f"          NaN report: {report}")
    symptom = "nan" if any(c.name == "no NaN" for c in failed) else "accuracy"
    lines.append("Try (seed 000): " + "; ".join(ADVICE[symptom]))
    return "\n".join(lines)


@dataclass
class LadderResult:
    rungs: list[RungResult]
    out: Path
    stopped_at: str | None = None

    @property
    def first_failure(self) -> RungResult | None:
        return next((r for r in self.rungs if r.status == "failed"), None)


def rung_config(base: ExperimentConfig, rung: str) -> ExperimentConfig:
    """The base config with model.name set to the rung; base model options go to the rungs that take them."""
    from segladder.models import info

    data = base.model_dump(mode="json")
    accepted = inspect.signature(info(rung).factory).parameters
    data["name"] = rung
    data["model"] = {"name": rung, **{k: v for k, v in base.model.kwargs.items() if k in accepted}}
    return build_config(data)


def run_ladder(base: ExperimentConfig, out: Path, rungs: tuple[str, ...] = DEFAULT_RUNGS,
               gates: dict[str, Gate] | None = None, keep_going: bool = False) -> LadderResult:
    """Train each rung on the same data, budget and seed; stop at the first failing gate unless `keep_going`."""
    from segladder.training.run import TrainingStopped, read_metrics, train

    gates = {**DEFAULT_GATES, **(gates or {})}
    out = Path(out)
    result = LadderResult([], out)
    previous: RungResult | None = None
    for i, rung in enumerate(rungs):
        console.rule(f"[bold]rung {i + 1}/{len(rungs)}: {rung}")
        t0 = time.perf_counter()
        r = RungResult(rung, "not run", out / rung)
        try:
            res = train(rung_config(base, rung), out=out / rung)
            r.metrics = res.metrics
        except TrainingStopped as exc:
            r.metrics = read_metrics(exc.run_dir)
            r.reason = str(exc)
        except (SegladderError, RuntimeError, MemoryError) as exc:
            # Missing offline weights, out of memory, a model that cannot take this input: report, go on.
            r.reason = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            r.seconds = time.perf_counter() - t0
            result.rungs.append(r)
            console.print(f"[yellow]{rung}: not run ({r.reason})[/]")
            continue
        r.seconds = time.perf_counter() - t0
        nan_steps = 1 if r.reason else 0
        r.checks = check_gates(gates.get(rung, Gate()), r.history, previous.best_f1 if previous else None, nan_steps)
        r.status = "passed" if all(c.passed for c in r.checks) else "failed"
        result.rungs.append(r)
        if r.status == "failed":
            r.diagnosis = diagnose(r, previous)
            console.print(f"[red]{r.diagnosis}[/]")
            if not keep_going:
                result.stopped_at = rung
                break
        previous = r
    return result

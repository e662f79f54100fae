"""The staged debugging ladder as code: the shared config, the validation set and its baselines, the rungs."""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from segladder.config import CONFIG_DIR, ExperimentConfig, ModelConfig, build_config
from segladder.data.layout import LABELED_FRAME
from segladder.errors import ConfigError, Interrupted, SegladderError
from segladder.ladder.faults import Fault
from segladder.ladder.gates import (
    DEFAULT_PROFILE,
    FITS_ONE_BATCH,
    PROFILES,
    Baselines,
    Gate,
    GateCheck,
    GateProfile,
    RungResult,
    check_gates,
    diagnose,
    estimate_budget,
    explain_inconclusive,
    rung_verdict,
)
from segladder.ladder.probe import TrainingBatchProbe, UpdateSizeProbe
from segladder.models.registry import WeightsUnavailable
from segladder.progress import console

DEFAULT_RUNGS = ("ResNet18_SimplerFCN", "ResNet18_Simple", "ResNet18_U", "ResNet18_ULSTM", "CoaT_ULSTM")
QUICK_RUNGS = DEFAULT_RUNGS[:4]
# Rungs that start from ImageNet weights unless the config says otherwise (`model.pretrained`): the 2nd-place
# recipe (DrHB/2nd-place-contrails) starts CoaT_ULSTM from coat_lite_medium's ImageNet weights, and CoaT from
# scratch is hard to train.
# From scratch at the calibrated budget it stays at the constant prediction (F1 0.064 after 2 epochs on a
# fresh synthetic cache), which says nothing about the encoder. Without offline weights the rung is
# reported "not run" with how to supply them.
PRETRAINED_RUNGS = frozenset({"CoaT_ULSTM"})

# `--budget` keys and the config fields they set.
BUDGET_FIELDS = {
    "epochs": ("trainer", "max_epochs"),
    "records": ("data", "train_records"),
    "val_records": ("data", "val_records"),
    "batches": ("trainer", "limit_train_batches"),
}


def parse_budget(text: str | None) -> dict[str, int]:
    """'epochs=2,records=100' → {'epochs': 2, 'records': 100}; one clear error for anything else."""
    out: dict[str, int] = {}
    for part in (p.strip() for p in (text or "").split(",")):
        if not part:
            continue
        key, _, value = part.partition("=")
        if key.strip() not in BUDGET_FIELDS or not value.strip().isdigit() or int(value) < 1:
            raise ConfigError(
                f"--budget '{part}': use {', '.join(f'{k}=N' for k in BUDGET_FIELDS)} with N ≥ 1."
            )
        out[key.strip()] = int(value)
    return out


def data_values(data: str | Path) -> dict:
    """The data section for `data`: its root, and for a cache its image size and the frames up to the label."""
    from segladder.data.cache import ContrailsCache, is_cache

    values: dict = {"root": str(data)}
    if is_cache(data):
        o = ContrailsCache(data).options
        frames = [f for f in o.frames if f <= LABELED_FRAME][-5:] or list(o.frames[-5:])
        values.update(image_size=o.image_size, frames=frames)
    return values


def ladder_config(
    data: str | Path,
    *,
    config: str | Path | None = None,
    budget: dict[str, int] | None = None,
    values: dict | None = None,
    overrides: list[str] | None = None,
    profile: str | None = None,
) -> ExperimentConfig:
    """The shared config of every rung, from configs/ladder.yaml (or `config`) and what is given.

    Laid over it in order: the data, the gate profile's budget (with the default config only), typed `values`,
    the budget, and last the user's `--set` overrides.
    """
    from segladder.config import _merge, read_yaml

    path = Path(config or CONFIG_DIR / "ladder.yaml")
    merged = read_yaml(path, "config", "data/model/loss/optim/trainer")
    merged.setdefault("name", path.stem)
    merged = _merge(merged, {"data": data_values(data)})
    if profile is not None and config is None:
        merged = _merge(merged, get_profile(profile).budget)
    merged = _merge(merged, values or {})
    for key, n in (budget or {}).items():
        section, name = BUDGET_FIELDS[key]
        merged = _merge(merged, {section: {name: n}})
    return build_config(merged, overrides, str(path))


def validation_set(cfg: ExperimentConfig):
    """The validation records every rung is scored on (and the report draws): the data module's own."""
    from segladder.training.build import build_datamodule

    dm = build_datamodule(cfg)
    dm.build_val()
    return dm.val_set


def measure_baselines(cfg: ExperimentConfig, val, ceiling_records: int = 64) -> Baselines:
    """Model-free scores on the validation set: empty and constant predictions, annotator agreement, trivial loss."""
    from torch.utils.data import default_collate

    from segladder.data.datasets import dataset_from_config, decode_batch
    from segladder.ladder.probe import dataset_stats
    from segladder.losses import build_loss

    def decoded(ds, n: int):
        # The data module's sets hand out stored uint8 bytes; the gates compare what the model is fed.
        for i in range(n):
            yield {k: v[0] for k, v in decode_batch(default_collate([ds[i]])).items()}

    items = list(decoded(val, len(val)))
    masks = torch.stack([it["mask"] for it in items]).float()
    positives, pixels = float(masks.sum()), masks.numel()
    fraction = positives / pixels
    constant_f1 = 2 * positives / (positives + pixels)
    loss = build_loss([t.model_dump(exclude_none=True) for t in cfg.loss])
    # The best constant logit, found on a grid (exact for BCE at logit(p); any loss the config names works).
    grid = torch.linspace(-12.0, 12.0, 97)
    if 0 < fraction < 1:
        grid = torch.cat([grid, torch.tensor([math.log(fraction / (1 - fraction))])])
    with torch.no_grad():
        losses = [
            float(loss(torch.full_like(masks, float(c)), {"mask": masks, "soft": masks})[0]) for c in grid
        ]
        uninformed = float(loss(torch.zeros_like(masks), {"mask": masks, "soft": masks})[0])
    ceiling = None
    train = dataset_from_config(cfg.data, cfg.data.train_split.split("+")[0])
    train_records = min(len(train), cfg.data.train_records or len(train))
    train_items = list(decoded(train, min(ceiling_records, train_records)))
    major = torch.stack([it["mask"] for it in train_items]).float()
    prior = float(major.mean())
    if train.has_soft:
        soft = torch.stack([it["soft"] for it in train_items])
        # A soft label that is never strictly between 0 and 1 is one annotator a record (or annotators who
        # never disagree, which contrail labels never show): agreement with itself says nothing.
        if bool(((soft > 0) & (soft < 1)).any()):
            # A random annotator against the majority, pooled over annotators: 2·Σ s·m / (Σ s + Σ m).
            denominator = float(soft.sum() + major.sum())
            ceiling = 2 * float((soft * major).sum()) / denominator if denominator > 0 else None
    return Baselines(
        fraction,
        0.0 if positives > 0 else 1.0,
        constant_f1,
        ceiling,
        min(losses),
        uninformed,
        dataset_stats(items),
        prior if 0 < prior < 1 else None,
        train_records,
        len(items),
        int((masks.flatten(1).amax(1) > 0).sum()),
    )


@dataclass
class LadderResult:
    """A ladder run: every rung's result, where it stopped, the gates and baselines, and any fault planted."""

    rungs: list[RungResult]
    out: Path
    stopped_at: str | None = None
    profile: str = DEFAULT_PROFILE
    baselines: Baselines | None = None
    fault: str | None = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def first_failure(self) -> RungResult | None:
        """The first rung that failed, if any."""
        return next((r for r in self.rungs if r.status == "failed"), None)

    @property
    def passed(self) -> bool:
        """Whether every rung passed."""
        return self.first_failure is None and all(r.status == "passed" for r in self.rungs)

    @property
    def outcome(self) -> str:
        """The ladder's outcome: failed (a rung failed), inconclusive (none failed, some had no verdict), else passed."""
        statuses = {r.status for r in self.rungs}
        return next((s for s in ("failed", "inconclusive") if s in statuses), "passed")

    @property
    def exit_code(self) -> int:
        """What `segladder ladder` exits with: 0 passed, 1 failed, 3 inconclusive (2 is a usage error)."""
        return EXIT_CODES[self.outcome]


# 2 stays what every segladder command means by it: the input or the config was refused before any work.
EXIT_CODES = {"passed": 0, "failed": 1, "inconclusive": 3}


def rung_config(base: ExperimentConfig, rung: str) -> ExperimentConfig:
    """The base config with model.name set to the rung.

    Base model options go to the rungs that take them, and a rung of `PRETRAINED_RUNGS` asks for its ImageNet
    weights (`pretrained: auto`) unless they say.
    """
    from segladder.models import info
    from segladder.models.registry import GENERIC_OPTIONS

    accepted = {*inspect.signature(info(rung).factory).parameters, *GENERIC_OPTIONS}
    kwargs = {k: v for k, v in base.model.kwargs.items() if k in accepted}
    if rung in PRETRAINED_RUNGS:
        kwargs.setdefault("pretrained", "auto")
    model = ModelConfig(name=rung, **kwargs)
    return base.model_copy(update={"name": rung, "model": model})


# The fewest optimiser steps with which every rung trained from scratch has passed its calibrated gates on
# clean synthetic data (60: 5 epochs of 100 records at batch 8; the demo trains 80).
MIN_SCRATCH_STEPS = 60


def budget_warning(base: ExperimentConfig, baselines: Baselines | None) -> str | None:
    """A warning when each rung gets too few optimiser steps from scratch for its F1 gates to mean anything."""
    if baselines is None or baselines.train_records is None or base.model.kwargs.get("pretrained"):
        return None
    t = base.trainer
    batches = baselines.train_records // base.data.batch_size or 1
    if isinstance(t.limit_train_batches, int):
        batches = min(batches, t.limit_train_batches)
    elif isinstance(t.limit_train_batches, float):
        batches = max(1, int(batches * t.limit_train_batches))
    steps = t.max_epochs * max(1, batches // t.accumulate_grad_batches)
    if steps >= MIN_SCRATCH_STEPS:
        return None
    return (
        f"budget: {steps} optimiser steps a rung, from scratch: too few for the F1 gates to tell a broken part "
        f"from an untrained one ({MIN_SCRATCH_STEPS} steps are the fewest measured to pass on clean data). Raise "
        "--budget epochs=N, or lower trainer.accumulate_grad_batches, or give pretrained weights "
        "(--set model.pretrained=PATH), as the absolute gates' budget assumes."
    )


# Below these a ladder's verdicts are noise: one record more or less flips a gate. The 9-record real sample
# (7 training records, 2 validation records with 17 and 25 contrail pixels) sits below them.
MIN_TRAIN_RECORDS, MIN_VAL_POSITIVE_RECORDS = 16, 4


def too_small_to_judge(baselines: Baselines) -> str | None:
    """One line saying why this dataset cannot support the ladder's verdicts, or None when it can."""
    train, val, positive = baselines.train_records, baselines.val_records, baselines.val_positive_records
    if train is None or val is None or positive is None:
        return None
    if train >= MIN_TRAIN_RECORDS and positive >= MIN_VAL_POSITIVE_RECORDS:
        return None
    return (
        f"dataset too small to judge: {train} training record(s) and {positive} of {val} validation record(s) "
        f"with contrails; the ladder's gates need at least {MIN_TRAIN_RECORDS} training records and "
        f"{MIN_VAL_POSITIVE_RECORDS} validation records with contrails, so no rung was trained. "
        "Give a larger dataset (or `segladder demo` for synthetic data)."
    )


def _with_prior(base: ExperimentConfig, baselines: Baselines | None) -> ExperimentConfig:
    """Every rung's output starts at the training masks' positive rate (`model.output_prior`) unless set.

    From scratch and with rare positives, a rung started at logit 0 first learns only the constant and then
    sits at it for epochs (ResNet18_ULSTM longest), which a short budget reads as a broken part.
    """
    if baselines is None or baselines.train_prior is None or "output_prior" in base.model.kwargs:
        return base
    model = ModelConfig(name=base.model.name, **base.model.kwargs, output_prior=baselines.train_prior)
    return base.model_copy(update={"model": model})


def _one_batch_check(cfg: ExperimentConfig, fault: Fault | None, seed: int) -> GateCheck:
    """The one-batch fit (`fit_probe`) as a fault check, trained with the same fault as the rung."""
    from segladder.ladder.fit_probe import fit_one_batch

    console.print(f"[dim]{cfg.model.name}: F1 short of its gates; can a fresh copy fit one batch?[/]")
    try:
        fit = fit_one_batch(cfg, fault.callbacks(seed) if fault is not None else [])
    except Interrupted:
        raise
    except (SegladderError, RuntimeError, MemoryError) as exc:
        # No verdict either way (no positive training record, out of memory): the rung stays inconclusive.
        return GateCheck(
            FITS_ONE_BATCH,
            True,
            f"not measured ({type(exc).__name__}: {str(exc).splitlines()[0]})",
            measured=False,
        )
    return GateCheck(FITS_ONE_BATCH, fit.fitted, fit.detail())


def get_profile(name: str) -> GateProfile:
    """The gate profile `name`; a ConfigError listing the profiles when there is none."""
    if name not in PROFILES:
        raise ConfigError(f"--gates {name}: unknown gate profile; choose one of {', '.join(PROFILES)}.")
    return PROFILES[name]


def run_ladder(
    base: ExperimentConfig,
    out: Path,
    rungs: tuple[str, ...] = DEFAULT_RUNGS,
    gates: dict[str, Gate] | None = None,
    keep_going: bool = False,
    profile: str = DEFAULT_PROFILE,
    baselines: Baselines | None = None,
    fault: Fault | None = None,
) -> LadderResult:
    """Train each rung on the same data, budget and seed; stop at the first failing gate unless `keep_going`.

    `baselines` (see `measure_baselines`) are needed by the calibrated profile's relative gates; `fault`
    plants one deliberate fault in every rung's training.
    """
    prof = get_profile(profile)
    gates = {**prof.gates, **(gates or {})}
    out = Path(out)
    t_start = time.perf_counter()
    result = LadderResult(
        [], out, profile=prof.name, baselines=baselines, fault=fault.name if fault else None
    )
    console.print(f"gate profile: [bold]{prof.name}[/] ({prof.description})")
    if (warning := budget_warning(base, baselines)) is not None:
        console.print(f"[yellow]{warning}[/]")
    base = _with_prior(base, baselines)
    if fault is not None:
        fault.preflight(base)
        console.print(f"[magenta]injected fault: {fault.name}[/] ({fault.description})")
    previous: RungResult | None = None
    for i, rung in enumerate(rungs):
        console.rule(f"[bold]rung {i + 1}/{len(rungs)}: {rung}")
        t0 = time.perf_counter()
        r = RungResult(rung, "not run", out / rung)
        probe, updates = TrainingBatchProbe(), UpdateSizeProbe()
        error = _train_rung(r, base, fault, [probe, updates])
        r.seconds = time.perf_counter() - t0
        if error is not None:
            result.rungs.append(r)
            _report_not_run(r, error, base)
            continue
        below = None if previous is None else (previous.best_f1 if prof.f1 == "best" else previous.f1_last)
        r.checks = check_gates(
            gates.get(rung, Gate()),
            r.history,
            below,
            1 if r.reason else 0,  # the NaN guard stopped it
            baselines,
            prof.f1,
            probe.stats,
            updates.stats,
        )
        if rung_verdict(r.checks) == "inconclusive":
            # Only the data-dependent checks missed: ask whether the rung can learn at all.
            r.checks.append(_one_batch_check(rung_config(base, rung), fault, base.seed))
            r.seconds = time.perf_counter() - t0
        r.status = rung_verdict(r.checks)
        result.rungs.append(r)
        _explain_verdict(r, previous)
        if r.status == "failed" and not keep_going:
            result.stopped_at = rung
            break
        previous = r
    result.seconds = time.perf_counter() - t_start
    return result


def _train_rung(r: RungResult, base: ExperimentConfig, fault: Fault | None, probes: list) -> Exception | None:
    """Train rung `r` into `r.run_dir` with the fault's callbacks and `probes`, keeping its metrics.

    When the NaN guard stopped it, why is kept too. Returns the error that kept it from training, else None.

    Ctrl-C or SIGTERM stops the whole ladder (and a self-test), not just this rung.
    """
    from segladder.training.run import TrainingStopped, read_metrics, train

    try:
        res = train(
            rung_config(base, r.rung),
            out=r.run_dir,
            callbacks=[*(fault.callbacks(base.seed) if fault is not None else ()), *probes],
        )
        r.metrics = res.metrics
    except TrainingStopped as exc:
        r.metrics = read_metrics(exc.run_dir)
        r.reason = str(exc)
    except Interrupted as exc:
        # The hint becomes the command that was running (finished rungs keep their run directories).
        raise Interrupted(f"the ladder stopped in {r.rung}: {str(exc).split('; continue with')[0]}") from None
    except (SegladderError, RuntimeError, MemoryError) as exc:
        # Missing offline weights, out of memory, a model that cannot take this input: report, go on.
        return exc
    return None


def _report_not_run(r: RungResult, exc: Exception, base: ExperimentConfig) -> None:
    """Say why rung `r` did not train (`r.reason`), and how to get weights when it had none."""
    if isinstance(exc, WeightsUnavailable):
        # The whole message: it says where weights were looked for and how to supply them.
        r.reason = f"no pretrained weights on this machine. {str(exc).splitlines()[0]}"
        scratch = (
            ""
            if "pretrained" in base.model.kwargs
            else (
                f"\nThe ladder starts {r.rung} from ImageNet weights, as the 2nd-place recipe "
                "does (from scratch it is hard to train). To train it from scratch anyway: "
                "--set model.pretrained=false."
            )
        )
        console.print(f"[yellow]{r.rung}: not run.\n{exc}{scratch}[/]")
    else:
        r.reason = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        console.print(f"[yellow]{r.rung}: not run ({r.reason})[/]")


def _explain_verdict(r: RungResult, previous: RungResult | None) -> None:
    """An inconclusive rung gets a budget estimate and a note; a failed one a diagnosis against the one below."""
    if r.status == "inconclusive":
        r.budget = estimate_budget(r.history, r.checks)
        r.note = explain_inconclusive(r)
        console.print(f"[yellow]{r.note}[/]")
    if r.status == "failed":
        r.diagnosis = diagnose(r, previous)
        console.print(f"[red]{r.diagnosis}[/]")

"""The demo's synthetic data and budget, and the ladder's self-test: clean data plus every fault, caught or missed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from segladder.io import atomic_write_json
from segladder.ladder.faults import FAULTS
from segladder.ladder.run import (
    QUICK_RUNGS,
    LadderResult,
    ladder_config,
    measure_baselines,
    run_ladder,
    validation_set,
)
from segladder.progress import console


def default_home() -> Path:
    """Where the demo keeps its data: $SEGLADDER_HOME, default ~/.cache/segladder."""
    return Path(os.environ.get("SEGLADDER_HOME", Path.home() / ".cache" / "segladder"))


# The demo's contrails are three times as wide and three times as opaque as real ones. It trains each rung
# for 80 optimiser steps at 64² on a CPU; at the real 1–3 px a tiny model reached global Dice 0.05 in 25
# steps (width 2: 0.15), and at width 3 with real opacities ResNet18_U reached 0.20 in 80 steps (its gate:
# 0.27) and 0.35 only after 240. Everything else (colours, clouds, labelling rules, look-alikes, annotators)
# is the real-like world's (docs/benchmarks.md, "The demo's world").
DEMO_WIDTH_SCALE = 3.0
DEMO_OPACITY_SCALE = 3.0
# The self-test's worlds as (width scale, opacity scale): the demo's, and contrails as wide and as faint
# as the real ones the generator was measured against (docs/data.md), where a short budget cannot judge.
WORLDS = {"demo": (DEMO_WIDTH_SCALE, DEMO_OPACITY_SCALE), "realistic": (1.0, 1.0)}


def demo_data(
    home: Path,
    records: int,
    val_records: int,
    size: int,
    seed: int,
    width_scale: float = DEMO_WIDTH_SCALE,
    opacity_scale: float = DEMO_OPACITY_SCALE,
) -> Path:
    """Synthetic contrails and their cache (all 8 frames, so a fault can read frame 7), made once and reused."""
    from segladder.data.cache import CacheOptions, prepare_cache
    from segladder.data.synth import GENERATOR_VERSION, generate_contrails

    raw = Path(home) / (
        f"synth-contrails-v{GENERATOR_VERSION}-{records}-{val_records}-{size}-s{seed}"
        f"-w{width_scale:g}-o{opacity_scale:g}"
    )
    cache = raw.with_name(raw.name + "-cache")
    if not (cache / "manifest.json").exists():
        generate_contrails(
            raw,
            records=records,
            val_records=val_records,
            test_records=4,
            size=size,
            seed=seed,
            width_scale=width_scale,
            opacity_scale=opacity_scale,
        )
        prepare_cache(raw, cache, CacheOptions(frames=tuple(range(8)), image_size=size), workers=2)
    return cache


def demo_values(epochs: int, seed: int) -> dict:
    """The demo's CPU-sized budget as typed config values: batch 8 without accumulation and a brisker LR.

    Slim decoder widths (128/64/32) on the U rungs keep it inside its CPU time budget. Two frames (3–4)
    carry every time cue of the synthetic data (each acts over the last frame step: a look-alike that
    flashes up at the label, one that stays put while the wind carries contrails, a contrail fading at
    the label) and keep ResNet18_ULSTM at 2× rather than 5× ResNet18_U's encoder work. Only last.ckpt
    keeps the optimiser state: best.ckpt, rewritten at most epochs, is a third of the size.
    """
    from segladder.models.ladder import SLIM_DECODER_CHANNELS

    return {
        "seed": seed,
        "data": {"num_workers": 0, "train_records": None, "frames": [3, 4]},
        "loss": [{"name": "bce", "pos_weight": 2.0}],
        # The original 384/192/96 decoders cost the four CPU rungs ~23% more compute; the demo keeps its time
        # budget with the slim widths (only ResNet18_U and ResNet18_ULSTM take the option).
        "model": {"decoder_channels": list(SLIM_DECODER_CHANNELS)},
        "optim": {"lr": 3e-3},
        "trainer": {
            "max_epochs": epochs,
            "accumulate_grad_batches": 1,
            "overlays": 4,
            "optimizer_state": "last",
        },
    }


@dataclass
class SelftestRow:
    """One fault of the self-test: which rung should catch it, which failed first, and whether it was caught."""

    fault: str
    description: str
    expected_rung: str | None
    first_failure: str | None
    implicated: str | None
    nan_report: bool
    caught: bool
    outcome: str = "passed"  # the ladder's: passed, failed or inconclusive

    def as_dict(self) -> dict:
        """The row as report JSON holds it."""
        return dict(self.__dict__)


def selftest(
    out: Path,
    data: Path,
    values: dict | None = None,
    rungs: tuple[str, ...] = QUICK_RUNGS,
    faults: tuple[str, ...] | None = None,
    profile: str = "calibrated",
    gates: dict | None = None,
    world: str | None = None,
) -> list[SelftestRow]:
    """Run the ladder on clean `data`, then once per fault; write selftest.json and return its rows.

    Clean data is "caught" (correct) when no rung fails (a rung may be inconclusive: a budget too short
    for the data is not a fault); a fault when the first failing rung is the one it implicates (and, for
    NaN faults, the NaN report was written). `gates` replace the profile's gates of the rungs they name.
    """
    from segladder.ladder.summary import write_report_json

    out = Path(out)
    base = ladder_config(data, values=values)
    val = validation_set(base)
    baselines = measure_baselines(base, val)
    rows: list[SelftestRow] = []
    runs: list[tuple[str, LadderResult]] = []
    for name in ("clean", *(faults or tuple(FAULTS))):
        fault = None if name == "clean" else FAULTS[name]
        console.rule(f"[bold magenta]selftest: {name}")
        res = run_ladder(base, out / name, rungs, gates, profile=profile, baselines=baselines, fault=fault)
        write_report_json(res)
        first = res.first_failure
        if fault is None:
            caught = first is None
            row = SelftestRow("clean", "nothing broken", None, None, None, False, caught, res.outcome)
        else:
            nan = first is not None and first.nan_report is not None
            caught = (
                first is not None
                and first.rung == fault.expected_rung
                and (nan or not fault.needs_nan_report)
            )
            row = SelftestRow(
                name,
                fault.description,
                fault.expected_rung,
                first.rung if first else None,
                first.implicated if first else None,
                nan,
                caught,
                res.outcome,
            )
        rows.append(row)
        runs.append((name, res))
    atomic_write_json(
        out / "selftest.json",
        {
            "profile": profile,
            "world": world,
            "rungs": list(rungs),
            "baselines": baselines.as_dict(),
            "rows": [r.as_dict() for r in rows],
        },
    )
    return rows

"""Seed 000's staged debugging: rungs that add one idea each, gates (seed or calibrated), faults to prove them."""

from segladder.ladder.faults import FAULTS, Fault, get_fault
from segladder.ladder.gates import (
    ADVICE,
    CALIBRATED_GATES,
    DEFAULT_GATES,
    DEFAULT_PROFILE,
    IMPLICATES,
    PROFILES,
    SEED_GATES,
    Baselines,
    Gate,
    GateCheck,
    GateProfile,
    RungResult,
    check_gates,
    curve_shape,
    diagnose,
)
from segladder.ladder.run import (
    BUDGET_FIELDS,
    DEFAULT_RUNGS,
    QUICK_RUNGS,
    LadderResult,
    ladder_config,
    measure_baselines,
    parse_budget,
    run_ladder,
    rung_config,
    validation_set,
)

__all__ = [
    "ADVICE", "BUDGET_FIELDS", "CALIBRATED_GATES", "DEFAULT_GATES", "DEFAULT_PROFILE", "DEFAULT_RUNGS", "FAULTS",
    "IMPLICATES", "PROFILES", "QUICK_RUNGS", "SEED_GATES", "Baselines", "Fault", "Gate", "GateCheck", "GateProfile",
    "LadderResult", "RungResult", "check_gates", "curve_shape", "diagnose", "get_fault", "ladder_config",
    "measure_baselines", "parse_budget", "rung_config", "run_ladder", "validation_set",
]

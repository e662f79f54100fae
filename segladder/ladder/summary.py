"""A ladder run as data: report.json (per rung its status, F1, loss, checks), read by the CLI, the demo and CI."""

from __future__ import annotations

from pathlib import Path

from segladder.io import atomic_write_json
from segladder.ladder.gates import PROFILES, RungResult
from segladder.ladder.run import LadderResult


def rung_f1(result: LadderResult, r: RungResult) -> float | None:
    """The F1 the profile's gates read: the best epoch's (absolute) or the last epoch's (calibrated)."""
    return r.best_f1 if PROFILES[result.profile].f1 == "best" else r.f1_last


def report_dict(result: LadderResult) -> dict:
    """What report.json holds, per rung and for the whole ladder.

    Per rung its status, F1, loss, checks and implicated part (or, inconclusive, why and the budget it needs);
    then the first failure, the outcome and the exit code.

    `loss` is the final training loss the gates read (`RungResult.loss`); report.md shows the same figure.
    """
    first = result.first_failure
    return {
        "rungs": [
            {
                "rung": r.rung,
                "status": r.status,
                "f1": rung_f1(result, r),
                "loss": r.loss,
                "checks": [
                    {
                        "name": c.name,
                        "passed": c.passed,
                        "measured": c.measured,
                        "detail": c.detail,
                        "kind": c.kind,
                    }
                    for c in r.checks
                ],
                "implicated": r.implicated,
                "note": r.note or None,
                "budget": r.budget.as_dict() if r.budget else None,
                "reason": r.reason or None,
                "seconds": round(r.seconds, 2),
                "nan_report": str(r.nan_report) if r.nan_report else None,
            }
            for r in result.rungs
        ],
        "first_failure": first.rung if first else None,
        "outcome": result.outcome,
        "exit_code": result.exit_code,
        "profile": result.profile,
        "seconds": round(result.seconds, 2),
        "fault": result.fault,
        "baselines": result.baselines.as_dict() if result.baselines else None,
        **result.extra,
    }


def write_report_json(result: LadderResult) -> Path:
    """Write report.json into the ladder's folder; returns its path."""
    result.out.mkdir(parents=True, exist_ok=True)
    path = result.out / "report.json"
    atomic_write_json(path, report_dict(result))
    return path

"""The ladder report: a terminal table, and a folder with Markdown, curves across rungs and overlays as PNG."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch
from rich.table import Table

from segladder.io import atomic_write_json, atomic_write_text
from segladder.ladder import PROFILES, LadderResult, RungResult
from segladder.viz import overlay_panels, plot_histories, save_figure

SHORT_GATES = {
    "no NaN": "nan",
    "better than the rung below": "> below",
    "at least the rung below": ">= below",
    "not worse than the rung below": ">~ below",
    "F1 above the baselines": "F1",
    "loss stable": "stable",
    "loss falls": "loss",
    "steps smaller than the weights": "step",
    "training inputs match validation": "inputs",
    "training labels sit on their signature": "labels",
}


def rung_f1(result: LadderResult, r: RungResult) -> float | None:
    """The F1 the profile's gates read: the best epoch's (seed) or the last epoch's (calibrated)."""
    return r.best_f1 if PROFILES[result.profile].f1 == "best" else r.f1_last


def report_dict(result: LadderResult) -> dict:
    """What report.json holds: per rung its status, F1, loss, checks and implicated part; the first failure."""
    first = result.first_failure
    return {
        "rungs": [
            {
                "rung": r.rung,
                "status": r.status,
                "f1": rung_f1(result, r),
                "loss": r.loss,
                "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in r.checks],
                "implicated": r.implicated,
                "reason": r.reason or None,
                "seconds": round(r.seconds, 2),
                "nan_report": str(r.nan_report) if r.nan_report else None,
            }
            for r in result.rungs
        ],
        "first_failure": first.rung if first else None,
        "profile": result.profile,
        "seconds": round(result.seconds, 2),
        "fault": result.fault,
        "baselines": result.baselines.as_dict() if result.baselines else None,
        **result.extra,
    }


def write_report_json(result: LadderResult) -> Path:
    result.out.mkdir(parents=True, exist_ok=True)
    path = result.out / "report.json"
    atomic_write_json(path, report_dict(result))
    return path


def short_gate(name: str) -> str:
    """A check's name in the table's narrow gates column (report.md and report.json keep the full one)."""
    return SHORT_GATES.get(name, name.replace(" ", ""))


def ladder_table(result: LadderResult) -> Table:
    which = "best epoch" if PROFILES[result.profile].f1 == "best" else "last epoch"
    table = Table(title=f"ladder, {result.profile} gates (F1 = global Dice at the best threshold, {which})")
    for col in ("rung", "status", "loss", "F1", "thr", "gates", "time"):
        table.add_column(col, justify="left" if col in ("rung", "status", "gates") else "right")
    for r in result.rungs:
        last = r.history[-1] if r.history else {}
        colour = {"passed": "green", "failed": "red"}.get(r.status, "yellow")
        gates = " ".join(
            ("✓" if c.passed else "✗") + short_gate(c.name) for c in r.checks
        ) or textwrap.shorten(r.reason, 40, placeholder=" …")
        table.add_row(
            r.rung.replace("ResNet18_", "R18_"),
            f"[{colour}]{r.status}[/]",
            _fmt(last.get("train/loss_epoch"), 3),
            _fmt(rung_f1(result, r), 3),
            _fmt(last.get("val/threshold"), 2),
            gates,
            f"{r.seconds:.0f}s",
        )
    return table


def _fmt(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def write_report(result: LadderResult, val_data, worst_k: int = 4, n_overlay: int = 4) -> Path:
    """Write report.md, report.json, curves.png, overlays.png and worst.png under `result.out`; returns report.md."""
    out = result.out
    out.mkdir(parents=True, exist_ok=True)
    write_report_json(result)
    ran = [r for r in result.rungs if r.history]
    curves_png = out / "curves.png"
    plot_histories({r.rung: r.history for r in ran}, curves_png)
    preds = _predictions(ran, val_data)
    overlays_png = out / "overlays.png"
    if preds:
        _overlays(preds, val_data, range(min(n_overlay, len(val_data))), overlays_png)
    worst_lines: list[str] = []
    best = max(
        (r for r in ran if r.best_f1 is not None and r.rung in preds), key=lambda r: r.best_f1, default=None
    )
    if best is not None:
        from segladder.metrics import per_record_dice

        probs, threshold = preds[best.rung]
        masks = torch.stack([val_data[i]["mask"] for i in range(len(val_data))])
        dice = per_record_dice(probs, masks, threshold)
        order = np.argsort(dice, kind="stable")[:worst_k]
        _overlays({best.rung: preds[best.rung]}, val_data, order.tolist(), out / "worst.png")
        worst_lines = [
            f"| {val_data[int(i)]['record_id']} | {dice[i]:.4f} | {int(masks[i].sum())} |" for i in order
        ]

    md = [
        "# Ladder report",
        "",
        f"Rungs in order; training output of each is in its own folder under `{out}`.",
        "",
        f"Gate profile: **{result.profile}** ({PROFILES[result.profile].description}).",
        "",
    ]
    if result.fault:
        md += [f"Injected fault: **{result.fault}**.", ""]
    if result.baselines is not None:
        b = result.baselines
        md += [
            f"Baselines on the validation set: constant prediction F1 {b.constant_f1:.4f}, empty {b.empty_f1:.4f}, "
            f"annotator agreement {_fmt(b.ceiling_f1)}, loss of the best constant {b.trivial_loss:.4f} "
            f"and of predicting 0.5 {b.uninformed_loss:.4f}.",
            "",
        ]
    md += ["| rung | status | epochs | final train loss | val F1 | gates |", "|---|---|---|---|---|---|"]
    for r in result.rungs:
        last = r.history[-1] if r.history else {}
        gates = (
            "<br>".join(("✓ " if c.passed else "✗ ") + f"{c.name}: {c.detail}" for c in r.checks) or r.reason
        )
        md.append(
            f"| {r.rung} | {r.status} | {len(r.history)} | {_fmt(last.get('train/loss_epoch'))} | "
            f"{_fmt(rung_f1(result, r))} | {gates} |"
        )
    failed = [r for r in result.rungs if r.diagnosis]
    if failed:
        md += [
            "",
            "## Diagnosis",
            "",
            f"The first failing rung is **{failed[0].rung}**: look there first.",
            "",
        ]
        for r in failed:
            md += ["```", r.diagnosis, "```", ""]
    md += ["", "## Curves", "", "![curves](curves.png)", ""]
    if preds:
        md += [
            "## Predictions on the same validation records",
            "",
            "Columns: ash RGB, ground truth (green), then each rung's prediction (magenta) at its threshold.",
            "",
            "![overlays](overlays.png)",
            "",
        ]
    if worst_lines:
        md += [
            f"## Worst {len(worst_lines)} records of the best rung ({best.rung})",
            "",
            "| record | Dice | true pixels |",
            "|---|---|---|",
            *worst_lines,
            "",
            "![worst](worst.png)",
            "",
        ]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md) + "\n")
    return path


def _predictions(rungs: list[RungResult], val_data) -> dict[str, tuple[torch.Tensor, float]]:
    """Validation probabilities of each rung's best checkpoint: {rung: (probs (N, 1, H, W), threshold)}."""
    from segladder.inference.checkpoint import load_checkpoint

    out = {}
    images = torch.stack([val_data[i]["image"] for i in range(len(val_data))])
    for r in rungs:
        ckpt = r.run_dir / "checkpoints" / "best.ckpt" if r.run_dir else None
        if ckpt is None or not ckpt.exists():
            continue
        loaded = load_checkpoint(ckpt)
        with torch.no_grad():
            probs = torch.cat(
                [torch.sigmoid(loaded.model(images[i : i + 16]).float()) for i in range(0, len(images), 16)]
            )
        out[r.rung] = (probs, loaded.threshold)
    return out


def _overlays(preds: dict[str, tuple[torch.Tensor, float]], val_data, indices, path: Path) -> None:
    """Rows are records; columns ash | ground truth | one prediction per rung."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    indices = list(indices)
    rungs = list(preds)
    fig, axes = plt.subplots(
        len(indices), 2 + len(rungs), figsize=(2.2 * (2 + len(rungs)), 2.2 * len(indices)), squeeze=False
    )
    for row, i in enumerate(indices):
        item = val_data[i]
        for col, rung in enumerate(rungs):
            probs, th = preds[rung]
            panels = overlay_panels(item["image"], item["mask"], probs[i], th)
            if col == 0:
                axes[row, 0].imshow(panels["ash"])
                axes[row, 1].imshow(panels["truth"])
                axes[row, 0].set_ylabel(item["record_id"][-8:], fontsize=7)
            axes[row, 2 + col].imshow(panels["prediction"])
            if row == 0:
                axes[0, 2 + col].set_title(rung.replace("ResNet18_", "R18_"), fontsize=8)
    axes[0, 0].set_title("ash RGB", fontsize=8)
    axes[0, 1].set_title("ground truth", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def run_and_report(
    base, out: Path, rungs: tuple[str, ...], keep_going: bool = False, profile: str = "calibrated", fault=None
) -> LadderResult:
    """The ladder as the CLI runs it: validation set and baselines first, the rungs, then table and report."""
    from segladder.errors import DataError
    from segladder.ladder import measure_baselines, run_ladder, validation_set
    from segladder.ladder.run import too_small_to_judge
    from segladder.progress import console

    # The validation set the report draws is opened first: a bad data path fails before any rung trains.
    val = validation_set(base)
    baselines = measure_baselines(base, val)
    if (reason := too_small_to_judge(baselines)) is not None:
        raise DataError(reason)  # one line instead of verdicts that one record more or less would flip
    result = run_ladder(
        base, out, rungs, keep_going=keep_going, profile=profile, baselines=baselines, fault=fault
    )
    report = write_report(result, val)
    console.print(ladder_table(result))
    if result.stopped_at:
        console.print(
            f"[red]stopped at {result.stopped_at}[/] (use --keep-going to train the remaining rungs)"
        )
    console.print(f"report: {report}")
    return result


def selftest_table(rows) -> Table:
    """fault → first failing rung → implicated part → caught or missed."""
    table = Table(title="ladder self-test")
    for col in ("fault", "expected", "first failing rung", "implicated", "NaN report", "result"):
        table.add_column(col)
    for r in rows:
        verdict = (
            ("[green]all passed[/]" if r.caught else "[red]false alarm[/]")
            if r.fault == "clean"
            else ("[green]caught[/]" if r.caught else "[red]missed[/]")
        )
        table.add_row(
            r.fault,
            r.expected_rung or "none",
            r.first_failure or "none",
            r.implicated or "-",
            "yes" if r.nan_report else "-",
            verdict,
        )
    return table

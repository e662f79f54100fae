"""The ladder report: a terminal table, and a folder with Markdown, curves across rungs and overlays as PNG."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from rich.table import Table

from segladder.inference.evaluate import RecordScores, score_records
from segladder.io import atomic_write_text
from segladder.ladder import PROFILES, LadderResult, RungResult
from segladder.ladder.summary import report_dict, rung_f1, write_report_json  # noqa: F401  (re-exported)
from segladder.viz import overlay_panels, plot_histories, save_figure

EXIT_MEANING = "0 every rung passed, 1 a rung failed, 3 no rung failed but one or more were inconclusive"

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
    "fits one batch": "fit",
}


def short_gate(name: str) -> str:
    """A check's name in the table's narrow gates column (report.md and report.json keep the full one)."""
    return SHORT_GATES.get(name, name.replace(" ", ""))


def ladder_table(result: LadderResult) -> Table:
    """The ladder's rungs as a rich table: status, loss, F1, threshold, gates and time of each."""
    which = "best epoch" if PROFILES[result.profile].f1 == "best" else "last epoch"
    table = Table(title=f"ladder, {result.profile} gates (F1 = global Dice at the best threshold, {which})")
    for col in ("rung", "status", "loss", "F1", "thr", "gates", "time"):
        table.add_column(col, justify="left" if col in ("rung", "status", "gates") else "right")
    for r in result.rungs:
        last = r.history[-1] if r.history else {}
        colour = {"passed": "green", "failed": "red", "inconclusive": "yellow"}.get(r.status, "dim")
        gates = " ".join(c.mark + short_gate(c.name) for c in r.checks) or textwrap.shorten(
            r.reason, 40, placeholder=" …"
        )
        table.add_row(
            r.rung.replace("ResNet18_", "R18_"),
            f"[{colour}]{r.status}[/]",
            _fmt(r.loss, 3),
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
        _overlays(preds, range(min(n_overlay, len(next(iter(preds.values())).record_ids))), overlays_png)
    best = max(
        (r for r in ran if r.best_f1 is not None and r.rung in preds), key=lambda r: r.best_f1, default=None
    )
    worst_lines = _worst_records(preds[best.rung], best.rung, worst_k, out) if best is not None else []
    md = [*_md_head(result), *_md_rungs(result), *_md_notes(result), *_md_pictures(preds, best, worst_lines)]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md) + "\n")
    return path


def _worst_records(scores: RecordScores, rung: str, k: int, out: Path) -> list[str]:
    """worst.png of the `k` records `rung` scores worst, and their Markdown table rows."""
    order = np.argsort(scores.dice, kind="stable")[:k]
    _overlays({rung: scores}, order.tolist(), out / "worst.png")
    return [
        f"| {scores.record_ids[i]} | {scores.dice[i]:.4f} | {int(scores.inputs.item(int(i))['mask'].sum())} |"
        for i in order
    ]


def _md_head(result: LadderResult) -> list[str]:
    md = [
        "# Ladder report",
        "",
        f"Rungs in order; training output of each is in its own folder under `{result.out}`.",
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
            f"annotator agreement {b.ceiling_text}"
            f"{'' if b.ceiling_f1 is not None else ' (unknown: one annotator a record)'}, loss of the best constant {b.trivial_loss:.4f} "
            f"and of predicting 0.5 {b.uninformed_loss:.4f}.",
            "",
        ]
    return md


def _md_rungs(result: LadderResult) -> list[str]:
    """The rungs' table and the outcome."""
    md = ["| rung | status | epochs | final train loss | val F1 | gates |", "|---|---|---|---|---|---|"]
    # The loss is the one report.json and the gates read (the end-of-training loss), not the epoch mean.
    for r in result.rungs:
        gates = "<br>".join(f"{c.mark} {c.name}: {c.detail}" for c in r.checks) or r.reason
        md.append(
            f"| {r.rung} | {r.status} | {len(r.history)} | {_fmt(r.loss)} | "
            f"{_fmt(rung_f1(result, r))} | {gates} |"
        )
    return [*md, "", f"Outcome: **{result.outcome}** (exit code {result.exit_code}: {EXIT_MEANING}).", ""]


def _md_notes(result: LadderResult) -> list[str]:
    """Why inconclusive rungs have no verdict, and the failed rungs' diagnoses."""
    md: list[str] = []
    undecided = [r for r in result.rungs if r.note]
    if undecided:
        md += ["", "## Inconclusive rungs", ""]
        for r in undecided:
            md += ["```", r.note, "```", ""]
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
    return md


def _md_pictures(preds: dict, best: RungResult | None, worst_lines: list[str]) -> list[str]:
    md = ["", "## Curves", "", "![curves](curves.png)", ""]
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
    return md


def record_predictions(checkpoints: dict[str, Path], val_data) -> dict[str, RecordScores]:
    """Each checkpoint's predictions on the records of `val_data`, read and scored as `evaluate` does.

    `val_data` (the ladder's validation set) names the data, the split and how many of its first records;
    the models are fed from `evaluate`'s decoded inputs, never from the set's stored uint8 bytes.
    """
    if not checkpoints:
        return {}
    data, split, n = _source(val_data)
    return {name: score_records(ckpt, data, split, limit=n) for name, ckpt in checkpoints.items()}


def _source(val_data) -> tuple[Path, str, int]:
    """(data root, split, record count) of a validation set: a dataset or the first records of one."""
    from torch.utils.data import Subset

    ds = val_data
    while isinstance(ds, Subset):
        ds = ds.dataset
    return Path(ds.source), ds.split, len(val_data)


def _predictions(rungs: list[RungResult], val_data) -> dict[str, RecordScores]:
    """Validation predictions of each rung's best checkpoint (see `record_predictions`)."""
    ckpts = {r.rung: r.run_dir / "checkpoints" / "best.ckpt" for r in rungs if r.run_dir}
    return record_predictions({k: v for k, v in ckpts.items() if v.exists()}, val_data)


def _overlays(preds: dict[str, RecordScores], indices, path: Path) -> None:
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
        for col, rung in enumerate(rungs):
            scores = preds[rung]
            item = scores.inputs.item(i)  # decoded, as the model read it
            panels = overlay_panels(item["image"], item["mask"], scores.probs[i], scores.threshold)
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
    elif result.outcome == "inconclusive":
        console.print(
            "[yellow]inconclusive:[/] no rung failed, but the budget was too short to judge "
            f"{', '.join(r.rung for r in result.rungs if r.status == 'inconclusive')} on this data "
            "(see the budget each needs above and in the report)"
        )
    console.print(f"report: {report}")
    return result


def selftest_table(rows) -> Table:
    """The self-test as a rich table: fault → first failing rung → implicated part → caught or missed."""
    table = Table(title="ladder self-test")
    for col in ("fault", "expected", "first failing rung", "implicated", "NaN report", "outcome", "result"):
        table.add_column(col)
    for r in rows:
        clean_ok = "[green]all passed[/]" if r.outcome == "passed" else "[green]none failed[/]"
        verdict = (
            (clean_ok if r.caught else "[red]false alarm[/]")
            if r.fault == "clean"
            else ("[green]caught[/]" if r.caught else "[red]missed[/]")
        )
        table.add_row(
            r.fault,
            r.expected_rung or "none",
            r.first_failure or "none",
            r.implicated or "-",
            "yes" if r.nan_report else "-",
            r.outcome,
            verdict,
        )
    return table

"""`evaluate`: global Dice of a checkpoint at its stored and its best threshold, per-record Dice, curve PNG."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from segladder.data.datasets import dataset_from_config
from segladder.errors import DataError
from segladder.inference.checkpoint import load_checkpoint
from segladder.inference.errors import CheckpointError
from segladder.io import atomic_path, atomic_write_json
from segladder.metrics import ThresholdSweepDice, per_record_dice
from segladder.progress import progress_bar
from segladder.viz import save_figure, threshold_curve_figure


@dataclass
class Evaluation:
    dice_stored: float
    stored_threshold: float
    dice_best: float
    best_threshold: float
    records: int
    out: Path


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    split: str = "validation",
    out: Path | None = None,
    batch_size: int = 16,
    device: str | None = None,
    progress: bool = True,
) -> Evaluation:
    ck = load_checkpoint(checkpoint)
    if ck.task != "segmentation":
        raise CheckpointError(f"{checkpoint}: a {ck.task} checkpoint; evaluate scores segmentation masks.")
    ds = dataset_from_config(ck.config.data, split, root=data, stats=ck.stats)
    if not ds.has_mask:
        raise DataError(f"split '{split}' of {data} has no masks to evaluate against.")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = ck.model.to(dev)
    out = Path(out) if out else Path(checkpoint).resolve().parent.parent / f"eval-{split}"
    out.mkdir(parents=True, exist_ok=True)
    # The default 0.01 grid plus the stored threshold, so both figures come from one pass.
    grid = sorted({round(k / 100, 2) for k in range(1, 100)} | {ck.threshold})
    sweep = ThresholdSweepDice(thresholds=grid)
    rows: list[tuple[str, float, float, int, int]] = []
    loader = DataLoader(ds, batch_size=batch_size)
    with progress_bar(disable=not progress) as bar, torch.no_grad():
        task = bar.add_task(f"evaluating {split}", total=len(ds))
        for batch in loader:
            probs = torch.sigmoid(model(batch["image"].to(dev)).float()).cpu()
            sweep.update(probs, batch["mask"])
            per = per_record_dice(probs, batch["mask"], ck.threshold)
            for rid, dice, p, m in zip(batch["record_id"], per, probs, batch["mask"], strict=True):
                rows.append((rid, float(dice), float(p.max()), int((p > ck.threshold).sum()), int(m.sum())))
            bar.advance(task, len(batch["record_id"]))
    res = sweep.compute()
    th, curve = res["thresholds"].numpy(), res["curve"].numpy()
    stored = float(curve[np.argmin(np.abs(th - ck.threshold))])
    result = Evaluation(stored, ck.threshold, float(res["dice_best"]), float(res["threshold"]), len(ds), out)
    with atomic_path(out / "per_record.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["record_id", "dice", "max_prob", "pred_pixels", "true_pixels"])
        w.writerows(sorted(rows, key=lambda r: r[1]))
    atomic_write_json(
        out / "metrics.json",
        {
            "checkpoint": str(checkpoint),
            "data": str(data),
            "split": split,
            "records": len(ds),
            "dice_at_stored_threshold": stored,
            "stored_threshold": ck.threshold,
            "dice_best": result.dice_best,
            "best_threshold": result.best_threshold,
            "curve": {"thresholds": th.tolist(), "dice": curve.tolist()},
        },
    )
    import matplotlib.pyplot as plt

    fig = threshold_curve_figure(th, curve, f"{split}, {Path(checkpoint).name}", stored=ck.threshold)
    save_figure(fig, out / "threshold_curve.png")
    plt.close(fig)
    return result

"""K-fold training: each fold into RUN/fold_k/, resumable fold by fold, then out-of-fold post-processing choices."""

from __future__ import annotations

import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from segladder.config import ExperimentConfig, dump_config
from segladder.data.folds import (
    FoldRecord,
    check_covers,
    check_trainable,
    make_folds,
    pooled_splits,
    read_folds,
)
from segladder.data.module import held_out
from segladder.errors import ConfigError, SegladderError
from segladder.inference.checkpoint import load_checkpoint
from segladder.inference.folds import FoldEnsemble
from segladder.inference.postprocess import Float16Histogram
from segladder.io import atomic_save_npy, atomic_write_json, atomic_write_text
from segladder.metrics import ThresholdSweepDice
from segladder.progress import console, progress_bar
from segladder.training.run import read_metrics, train

FOLDS_FILE = "folds.csv"
DONE_FILE = "fold_done.json"
MIN_COMPONENT_GRID = (0, 5, 10, 20, 50, 100)


@dataclass
class FoldsResult:
    """What `train --folds` left: the run folder, each fold's Dice, and the ensemble once all folds finished."""

    run_dir: Path
    fold_dice: list[float]
    ensemble: FoldEnsemble | None  # None until every fold has finished


DEFAULT_FOLDS = 5  # folds cut by `train --folds` when the command names no number


def train_folds(
    cfg: ExperimentConfig,
    run_dir: Path,
    *,
    k: int | None = None,
    only: list[int] | None = None,
    progress: bool = True,
) -> FoldsResult:
    """Train every fold of `cfg` (or those in `only`) into `run_dir/fold_k/`; a second call continues.

    The folds come from `cfg.data.folds`, or are cut here by record (stratified by "has a contrail") into
    `run_dir/folds.csv`. Once all folds have finished, their held-out records are predicted by their own
    fold's best model, and the threshold, its percentile and the small-component size are chosen on the
    pooled out-of-fold maps with global Dice (`ensemble.json`, `oof_threshold_curve.png`).
    """
    from segladder.training.build import task_class

    task = task_class(cfg)
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    try:  # a run that fails these checks leaves no folder behind that would look like a run
        folds_csv, rows, k = _folds_of(cfg, run_dir, k)
        todo = list(range(k)) if only is None else only
        bad = [f for f in todo if not 0 <= f < k]
        if bad:
            raise ConfigError(f"--fold {bad[0]}: {folds_csv} has folds 0..{k - 1}.")
        atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    except SegladderError:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    for f in todo:
        _train_fold(cfg, run_dir, folds_csv, f, k, task.monitor)
    dice = [
        _fold_best(run_dir / f"fold_{f}", task.monitor)[0]
        for f in range(k)
        if (run_dir / f"fold_{f}" / DONE_FILE).exists()
    ]
    if len(dice) < k:
        console.print(f"{len(dice)} of {k} folds finished; run the same command again to train the others.")
        return FoldsResult(run_dir, dice, None)
    if "mask" not in task.accepts:  # e.g. classification: per-fold scores, but no maps to pool
        mean, std = statistics.fmean(dice), statistics.stdev(dice) if k > 1 else 0.0
        atomic_write_json(
            run_dir / "folds_summary.json", {"monitor": task.monitor, "folds": dice, "mean": mean, "std": std}
        )
        console.print(
            f"{task.monitor} per fold: {', '.join(f'{d:.4f}' for d in dice)}; mean ± std {mean:.4f} ± {std:.4f}"
        )
        return FoldsResult(run_dir, dice, None)
    ensemble = out_of_fold(run_dir, rows, k, progress=progress)
    _summary(run_dir, ensemble)
    return FoldsResult(run_dir, ensemble.fold_dice, ensemble)


def _folds_of(cfg: ExperimentConfig, run_dir: Path, k: int | None) -> tuple[Path, list[FoldRecord], int]:
    """The folds file, its rows and its fold count.

    That is `data.folds` (which must exist; its count must be `k` when one is asked for), the run's own
    folds.csv from an earlier call, or `k` (default 5) folds cut here by record into it.
    """
    if cfg.data.folds:
        folds_csv = Path(cfg.data.folds)
        if not folds_csv.is_file():
            raise ConfigError(
                f"data.folds {folds_csv} does not exist; make it with `segladder data folds ROOT --out "
                f"{folds_csv}`, or leave data.folds unset and `train --folds N` cuts N folds into "
                f"{run_dir / FOLDS_FILE}."
            )
    else:
        folds_csv = run_dir / FOLDS_FILE
        if not folds_csv.exists():
            k = DEFAULT_FOLDS if k is None else k
            if k < 2:
                raise ConfigError(f"--folds {k}: cross-validation needs at least 2 folds.")
            if cfg.data.root is None:
                raise ConfigError(
                    "data.root is not set: give the dataset to cut folds from (--set data.root=PATH)."
                )
            run_dir.mkdir(parents=True, exist_ok=True)
            make_folds(
                cfg.data.root,
                folds_csv,
                k=k,
                by="record",
                splits=cfg.data.train_split.split("+"),
                seed=cfg.seed,
                k_option="--folds",
            )
            console.print(f"folds: {k} by record over '{cfg.data.train_split}', written to {folds_csv}")
    rows = read_folds(folds_csv)
    asked = k
    k = check_trainable(rows, folds_csv, k)
    if cfg.data.folds and asked is not None and asked != k:
        # Training the CSV's folds when the command asked for another number would be silent.
        raise ConfigError(
            f"--folds {asked}: data.folds {folds_csv} holds {k} folds; leave out --folds to train its {k}, "
            f"or cut {asked} with `segladder data folds ROOT --k {asked} --out NEW.csv` and set "
            "data.folds=NEW.csv."
        )
    if cfg.data.folds and cfg.data.root is not None and cfg.data.resolved_format == "contrails":
        check_covers(rows, folds_csv, cfg.data.root, pooled_splits(cfg.data), k)
    return folds_csv, rows, k


def _train_fold(
    cfg: ExperimentConfig, run_dir: Path, folds_csv: Path, fold: int, k: int, monitor: str
) -> None:
    fold_dir = run_dir / f"fold_{fold}"
    if (fold_dir / DONE_FILE).exists():
        console.print(f"fold {fold + 1}/{k} (fold_{fold}): finished earlier, kept")
        return
    console.rule(f"[bold]fold {fold + 1}/{k} (fold_{fold})")
    if (fold_dir / "config.yaml").exists() and (fold_dir / "checkpoints" / "last.ckpt").exists():
        train(None, resume=fold_dir)  # the fold was interrupted: continue it
    else:
        data = cfg.data.model_copy(update={"folds": str(folds_csv.resolve()), "fold": fold})
        train(cfg.model_copy(update={"data": data, "name": f"{cfg.name}-fold{fold}"}), out=fold_dir)
    score, epoch = _fold_best(fold_dir, monitor)
    atomic_write_json(fold_dir / DONE_FILE, {"fold": fold, monitor: score, "best_epoch": epoch})


def _fold_best(fold_dir: Path, monitor: str = "val/dice_best") -> tuple[float, int]:
    """The fold's best value of `monitor` (global Dice at its best threshold, for masks) and its epoch."""
    epochs = [e for e in read_metrics(fold_dir).get("epochs", []) if monitor in e]
    if not epochs:
        return float("nan"), 0
    best = max(epochs, key=lambda e: e[monitor])
    return float(best[monitor]), int(best["epoch"])


def out_of_fold(
    run_dir: Path, rows: list[FoldRecord], k: int, *, batch_size: int = 16, progress: bool = True
) -> FoldEnsemble:
    """Predict each fold's held-out records with that fold's best model; choose post-processing on the pool."""
    oof_dir = run_dir / "oof"
    sweep = ThresholdSweepDice()
    sweep_05 = ThresholdSweepDice(thresholds=[0.5])
    hist = Float16Histogram()
    written: list[str] = []
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task("out-of-fold predictions", total=len(rows))
        for fold in range(k):
            ck = load_checkpoint(run_dir / f"fold_{fold}" / "checkpoints" / "best.ckpt")
            model = ck.model.to(device)
            for batch in DataLoader(
                held_out(ck.config.data, rows, fold, stats=ck.stats), batch_size=batch_size
            ):
                with torch.no_grad():
                    probs = torch.sigmoid(model(batch["image"].to(device)).float()).cpu()
                sweep.update(probs, batch["mask"])
                sweep_05.update(probs, batch["mask"])
                p16 = probs[:, 0].numpy().astype(np.float16)
                hist.update(p16)
                for rid, p, m in zip(batch["record_id"], p16, batch["mask"][:, 0].numpy(), strict=True):
                    name = f"fold{fold}_{rid}"
                    atomic_save_npy(oof_dir / f"{name}.npy", np.stack([p, m.astype(np.float16)]))
                    written.append(name)
                bar.advance(task, len(batch["record_id"]))
    res = sweep.compute()
    th = float(res["threshold"])
    min_component, dice = _best_min_component(oof_dir, written, th)
    percentile = 100.0 * (1.0 - hist.count_above(th) / max(1, hist.total))
    _threshold_png(run_dir, res["thresholds"].numpy(), res["curve"].numpy())
    fold_best = [_fold_best(run_dir / f"fold_{f}") for f in range(k)]
    ensemble = FoldEnsemble(
        checkpoints=[f"fold_{f}/checkpoints/best.ckpt" for f in range(k)],
        threshold=th,
        min_component=min_component,
        percentile=percentile,
        oof_dice=dice,
        oof_dice_at_0_5=float(sweep_05.compute()["dice_best"]),
        oof_records=len(written),
        fold_dice=[d for d, _ in fold_best],
        best_epochs=[e for _, e in fold_best],
    )
    ensemble.write(run_dir)
    return ensemble


def _best_min_component(oof_dir: Path, names: list[str], threshold: float) -> tuple[int, float]:
    """The component size in MIN_COMPONENT_GRID of best pooled global Dice at `threshold` (0 wins ties)."""
    tp = np.zeros(len(MIN_COMPONENT_GRID))
    pred = np.zeros(len(MIN_COMPONENT_GRID))
    true = 0.0
    for name in names:
        p, m = np.load(oof_dir / f"{name}.npy")
        truth = m > 0.5
        true += truth.sum()
        binary = (p > threshold).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        sizes = stats[:, cv2.CC_STAT_AREA]
        for i, size in enumerate(MIN_COMPONENT_GRID):
            keep = np.zeros(n, bool)
            keep[1:] = sizes[1:] >= size
            kept = keep[labels]
            tp[i] += (kept & truth).sum()
            pred[i] += kept.sum()
    denom = pred + true
    dice = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)
    best = int(np.argmax(dice))
    return MIN_COMPONENT_GRID[best], float(dice[best])


def _threshold_png(run_dir: Path, thresholds: np.ndarray, curve: np.ndarray) -> None:
    import matplotlib.pyplot as plt

    from segladder.viz import save_figure, threshold_curve_figure

    fig = threshold_curve_figure(thresholds, curve, "pooled out-of-fold maps")
    save_figure(fig, run_dir / "oof_threshold_curve.png")
    plt.close(fig)


def _summary(run_dir: Path, ens: FoldEnsemble) -> None:
    """Per-fold Dice, mean ± std and the OOF choices: printed, as JSON and as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from segladder.viz import save_figure

    mean = statistics.fmean(ens.fold_dice)
    std = statistics.stdev(ens.fold_dice) if len(ens.fold_dice) > 1 else 0.0
    atomic_write_json(
        run_dir / "folds_summary.json",
        {
            "folds": [
                {"fold": f, "dice_best": d, "best_epoch": e}
                for f, (d, e) in enumerate(zip(ens.fold_dice, ens.best_epochs, strict=True))
            ],
            "mean": mean,
            "std": std,
            "oof_dice": ens.oof_dice,
            "oof_threshold": ens.threshold,
            "oof_min_component": ens.min_component,
            "oof_percentile": ens.percentile,
            "full_data_epochs": ens.full_data_epochs,
        },
    )
    fig, ax = plt.subplots(figsize=(1.2 * len(ens.fold_dice) + 3, 3.5))
    k = len(ens.fold_dice)
    ax.bar([f"fold {f + 1}/{k}" for f in range(k)], ens.fold_dice, color="#4c72b0")
    ax.axhline(mean, color="black", lw=1, label=f"mean {mean:.4f} ± {std:.4f}")
    ax.axhline(ens.oof_dice, color="#c44e52", lw=1, ls="--", label=f"pooled OOF {ens.oof_dice:.4f}")
    ax.set_ylabel("global Dice (best threshold)")
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, run_dir / "folds_summary.png")
    plt.close(fig)
    for f, d in enumerate(ens.fold_dice):
        console.print(f"fold {f + 1}/{k} (fold_{f}): global Dice {d:.4f}")
    console.print(
        f"mean ± std {mean:.4f} ± {std:.4f}; pooled out-of-fold {ens.oof_dice:.4f} at threshold "
        f"{ens.threshold:.2f}, min component {ens.min_component} px (percentile {ens.percentile:.3f})"
    )
    console.print(
        f"final model on all data: segladder train CONFIG --set data.train_split=train+validation "
        f"trainer.max_epochs={ens.full_data_epochs}"
    )

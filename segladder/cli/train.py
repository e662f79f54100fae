"""`segladder train` and `segladder evaluate`: config-driven training and checkpoint scoring."""

from __future__ import annotations

from pathlib import Path

import typer

from segladder.cli.app import app


@app.command("train")
def train(
    config: str = typer.Argument(
        None, help="Experiment YAML, or the name of a shipped config in configs/ (e.g. resnet18_u)."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a config key, e.g. --set optim.lr=3e-4 (repeatable)."
    ),
    more: list[str] = typer.Argument(
        None,
        help="More KEY=VALUE overrides, e.g. `--set optim.lr=3e-4 trainer.max_epochs=2`.",
        show_default=False,
    ),
    out: Path = typer.Option(None, "--out", help="Run directory (default: runs/<experiment>/<timestamp>/)."),
    resume: Path = typer.Option(
        None, "--resume", help="Continue the run in this directory from its last checkpoint."
    ),
    folds: int = typer.Option(
        None,
        "--folds",
        help="Cross-validate: train K folds into RUN/fold_k/ (data.folds, or "
        "folds cut by record); run again to continue.",
    ),
    fold: list[int] = typer.Option(
        [], "--fold", help="Train only this fold (repeatable); with data.folds or --folds."
    ),
) -> None:
    """Train a model; the run directory is printed as the last line."""
    from segladder.config import load_config, resolve_config_path
    from segladder.training.run import shared_run_dir
    from segladder.training.run import train as run_train

    overrides = list(set_) + list(more or [])
    if config and "=" in config:  # `segladder train --set a=1` with no config: the first override lands here
        config, overrides = None, [config, *overrides]
    if resume is not None and (config or overrides):
        raise typer.BadParameter(
            "--resume takes the config stored in the run directory; give no CONFIG or --set."
        )
    cfg = (
        None
        if resume is not None
        else load_config(resolve_config_path(config) if config else None, overrides)
    )
    if cfg is not None and out is not None:
        from segladder.io import refuse_overwriting_inputs

        data_inputs = cfg.data.input_paths()
        teacher = getattr(getattr(cfg, "distill", None), "teacher", None)
        refuse_overwriting_inputs({"--out": out}, {**data_inputs, "distill.teacher": teacher})
    if folds is not None or fold:
        from segladder.training.folds import train_folds

        if resume is not None:
            raise typer.BadParameter(
                "a cross-validated run continues by running the same command again with --out."
            )
        run_dir = out or Path("runs") / cfg.name / "folds"
        res = train_folds(cfg, run_dir, k=folds, only=list(fold) or None)
        typer.echo(str(res.run_dir))
        return
    run_dir = resume if resume is not None else shared_run_dir(cfg, out)
    result = run_train(cfg, out=None if resume is not None else run_dir, resume=resume)
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank != 0:  # the other DDP processes ran the same command; one summary is enough
        return
    final = result.metrics.get("final", {})
    if final:
        shown = {
            k: v
            for k, v in final.items()
            if isinstance(v, float) and k.startswith(("train/loss_epoch", "val/"))
        }
        typer.echo("final: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(shown.items())))
    typer.echo(str(result.run_dir))


@app.command("evaluate")
def evaluate(
    checkpoint: Path = typer.Argument(
        ..., help="A best.ckpt or last.ckpt from a run directory (with --folds: a `train --folds` run)."
    ),
    data: Path = typer.Option(..., "--data", help="Raw dataset root or prepared cache."),
    split: str = typer.Option("validation", "--split", help="Split to score."),
    out: Path = typer.Option(None, "--out", help="Output folder (default: <run>/eval-<split>/)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Batch size."),
    device: str = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: cuda when present)."),
    folds: bool = typer.Option(
        False,
        "--folds",
        help="CHECKPOINT is one run of `train --folds`: score its fold ensemble at the out-of-fold "
        "threshold and component size.",
    ),
) -> None:
    """Global Dice at the stored and the best threshold, per-record Dice CSV and the threshold curve PNG."""
    from segladder.inference.evaluate import evaluate as run_eval
    from segladder.io import refuse_overwriting_inputs, run_folder_of

    refuse_overwriting_inputs(
        {"--out": out},
        {"CHECKPOINT": checkpoint, "the run folder of CHECKPOINT": run_folder_of(checkpoint), "--data": data},
        # a run's own eval-<split>/ folders (the default --out) lie inside it
        shallow=("CHECKPOINT", "the run folder of CHECKPOINT"),
    )
    r = run_eval(checkpoint, data, split, out, batch_size, device, folds=folds)
    typer.echo(f"{r.records} records of {split}")
    typer.echo(f"global Dice at the stored threshold {r.stored_threshold:.2f}: {r.dice_stored:.4f}")
    if r.dice_postprocessed is not None:
        typer.echo(
            f"global Dice there after removing components < {r.min_component} px: {r.dice_postprocessed:.4f}"
        )
    typer.echo(f"global Dice at the best threshold   {r.best_threshold:.2f}: {r.dice_best:.4f}")
    typer.echo(
        f"written: {r.out / 'metrics.json'}, {r.out / 'per_record.csv'}, {r.out / 'threshold_curve.png'}"
    )

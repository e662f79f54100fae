"""One place where an experiment config becomes a run: validation, run directory, Trainer, fit, resume."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from segladder.config import ExperimentConfig, dump_config, load_config
from segladder.errors import ConfigError, SegladderError
from segladder.io import atomic_write_json, atomic_write_text
from segladder.training.callbacks import (
    AtomicCheckpointIO,
    FiniteModelCheckpoint,
    NonFiniteGuard,
    RNGState,
    RunRecorder,
)


class TrainingStopped(SegladderError):
    """Training ended early for a reason the user must act on (e.g. repeated non-finite steps)."""

    def __init__(self, message: str, run_dir: Path):
        super().__init__(message)
        self.run_dir = run_dir


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    best_checkpoint: Path | None
    last_checkpoint: Path | None


def validate_experiment(cfg: ExperimentConfig) -> None:
    """Catch config errors before any data is read or model built: model name and arguments, loss terms."""
    from segladder.losses import build_loss
    from segladder.models.registry import check_options

    check_options(cfg.model.name, model_kwargs(cfg))
    build_loss([t.model_dump(exclude_none=True) for t in cfg.loss])
    if cfg.trainer.precision == "16-mixed" and not torch.cuda.is_available():
        raise ConfigError("trainer.precision 16-mixed needs a CUDA device; use 32 or bf16-mixed on CPU.")


def model_kwargs(cfg: ExperimentConfig) -> dict:
    """The model's arguments, with `in_chans` filled from the data's channels when the config leaves it out."""
    from segladder.data.contrails import resolve_channels

    kwargs = dict(cfg.model.kwargs)
    kwargs.setdefault("in_chans", len(resolve_channels(cfg.data.channels)))
    return kwargs


def read_metrics(run_dir: Path) -> dict:
    """A run's metrics.json (`final` and per-epoch `epochs`), or {} when no epoch has finished."""
    path = Path(run_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


def new_run_dir(cfg: ExperimentConfig, root: Path = Path("runs")) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = root / cfg.name / stamp
    n = 1
    while path.exists():
        n += 1
        path = root / cfg.name / f"{stamp}-{n}"
    return path


def environment() -> dict:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                                  cwd=Path(__file__).parent).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None

    import lightning
    import timm

    from segladder import __version__

    return {
        "segladder": __version__, "git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain")),
        "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
        "lightning": lightning.__version__, "timm": timm.__version__,
        "cuda": torch.version.cuda, "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpus": os.cpu_count(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def build_trainer(cfg: ExperimentConfig, run_dir: Path, monitor: str, extra_callbacks=()) -> tuple[L.Trainer, NonFiniteGuard]:
    t = cfg.trainer
    guard = NonFiniteGuard(run_dir, t.nan_patience)
    callbacks = [
        guard,
        FiniteModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=monitor, mode="max",
                              save_top_k=1, save_last=True, auto_insert_metric_name=False, enable_version_counter=False),
        RNGState(),
        RunRecorder(run_dir, t.overlays),
        LearningRateMonitor(logging_interval="step"),
        *extra_callbacks,
    ]
    if t.progress:
        callbacks.append(RichProgressBar(leave=True))
    kwargs = {k: v for k, v in {
        "limit_train_batches": t.limit_train_batches, "limit_val_batches": t.limit_val_batches,
        "val_check_interval": t.val_check_interval, "gradient_clip_val": t.gradient_clip_val,
    }.items() if v is not None}
    trainer = L.Trainer(
        max_epochs=t.max_epochs, max_steps=t.max_steps, precision=t.precision, accelerator=t.accelerator,
        devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes, accumulate_grad_batches=t.accumulate_grad_batches,
        log_every_n_steps=t.log_every_n_steps, deterministic=t.deterministic, callbacks=callbacks,
        logger=TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""),
        plugins=[AtomicCheckpointIO()], default_root_dir=str(run_dir), num_sanity_val_steps=0,
        enable_progress_bar=t.progress, enable_model_summary=False, **kwargs,
    )
    return trainer, guard


def train(cfg: ExperimentConfig, out: Path | None = None, resume: Path | None = None) -> TrainResult:
    """Train `cfg` into a run directory (new, `out`, or `resume`d); returns where everything was written."""
    from segladder.data.module import ContrailsDataModule
    from segladder.tasks.segmentation import task_class

    ckpt_path = None
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").exists():
            raise ConfigError(f"--resume {run_dir}: no config.yaml there; give a run directory made by `segladder train`.")
        cfg = load_config(run_dir / "config.yaml")
        last = run_dir / "checkpoints" / "last.ckpt"
        if not last.exists():
            raise SegladderError(f"--resume {run_dir}: no checkpoints/last.ckpt yet (the run stopped before its first "
                                 "epoch ended); start it again instead.")
        ckpt_path = str(last)
    validate_experiment(cfg)
    if resume is None:
        run_dir = Path(out) if out is not None else new_run_dir(cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
        atomic_write_json(run_dir / "environment.json", environment())

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = ContrailsDataModule(cfg.data, cfg.seed)
    dm.setup("fit")  # data that does not match the config fails here, before a model is built
    task_cls = task_class(cfg.task)
    config = cfg.model_dump(mode="json")
    config["model"].update(model_kwargs(cfg))
    task = task_cls(config)
    trainer, guard = build_trainer(cfg, run_dir, task_cls.monitor)
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path)
    if guard.stopped_reason:
        raise TrainingStopped(guard.stopped_reason, run_dir)
    metrics = read_metrics(run_dir)
    best, last = run_dir / "checkpoints" / "best.ckpt", run_dir / "checkpoints" / "last.ckpt"
    return TrainResult(run_dir, metrics, best if best.exists() else None, last if last.exists() else None)

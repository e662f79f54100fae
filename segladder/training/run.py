"""One place where an experiment config becomes a run: validation, run directory, Trainer, fit, resume."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only

from segladder.config import ExperimentConfig, dump_config, load_config
from segladder.errors import ConfigError, SegladderError, continue_with
from segladder.io import atomic_write_json, atomic_write_text
from segladder.progress import console
from segladder.training.build import build_datamodule, build_task, build_trainer
from segladder.training.resume import choose_checkpoint


class TrainingStopped(SegladderError):
    """Training ended early for a reason the user must act on (e.g. repeated non-finite steps).

    Args:
        message: why training stopped and what to do.
        run_dir: the run's folder.
    """

    def __init__(self, message: str, run_dir: Path):
        super().__init__(message)
        self.run_dir = run_dir


@dataclass
class TrainResult:
    """What `train` left: the run folder, its metrics and its best and last checkpoints."""

    run_dir: Path
    metrics: dict
    best_checkpoint: Path | None
    last_checkpoint: Path | None


def read_metrics(run_dir: Path) -> dict:
    """A run's metrics.json (`final` and per-epoch `epochs`), or {} when no epoch has finished."""
    path = Path(run_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


RUN_DIR_ENV = (
    "SEGLADDER_RUN_DIR"  # the run directory, handed to the processes Lightning's DDP launcher starts
)


def shared_run_dir(cfg: ExperimentConfig, out: Path | None) -> Path:
    """One run directory for every process of a run.

    Lightning's DDP launcher starts the other local ranks by running the same command again with this
    process's environment, so the chosen directory travels in `SEGLADDER_RUN_DIR`. Processes started
    together by torchrun or SLURM cannot agree on a time stamp, so they must be given `--out`.
    """
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    started_together = max(int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("SLURM_NTASKS", 1))) > 1
    if started_together and out is None:
        raise ConfigError(
            "this process is one of several started by torchrun or SLURM: give --out RUN_DIR on shared "
            "storage so that every process writes to the same run."
        )
    return Path(out) if out is not None else new_run_dir(cfg)


def batch_summary(cfg: ExperimentConfig, world_size: int) -> str:
    """The per-device and the effective batch, and the LR rule: the configured LR is used as it is."""
    per_device, accumulate = cfg.data.batch_size, cfg.trainer.accumulate_grad_batches
    effective = per_device * accumulate * world_size
    line = (
        f"batch: {per_device} per device × {accumulate} accumulated × {world_size} process(es) = "
        f"{effective} samples per optimiser step; optim.lr {cfg.optim.lr:g} as configured"
    )
    if world_size > 1:
        line += (
            f" (not rescaled: for the single-process LR of batch {per_device * accumulate}, the linear rule "
            f"gives lr × {world_size})"
        )
    return line


def new_run_dir(cfg: ExperimentConfig, root: Path = Path("runs")) -> Path:
    """A new run folder `root/<name>/<timestamp>`, with a suffix when that one exists."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = root / cfg.name / stamp
    n = 1
    while path.exists():
        n += 1
        path = root / cfg.name / f"{stamp}-{n}"
    return path


def environment() -> dict:
    """What a run ran on: versions, git commit, devices and the start time, for the run's environment.json."""

    def git(*args: str) -> str | None:
        try:
            return (
                subprocess.run(
                    ["git", *args], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
                ).stdout.strip()
                or None
            )
        except (OSError, subprocess.SubprocessError):
            return None

    import lightning
    import timm

    from segladder import __version__

    return {
        "segladder": __version__,
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain")),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "timm": timm.__version__,
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpus": os.cpu_count(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def train(
    cfg: ExperimentConfig,
    out: Path | None = None,
    resume: Path | None = None,
    callbacks: Sequence[L.Callback] = (),
) -> TrainResult:
    """Train `cfg` into a run directory (new, `out`, or `resume`d); returns where everything was written.

    `callbacks` join the run's own (the ladder's fault injection and training-batch probe use this).
    """
    ckpt_path = None
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").exists():
            raise ConfigError(
                f"--resume {run_dir}: no config.yaml there; give a run directory made by `segladder train`."
            )
        cfg = load_config(run_dir / "config.yaml")
        ckpt_path = str(choose_checkpoint(run_dir))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    task = build_task(cfg)  # a config the task cannot train fails here, before any data is read
    dm = build_datamodule(cfg)
    dm.setup("fit")  # data that does not match the config fails here, before the run directory is made
    created = False
    if resume is None:
        run_dir = shared_run_dir(cfg, out)
        if rank_zero_only.rank == 0:
            created = not run_dir.exists()
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
            atomic_write_json(run_dir / "environment.json", environment())
    try:
        trainer, guard = build_trainer(cfg, run_dir, task.monitor, [*task.callbacks(), *callbacks])
    except SegladderError:
        if created:  # a refused run leaves no folder that would later look like a run
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if rank_zero_only.rank == 0:
        console.print(batch_summary(cfg, trainer.world_size))
    own_env = RUN_DIR_ENV not in os.environ
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())
    try:
        with continue_with(f"segladder train --resume {run_dir}"):  # named by a full disk or an interruption
            trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path)
    finally:
        if own_env:
            os.environ.pop(RUN_DIR_ENV, None)
    if guard.stopped_reason:
        raise TrainingStopped(guard.stopped_reason, run_dir)
    metrics = read_metrics(run_dir)
    best, last = run_dir / "checkpoints" / "best.ckpt", run_dir / "checkpoints" / "last.ckpt"
    return TrainResult(run_dir, metrics, best if best.exists() else None, last if last.exists() else None)

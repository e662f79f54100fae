"""The one place where a typed experiment config becomes objects: task (model + loss), data module and Trainer."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.precision import MixedPrecision

from segladder.config import ExperimentConfig, ModelConfig
from segladder.errors import ConfigError
from segladder.training.checkpoints import AtomicCheckpointIO, FiniteModelCheckpoint, RNGState
from segladder.training.graceful_stop import GracefulStop
from segladder.training.nan_guard import NonFiniteGuard
from segladder.training.precision import CachedAutocastPrecision
from segladder.training.progress_bar import IntervalProgressBar
from segladder.training.recorder import RunRecorder


def task_class(cfg: ExperimentConfig):
    """The registered task `cfg.task`, after checking that it can train `cfg.model` (nothing is built).

    A model whose output kind the task does not accept is refused with the models that would fit.
    """
    from segladder.models import info, with_output
    from segladder.optim import OPTIMIZERS
    from segladder.tasks import TASKS

    cls = TASKS.get(cfg.task)
    entry = info(cfg.model.name)
    if entry.output not in cls.accepts:
        fitting = [n for kind in cls.accepts for n in with_output(kind)]
        other = [name for name, t in TASKS.items() if entry.output in t.accepts]
        raise ConfigError(
            f"task '{cfg.task}' trains models whose output is a {' or '.join(cls.accepts)}, but model "
            f"'{cfg.model.name}' outputs a {entry.output}. Models that fit task '{cfg.task}': {', '.join(fitting)}"
            + (f"; or set task={other[0]} for {cfg.model.name}." if other else ".")
        )
    OPTIMIZERS.get(cfg.optim.name)
    if cfg.trainer.precision == "16-mixed" and not torch.cuda.is_available():
        raise ConfigError("trainer.precision 16-mixed needs a CUDA device; use 32 or bf16-mixed on CPU.")
    cls.check(cfg)
    return cls


def resolve_model(cfg: ExperimentConfig) -> ExperimentConfig:
    """`cfg` with every model argument the model is built with, `in_chans` filled from the data's channels.

    The resolved config is what checkpoints store, so inference rebuilds exactly the trained model.
    """
    from segladder.models import check_options

    if "in_chans" in cfg.model.kwargs:
        model = cfg.model
    else:
        # The data format says what its samples hold (COCO crops: RGB; contrails: data.channels).
        chans = cfg.data.resolve_format().in_chans(cfg.data)
        model = ModelConfig(name=cfg.model.name, **cfg.model.kwargs, in_chans=chans)
    check_options(model.name, model.kwargs)
    return cfg.model_copy(update={"model": model})


def check_experiment(cfg: ExperimentConfig) -> ExperimentConfig:
    """Every config check that needs no data and builds nothing; returns `cfg` with its model resolved."""
    task_class(cfg)
    return resolve_model(cfg)


def build_task(cfg: ExperimentConfig):
    """The task of `cfg` with its model built from the registry; config errors are raised before any weight is made."""
    from segladder.models import create

    cls = task_class(cfg)
    cfg = resolve_model(cfg)
    model = create(cfg.model.name, **cfg.model.kwargs)
    check_input_sides(cfg, model)
    if cfg.trainer.init_from:
        _init_from(model, cfg, Path(cfg.trainer.init_from))
    return cls(cfg, model)


def check_input_sides(cfg: ExperimentConfig, model: torch.nn.Module) -> None:
    """Refuse, under its config key, an image side the model cannot take.

    The model's own check would fire only at the first batch and name the model, not the setting to change.
    """
    multiple = getattr(model, "size_multiple", 1)  # box models take any crop side and have none
    sides = {"data.image_size": cfg.data.image_size, "data.augment.crop_size": cfg.data.augment.crop_size}
    for key, side in sides.items():
        if side is not None and side % multiple:
            low = side - side % multiple
            near = f"{low} or {low + multiple}" if low else str(multiple)
            raise ConfigError(
                f"{key} is {side} but {cfg.model.name} needs sides divisible by {multiple}: set {key} to {near}."
            )


def _init_from(model: torch.nn.Module, cfg: ExperimentConfig, path: Path) -> None:
    """Start `model` from the weights of the checkpoint at `path` (trainer.init_from).

    The checkpoint is checked first to hold the same model on the same inputs.
    """
    from segladder.inference.checkpoint import CheckpointError, input_mismatches, load_checkpoint

    key = "trainer.init_from"
    try:
        loaded = load_checkpoint(path)
    except CheckpointError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if loaded.config.task != cfg.task:
        # model.name would not help: another task's model cannot train on this run's data and loss.
        raise ConfigError(
            f"{key}: {path} is a {loaded.config.task} checkpoint ({loaded.config.model.name}) and this run "
            f"trains the {cfg.task} task; start from a {cfg.task} checkpoint, or train a "
            f"{loaded.config.task} run from it."
        )
    if loaded.config.model.name != cfg.model.name:
        raise ConfigError(
            f"{key}: {path} holds {loaded.config.model.name}, this run trains {cfg.model.name}; "
            f"set model.name={loaded.config.model.name} or start from a {cfg.model.name} checkpoint."
        )
    loaded_cfg = resolve_model(loaded.config)  # in_chans filled in as it is for this run
    # Sizes may differ (the models are convolutional); frames and channels are what the weights mean.
    clash = [c for c in input_mismatches(cfg, loaded_cfg) if c[0] != "data.image_size"]
    if clash:
        what = "; ".join(f"{k} {a} here, {b} in the checkpoint" for k, a, b in clash)
        raise ConfigError(
            f"{key}: {path} was trained on other inputs ({what}); set them as the checkpoint has."
        )
    try:
        model.load_state_dict(loaded.model.state_dict())
    except RuntimeError as exc:
        raise ConfigError(
            f"{key}: the weights of {path} do not fit this run's {cfg.model.name} "
            f"({str(exc).strip().splitlines()[-1].strip()}); give the model the checkpoint's options."
        ) from None


def build_datamodule(cfg: ExperimentConfig) -> L.LightningDataModule:
    """The data module of `cfg`'s data format (`data.format`, segladder/data/formats/)."""
    return cfg.data.resolve_format().datamodule(cfg.data, cfg.seed)


def loggers(cfg: ExperimentConfig, run_dir: Path) -> list:
    """TensorBoard always; Weights & Biases beside it when `trainer.wandb_project` is set."""
    out = [TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="")]
    if cfg.trainer.wandb_project:
        try:
            from lightning.pytorch.loggers import WandbLogger

            out.append(WandbLogger(project=cfg.trainer.wandb_project, name=cfg.name, save_dir=str(run_dir)))
        except ModuleNotFoundError:
            raise ConfigError(
                "trainer.wandb_project needs the wandb package: pip install wandb "
                "(or leave trainer.wandb_project unset)."
            ) from None
    return out


class _DropAdvert(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip" not in record.getMessage()


def quiet_library_notices() -> None:
    """Keep two lines a user can do nothing about out of every run's output.

    They are Lightning's advert for its cloud logger, and torch's deprecation notice for a pytree call inside
    Lightning itself.
    """
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # where rank_zero_info writes
    if not any(isinstance(f, _DropAdvert) for f in log.filters):
        log.addFilter(_DropAdvert())
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)


def build_trainer(
    cfg: ExperimentConfig, run_dir: Path, monitor: str, extra_callbacks=()
) -> tuple[L.Trainer, NonFiniteGuard]:
    """Lightning's Trainer with segladder's callbacks (NaN guard, finite atomic checkpoints, RNG state, pictures)."""
    quiet_library_notices()
    t = cfg.trainer
    guard = NonFiniteGuard(run_dir, t.nan_patience)
    callbacks = [
        guard,
        GracefulStop(run_dir),
        FiniteModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="best",
            monitor=monitor,
            mode="max",
            save_top_k=1,
            save_last=True,
            auto_insert_metric_name=False,
            enable_version_counter=False,
            optimizer_state=t.optimizer_state,
        ),
        RNGState(),
        RunRecorder(run_dir, t.overlays),
        LearningRateMonitor(logging_interval="step"),
        *extra_callbacks,
    ]
    if t.progress:
        callbacks.append(IntervalProgressBar(leave=True))
    kwargs = {
        k: v
        for k, v in {
            "limit_train_batches": t.limit_train_batches,
            "limit_val_batches": t.limit_val_batches,
            "val_check_interval": t.val_check_interval,
            "gradient_clip_val": t.gradient_clip_val,
            "gradient_clip_algorithm": t.gradient_clip_algorithm if t.gradient_clip_val else None,
        }.items()
        if v is not None
    }
    strategy = t.strategy
    if strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(find_unused_parameters=t.find_unused_parameters)
    trainer = L.Trainer(
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        precision=t.precision,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=strategy,
        num_nodes=t.num_nodes,
        sync_batchnorm=t.sync_batchnorm,
        accumulate_grad_batches=t.accumulate_grad_batches,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        benchmark=t.cudnn_benchmark and not t.deterministic,
        callbacks=callbacks,
        logger=loggers(cfg, run_dir),
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
        num_sanity_val_steps=0,
        enable_progress_bar=t.progress,
        enable_model_summary=False,
        **kwargs,
    )
    if type(trainer.precision_plugin) is MixedPrecision:
        trainer.strategy.precision_plugin = CachedAutocastPrecision.replacing(trainer.precision_plugin)
    return trainer, guard

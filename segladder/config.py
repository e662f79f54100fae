"""Typed experiment config: YAML files in configs/, dotted `--set` overrides, clear errors on bad keys."""

from __future__ import annotations

import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)

from segladder.data.augment_config import AugmentConfig
from segladder.data.formats import AUTO, DATA_FORMATS, DataFormat, FormatSection, resolve_format
from segladder.errors import ConfigError
from segladder.registry import suggest

__all__ = ["AugmentConfig", "DataConfig", "ExperimentConfig"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MovedKeyWarning(FutureWarning):
    """A config key that moved (e.g. `data.crop_size` → `data.coco.crop_size`): the old one still loads."""


def moved_data_key(key: str) -> str:
    """The dotted key `key` names now: `data.crop_size` → `data.coco.crop_size`; any other key as given."""
    parts = key.split(".")
    if len(parts) == 2 and parts[0] == "data":
        for name, fmt in DATA_FORMATS.items():
            if parts[1] in fmt.moved_keys:
                return f"data.{name}.{parts[1]}"
    return key


def migrate_data_keys(data: dict, fmt: str | None = None) -> tuple[dict, list[tuple[str, str]]]:
    """Move the keys that moved into a format's section there, in a `data` section given as a dict.

    Returns the migrated dict and the (old, new) dotted keys it moved. A moved key still at its old default in
    a config of another format (`fmt`, or the dict's own `format`) was never used: written configs and
    checkpoints carried every key. It is dropped unnamed.
    """
    fmt = data.get("format", fmt)
    out, moved = dict(data), []
    for name, f in DATA_FORMATS.items():
        old = {k: out.pop(k) for k in f.moved_keys if k in out}
        if not old or (fmt != name and all(v == f.moved_keys[k] for k, v in old.items())):
            continue
        given = out.get(name)
        section = dict(given.model_dump(exclude_unset=True) if isinstance(given, BaseModel) else given or {})
        both = sorted(set(old) & set(section))
        if both:
            raise ConfigError(
                f"data.{both[0]} and data.{name}.{both[0]} are both set; data.{both[0]} is the old name of "
                f"data.{name}.{both[0]}: keep data.{name}.{both[0]} only."
            )
        out[name] = {**old, **section}
        moved += [(f"data.{k}", f"data.{name}.{k}") for k in old]
    return out, moved


def warn_moved(moved: list[tuple[str, str]]) -> None:
    """One warning naming every moved key that a config still used, old and new."""
    if moved:
        pairs = ", ".join(f"{old} is now {new}" for old, new in dict.fromkeys(moved))
        warnings.warn(
            f"config keys moved: {pairs}. The old keys still load; write the new ones (docs/data.md, "
            '"Data formats").',
            MovedKeyWarning,
            stacklevel=3,
        )


class _DataKeys(_Section):
    """Where samples come from and how they are batched: the keys every data format reads.

    A format's own keys are its section, `data.<format>` (segladder/data/formats/); `DataConfig` adds one
    field for each.
    """

    format: str = Field(
        AUTO,
        description="how samples are stored: "
        + "; ".join(f.summary for _, f in DATA_FORMATS.items())
        + "; auto: coco when data.coco.train or data.coco.val is set, images when ROOT/train/images exists, "
        "else contrails",
    )
    root: str | None = Field(
        None, description="raw dataset root or prepared cache; None: the synthetic demo data"
    )
    frames: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 3, 4], description="frame indices; label is frame 4"
    )
    channels: list[str] = Field(default_factory=lambda: ["ash"])
    image_size: int = Field(256, ge=8)
    batch_size: int = Field(8, ge=1)
    val_batch_size: int | None = Field(None, ge=1)
    num_workers: int = Field(2, ge=0)
    train_split: str = Field("train", description="split(s) to train on; `train+validation` joins both")
    val_split: str = "validation"
    train_records: int | None = Field(
        None, ge=1, description="use only the first N training records (ladder budget)"
    )
    val_records: int | None = Field(None, ge=1)
    folds: str | None = Field(
        None, description="folds CSV from `segladder data folds`; train on all folds but data.fold"
    )
    fold: int | None = Field(None, ge=0, description="the held-out fold (validation) when data.folds is set")
    positives_only: bool = Field(
        False, description="train on records with a contrail only (classify-then-segment stage 2)"
    )
    normalize_ash: bool = False
    skip_bad: bool = False
    pseudo_labels: str | None = Field(
        None, description="folder from `segladder pseudo-label`: its split joins training"
    )
    pseudo_threshold: float = Field(0.5, gt=0, lt=1, description="pseudo mask = pseudo soft label > this")
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @model_validator(mode="before")
    @classmethod
    def _format_sections(cls, data: Any) -> Any:
        """Move keys from before the format sections into them (one `MovedKeyWarning`).

        A format named by `format` gets its section with its defaults when none is given.
        """
        if not isinstance(data, dict):
            return data
        try:
            data, moved = migrate_data_keys(data)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        warn_moved(moved)
        fmt = data.get("format")
        if fmt in DATA_FORMATS and DATA_FORMATS.get(fmt).section is not None and data.get(fmt) is None:
            data[fmt] = {}
        return data

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        if v != AUTO and v not in DATA_FORMATS:
            names = [AUTO, *DATA_FORMATS.names()]
            raise ValueError(
                f"unknown data format '{v}'.{suggest(v, names) or ''} Formats: {', '.join(names)}."
            )
        return v

    @field_validator("train_split")
    @classmethod
    def _train_splits(cls, v: str) -> str:
        parts = v.split("+")
        if not all(parts):
            raise ValueError(
                f"'{v}' has an empty split name; join splits with one '+', e.g. train+validation"
            )
        twice = sorted({p for p in parts if parts.count(p) > 1})
        if twice:
            raise ValueError(
                f"split '{twice[0]}' is named twice (its records would count double); name each split "
                f"once, e.g. data.train_split={'+'.join(dict.fromkeys(parts))}"
            )
        if "test" in parts:
            raise ValueError(
                "the test split has no masks to train on; train on train and/or validation, e.g. "
                "data.train_split=train+validation"
            )
        return v

    @model_serializer(mode="wrap")
    def _without_unused_sections(self, handler: Any) -> dict:
        # A format's section is written only where it is given (or its format named): a contrails config
        # carries no box keys.
        out = handler(self)
        for name, _ in DATA_FORMATS.items():
            if out.get(name, 0) is None:
                del out[name]
        return out

    def resolve_format(self, source: str | Path | None = None) -> type[DataFormat]:
        """The registered format that reads this data: `format`, or for auto the one that recognises it.

        Auto picks coco when data.coco.train or .val is set, images when the root, or `source`, holds
        image/mask folders, else contrails.
        """
        return resolve_format(self, source)

    @property
    def resolved_format(self) -> str:
        """The name of `resolve_format()`."""
        return self.resolve_format().name

    def input_paths(self) -> dict[str, str | None]:
        """Every file and folder the data keys name, by config key (a run must not write over them)."""
        out: dict[str, str | None] = {"data.root": self.root, "data.folds": self.folds}
        for _, f in DATA_FORMATS.items():
            out.update(f.inputs(self))
        return out

    def section(self, name: str) -> FormatSection | None:
        """Format `name`'s section: as given, or its defaults (None for a format without one)."""
        return DATA_FORMATS.get(name).options(self)


# Each registered format with a section adds it as an optional field `data.<name>` (None until given).
DataConfig = create_model(
    "DataConfig",
    __base__=_DataKeys,
    __module__=__name__,
    __doc__="The `data` section: the shared keys (`_DataKeys`) and each data format's own section.",
    **{
        name: (f.section | None, Field(None, description=f"data.format {name}'s own keys"))
        for name, f in DATA_FORMATS.items()
        if f.section is not None
    },
)


class ModelConfig(BaseModel):
    """A registry name plus the keyword arguments of its factory (any extra key is passed on)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    name: str = "ResNet18_U"

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class LossTerm(BaseModel):
    """One weighted term of the loss; extra keys are the loss's own arguments (e.g. pos_weight)."""

    model_config = ConfigDict(extra="allow")
    name: str
    weight: float = 1.0
    target: Literal["mask", "soft", "teacher"] | None = Field(
        None, description="batch key the term compares to; None: the loss's default"
    )


class AuxConfig(_Section):
    """The classify-then-segment segmenter with a classification head (`SegCls2D`, `Unet25DCls`): how its two outputs train."""

    cls_weight: float = Field(
        0.0, ge=0, description="weight of BCE on 'record has a contrail'; 0: head unused"
    )
    seg_on_positives_only: bool = Field(
        False, description="apply the segmentation loss to positive records only"
    )
    hard_mask_weight: float = Field(
        0.0, ge=0, description="weight of Dice on the mask from a hard-mask head (Unet25D, 3rd place)"
    )


class BoxesConfig(_Section):
    """Box adjustment (task boxes; Snapper, Williams et al., IUI 2024): the edge loss and how edge distributions become a box."""

    sigma: float = Field(
        1.0, gt=0, description="std of the Gaussian soft target around each true edge, in positions"
    )
    decode: Literal["expectation", "argmax"] = Field(
        "expectation", description="argmax or sub-pixel expectation"
    )
    window: int = Field(2, ge=0, description="positions either side of the peak in the expectation")
    refine_steps: int = Field(
        0, ge=0, description="inference: run the adjusted box through the model again this often"
    )


class OptimConfig(_Section):
    name: str = Field(
        "adamw",
        description="a registered optimiser: adamw, adam, radam, radam_lars_lookahead, sgd "
        "(segladder/optim.py)",
    )
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    momentum: float = Field(0.9, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    encoder_lr_mult: float = Field(1.0, gt=0, description="encoder LR = lr × this (differential LR)")
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    pct_start: float = Field(0.1, gt=0, lt=1, description="one-cycle warm-up fraction")
    final_div_factor: float = Field(
        1e4, gt=0, description="one-cycle: final LR = max LR / 25 / this (fastai: 4000)"
    )
    cycle_momentum: bool = Field(
        False, description="one-cycle: cycle β1 (Adam) or momentum (SGD) inversely to the LR"
    )
    momentum_range: tuple[float, float] = Field(
        (0.85, 0.95), description="one-cycle: (lowest, highest) β1 or momentum"
    )
    warmup_steps: int = Field(0, ge=0, description="cosine schedule warm-up steps")
    min_lr_ratio: float = Field(0.01, ge=0, le=1)


class TrainerConfig(_Section):
    """Handed to Lightning's Trainer (first block) or used by segladder around it (second block)."""

    max_epochs: int = Field(2, ge=1)
    max_steps: int = -1
    precision: Literal["32", "32-true", "16-mixed", "bf16-mixed"] = "32"
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    strategy: str = Field(
        "auto", description="auto, ddp (find_unused_parameters off), ddp_spawn, ... (docs/scale-out.md)"
    )
    num_nodes: int = Field(1, ge=1)
    sync_batchnorm: bool = Field(
        False, description="BatchNorm statistics over all processes (small per-device batches)"
    )
    find_unused_parameters: bool = Field(
        False, description="DDP: only for models with parameters a step may not use"
    )
    accumulate_grad_batches: int = Field(1, ge=1)
    gradient_clip_val: float | None = Field(
        None, description="clip gradients to this global norm (or value, see gradient_clip_algorithm)"
    )
    gradient_clip_algorithm: Literal["norm", "value"] = "norm"
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    val_check_interval: int | float | None = None
    log_every_n_steps: int = Field(10, ge=1)
    deterministic: bool = False

    channels_last: bool = False
    compile: bool = Field(False, description="torch.compile the model's forward (docs/training.md, Speed)")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile's mode when trainer.compile is true"
    )
    compile_dynamic: bool | None = Field(
        False,
        description="torch.compile's dynamic: false compiles for the shapes seen (a last short batch "
        "recompiles once), null lets torch decide",
    )
    cudnn_benchmark: bool = Field(
        True, description="let cuDNN time its kernels for each input shape (ignored when deterministic)"
    )
    nan_patience: int = Field(5, ge=1, description="stop after this many consecutive non-finite steps")
    overlays: int = Field(8, ge=0, description="validation records drawn as overlays each epoch")
    progress: bool = True
    wandb_project: str | None = Field(
        None, description="also log to Weights & Biases (needs wandb and WANDB_API_KEY)"
    )
    optimizer_state: Literal["all", "last"] = Field(
        "all",
        description="checkpoints holding the optimiser state: all, or only last.ckpt (best.ckpt then ~1/3 the size)",
    )
    init_from: str | None = Field(
        None,
        description="a segladder checkpoint whose model weights start this run (fine-tuning, as timm's "
        "--initial-checkpoint); the optimiser, schedule and epochs start afresh",
    )


class DistillConfig(_Section):
    """Knowledge distillation (task: distillation; Hinton et al. 2015, arXiv:1503.02531): the teacher, the loss weights and the schedules."""

    teacher: str | None = Field(None, description="a segladder checkpoint (best.ckpt) of the frozen teacher")
    temperature_start: float = Field(4.0, gt=0, description="KD temperature at the start of training")
    temperature_end: float = Field(1.0, gt=0, description="KD temperature at the end (cosine in between)")
    schedule: Literal["epoch", "step"] = Field(
        "epoch", description="the temperature changes per epoch or per step"
    )
    alpha: float = Field(0.3, ge=0, description="weight of the KD term T²·KL(T)")
    beta: float = Field(0.5, ge=0, description="weight of MSE between student and teacher probabilities")
    gamma: float = Field(0.5, ge=0, description="weight of BCE against the mask")
    delta: float = Field(1.0, ge=0, description="weight of Dice against the mask")
    unfreeze_start_epoch: int = Field(
        5, ge=0, description="the student's encoder is frozen for this many epochs"
    )
    unfreeze_every: int = Field(
        3, ge=1, description="then one encoder block is unfrozen every this many epochs"
    )
    encoder_lr_scale: float = Field(
        0.3, gt=0, description="unfrozen encoder blocks train at this × the decoder LR"
    )
    cache_teacher_logits: bool = Field(
        False,
        description="keep the teacher's logits per record (fp16, in memory) after their first pass; "
        "needs data.augment off, since augmented inputs change every epoch",
    )


class ExperimentConfig(_Section):
    """A whole run's configuration, as `config.yaml` holds it: the task, data, model, losses and training."""

    name: str = "experiment"
    task: str = Field(
        "segmentation",
        description="a registered task (segladder/tasks/): segmentation, classification, boxes, distillation",
    )
    seed: int = 42
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: list[LossTerm] = Field(default_factory=lambda: [LossTerm(name="bce")])
    aux: AuxConfig = Field(default_factory=AuxConfig)
    boxes: BoxesConfig = Field(default_factory=BoxesConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)

    @field_validator("loss")
    @classmethod
    def _some_loss(cls, v: list[LossTerm]) -> list[LossTerm]:
        if not v:
            raise ValueError("at least one loss term is needed, e.g. [{name: bce}]")
        return v


# ------------------------------------------------------------------------------------------ loading


def nearest_keys(key: str, valid: list[str], nested: list[str] | None = None) -> str:
    """' Did you mean: ...?' among `valid` and `nested` (dotted keys of sub-sections), else the valid keys."""
    return suggest(key, [*valid, *(nested or [])]) or f" Valid keys: {', '.join(valid)}."


def _format_keys(section: type[BaseModel]) -> list[str]:
    """The format sections' keys as `coco.crop_size` where `section` is `data`, else none.

    A key written at the top of `data` that belongs to a format is then suggested where it lives.
    """
    if not issubclass(section, _DataKeys):
        return []
    return [
        f"{n}.{k}" for n, f in DATA_FORMATS.items() if f.section is not None for k in f.section.model_fields
    ]


def explain(
    exc: ValidationError, source: str, root: type[BaseModel], overrides: list[str] | None = None
) -> ConfigError:
    """One readable ConfigError for a pydantic failure: unknown keys get the nearest valid keys.

    A problem with a value given as `--set KEY=VALUE` (in `overrides`; for a check of a whole section, a
    key inside it) is blamed on that `--set`; when every problem is one, the error is one line.
    """
    given = {moved_data_key(p.split("=", 1)[0].strip()): p for p in overrides or [] if "=" in p}
    lines, from_set = [], []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            section = _section_model(root, err["loc"][:-1])
            hint = (
                nearest_keys(str(err["loc"][-1]), list(section.model_fields), _format_keys(section))
                if section
                else ""
            )
            line = f"unknown key '{loc}'.{hint}"
        else:
            line = f"{loc or '(top level)'}: {err['msg']} (got {err.get('input')!r})"
        pair = given.get(loc) or next((p for k, p in given.items() if loc and k.startswith(loc + ".")), None)
        if pair is not None:
            reason = line if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
            from_set.append(f"--set {pair}: {reason}")
        lines.append(line)
    if from_set and len(from_set) == len(lines):
        return ConfigError("; ".join(from_set))
    return ConfigError(f"invalid {source}:\n  " + "\n  ".join(lines))


def _section_model(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model at `loc` below `model`, looking through list[...] and Optional[...] fields."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        found = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not found:
            return None
        model = found[0]
    return model


def read_yaml(path: str | Path, what: str, sections: str) -> dict:
    """A YAML file whose top level is a mapping; clear errors for a missing file, bad YAML or a non-mapping."""
    path = Path(path)
    if not path.is_file():
        shipped = (
            sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
            if what == "config" and CONFIG_DIR.is_dir()
            else []
        )
        hint = f" Shipped configs: {', '.join(shipped)}." if shipped else ""
        raise ConfigError(f"{what} file {path} does not exist.{hint}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with {sections}.")
    return data


def parse_overrides(pairs: list[str], schema: type[BaseModel] | None = None) -> dict[str, Any]:
    """['optim.lr=3e-4', 'data.root=2023'] → nested dict, each value typed by the field it sets.

    A value for a field of type str (a path, a name) is kept as written, so `data.root=2023` or
    `data.root=off` is a folder, not a number or a boolean; every other value is read as YAML.
    """
    schema = schema or ExperimentConfig
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set '{pair}': expected KEY=VALUE, e.g. optim.lr=3e-4.")
        key, raw = pair.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if raw in ("", "null", "~"):
            value = None
        elif _is_text_field(schema, (moved_data_key(key) if schema is ExperimentConfig else key).split(".")):
            value = raw
        else:
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise ConfigError(f"--set '{pair}': value is not valid YAML ({exc}).") from None
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set '{pair}': '{p}' is set twice, once as a value.")
        node[parts[-1]] = value
    return out


def _is_text_field(schema: type[BaseModel], parts: list[str]) -> bool:
    """Whether the dotted key names a str field or a choice of strings (`Literal["32", ...]`), maybe `| None`.

    `trainer.precision=32` is then the choice "32", not the number 32.
    """
    section = _section_model(schema, tuple(parts[:-1]))
    field = section.model_fields.get(parts[-1]) if section is not None else None
    if field is None:
        return False
    ann = field.annotation
    union = typing.get_origin(ann) in (typing.Union, types.UnionType)
    kinds = set()
    for a in typing.get_args(ann) if union else (ann,):
        if a is type(None):
            continue
        if typing.get_origin(a) is Literal:
            kinds |= {type(v) for v in typing.get_args(a)}
        else:
            kinds.add(a)
    return kinds == {str}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_config(
    data: dict, overrides: list[str] | None = None, source: str = "(dict)", values: dict | None = None
) -> ExperimentConfig:
    """Validate a config dict, `--set` overrides and typed `values` (in that order) into an ExperimentConfig.

    `values` is how commands pass their options (e.g. `{"data": {"root": path}}`): typed, never re-parsed.
    Errors come as one readable ConfigError.
    """
    layers = [dict(data or {}), parse_overrides(overrides or []), _plain(values or {})]
    merged = _merge(_merge(layers[0], layers[1]), layers[2])
    # Moved keys move within each layer before the layers merge, so an old-style `--set data.crop_size=64`
    # overrides a file's data.coco.crop_size; one warning names every moved key.
    fmt = merged.get("data", {}).get("format") if isinstance(merged.get("data"), dict) else None
    moved: list[tuple[str, str]] = []
    for layer in layers:
        if isinstance(layer.get("data"), dict):
            layer["data"], more = migrate_data_keys(layer["data"], fmt)
            moved += more
    warn_moved(moved)
    merged = _merge(_merge(layers[0], layers[1]), layers[2])
    try:
        return ExperimentConfig.model_validate(merged)
    except ValidationError as exc:
        raise explain(exc, f"config {source}", ExperimentConfig, overrides) from None


def load_config(
    path: str | Path | None, overrides: list[str] | None = None, values: dict | None = None
) -> ExperimentConfig:
    """Read a YAML experiment (or the defaults when `path` is None), then apply `--set` overrides and `values`."""
    data: dict = {}
    if path is not None:
        data = read_yaml(path, "config", "data/model/loss/optim/trainer")
        data.setdefault("name", Path(path).stem)
    return build_config(data, overrides, str(path or "(defaults)"), values)


def _plain(values: dict) -> dict:
    """Typed command-line values as config data: paths become strings, nested dicts stay dicts."""
    return {
        k: _plain(v) if isinstance(v, dict) else str(v) if isinstance(v, Path) else v
        for k, v in values.items()
    }


def resolve_config_path(name_or_path: str) -> Path:
    """A path as given, or the name of a shipped config (`resnet18_u` → configs/resnet18_u.yaml)."""
    p = Path(name_or_path)
    if p.exists() or p.suffix:
        return p
    return CONFIG_DIR / f"{name_or_path}.yaml"


CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)

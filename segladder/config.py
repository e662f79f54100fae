"""Typed experiment config: YAML files in configs/, dotted `--set` overrides, clear errors on bad keys."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from segladder.errors import ConfigError
from segladder.registry import suggest


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Prob = Field(default=0.0, ge=0.0, le=1.0)


class AugmentConfig(BaseModel):
    """Probabilities and strengths of each augmentation; everything is off by default.

    Flips are separate switches because seed 002 found they hurt the competition masks, which are
    shifted by half a pixel relative to the images (domain-facts §5).
    """

    model_config = ConfigDict(extra="forbid")

    hflip_p: float = Prob
    vflip_p: float = Prob
    rot90_p: float = Prob
    shift_scale_rotate_p: float = Prob
    shift_limit: float = Field(0.0625, ge=0.0, le=0.5)
    scale_limit: float = Field(0.1, ge=0.0, le=0.9)
    rotate_limit: float = Field(15.0, ge=0.0, le=180.0)
    keep_ratio: bool = Field(
        False, description="one scale for both axes, as ShiftScaleRotate in albumentations 1.x"
    )
    resized_crop_p: float = Field(
        0.0, ge=0.0, le=1.0, description="RandomResizedCrop back to the sample's size, after the affine"
    )
    resized_crop_scale: tuple[float, float] = Field((0.75, 1.0), description="area fraction kept")
    resized_crop_ratio: tuple[float, float] = Field((0.9, 1 / 0.9), description="aspect ratio of the crop")
    brightness_p: float = Prob
    brightness_limit: float = Field(0.1, ge=0.0, le=1.0)
    contrast_limit: float = Field(0.1, ge=0.0, le=1.0)
    gamma_p: float = Prob
    gamma_limit: tuple[float, float] = (80.0, 120.0)
    blur_p: float = Prob
    blur_limit: tuple[int, int] = (3, 5)
    # The 2nd-place pipeline (domain-facts §5) draws one of two photometric and one of two blur transforms.
    gamma_or_brightness_p: float = Field(
        0.0, ge=0.0, le=1.0, description="OneOf(RandomGamma, RandomBrightnessContrast)"
    )
    motion_or_gaussian_blur_p: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="OneOf(MotionBlur, GaussianBlur with sigma tied to the kernel as albumentations 1.x)",
    )
    noise_p: float = Prob
    noise_std: tuple[float, float] = (0.01, 0.03)
    cutout_p: float = Prob
    cutout_holes: tuple[int, int] = (1, 8)
    cutout_size: tuple[float, float] = (0.03, 0.1)
    preset: Literal["none", "heavy"] = Field(
        "none",
        description="heavy: seed 004's photometric set for RGB images (flip, colour jitter, weather, blur, noise)",
    )
    crop_size: int | None = Field(
        None,
        ge=8,
        description="train on square crops of this side at native resolution (thin contrails keep their "
        "pixels while a step costs (crop / image)² of a whole one); validation and prediction see whole images",
    )
    crop_positive_share: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="with crop_size: the share of crops placed over contrail pixels where a record has any "
        "(CropNonEmptyMaskIfExists); the rest anywhere (RandomCrop)",
    )

    @model_validator(mode="after")
    def _ranges(self) -> AugmentConfig:
        for name in (
            "gamma_limit",
            "blur_limit",
            "noise_std",
            "cutout_holes",
            "cutout_size",
            "resized_crop_scale",
            "resized_crop_ratio",
        ):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: the low end {lo} is above the high end {hi}")
        if not 0 < self.resized_crop_scale[0] <= self.resized_crop_scale[1] <= 1:
            raise ValueError(
                f"resized_crop_scale: expected 0 < low <= high <= 1, got {self.resized_crop_scale}"
            )
        if self.resized_crop_ratio[0] <= 0:
            raise ValueError(f"resized_crop_ratio: expected positive ratios, got {self.resized_crop_ratio}")
        default_share = type(self).model_fields["crop_positive_share"].default
        if self.crop_size is None and self.crop_positive_share != default_share:
            # It would be silently unused: only crops are placed over contrails. (Stored configs hold every
            # key, so a share left at its default is not taken as set.)
            raise ValueError(
                "data.augment.crop_positive_share is set but data.augment.crop_size is not, so no crops are "
                "taken and the share would be unused; set data.augment.crop_size=N too, or drop "
                "data.augment.crop_positive_share"
            )
        return self

    @property
    def enabled(self) -> bool:
        return (
            self.preset != "none"
            or self.crop_size is not None
            or any(v > 0 for k, v in self.model_dump().items() if k.endswith("_p"))
        )

    @property
    def uses_gamma(self) -> bool:
        """Whether RandomGamma may run: it needs inputs in [0, 1]."""
        return self.gamma_p > 0 or self.gamma_or_brightness_p > 0


DataFormat = Literal[
    "auto", "contrails", "coco", "images"
]  # one value per data module branch in training/build.py


class DataConfig(_Section):
    """Where samples come from and how they are batched."""

    format: DataFormat = Field(
        "auto",
        description="contrails layout/cache, coco boxes, or images: RGB image/mask folders "
        "ROOT/{train,val}/{images,masks}/; auto: coco when data.train is set, images when "
        "ROOT/train/images exists, else contrails",
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
        False, description="train on records with a contrail only (seed 001 stage 2)"
    )
    normalize_ash: bool = False
    skip_bad: bool = False
    pseudo_labels: str | None = Field(
        None, description="folder from `segladder pseudo-label`: its split joins training"
    )
    pseudo_threshold: float = Field(0.5, gt=0, lt=1, description="pseudo mask = pseudo soft label > this")
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    # Boxes (data.format coco, task boxes): COCO detection files and their image folder.
    images: str | None = Field(None, description="image folder of the COCO files")
    train: str | None = Field(None, description="COCO detection JSON of the training boxes")
    val: str | None = Field(None, description="COCO detection JSON of the validation boxes")
    crop_size: int = Field(224, ge=16, description="side of the crop around a rough box (box adjustment)")
    buffer_ratio: float = Field(
        1.1, ge=1.0, le=4.0, description="the crop is the rough box enlarged by this (seed 003: 1.1)"
    )

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

    @property
    def resolved_format(self) -> str:
        """`format`, with auto read as coco when COCO files are given, images when `root` holds image/mask
        folders (`train/images` or `val/images`), and contrails otherwise."""
        if self.format != "auto":
            return self.format
        if self.train is not None or self.val is not None:
            return "coco"
        if self.root is not None and any(
            (Path(self.root) / s / "images").is_dir() for s in ("train", "val", "validation")
        ):
            return "images"
        return "contrails"


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
    """Seed 001's segmenter with a classification head (`SegCls2D`, `Unet25DCls`): how its two outputs train."""

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
    """Box adjustment (task boxes, seed 003): the edge loss and how edge distributions become a box."""

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
    """Knowledge distillation (task: distillation, seed 004): the teacher, the loss weights and the schedules."""

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


def nearest_keys(key: str, valid: list[str]) -> str:
    return suggest(key, valid) or f" Valid keys: {', '.join(valid)}."


def explain(
    exc: ValidationError, source: str, root: type[BaseModel], overrides: list[str] | None = None
) -> ConfigError:
    """One readable ConfigError for a pydantic failure: unknown keys get the nearest valid keys.

    A problem with a value given as `--set KEY=VALUE` (in `overrides`; for a check of a whole section, a
    key inside it) is blamed on that `--set`; when every problem is one, the error is one line.
    """
    given = {p.split("=", 1)[0].strip(): p for p in overrides or [] if "=" in p}
    lines, from_set = [], []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            section = _section_model(root, err["loc"][:-1])
            hint = nearest_keys(str(err["loc"][-1]), list(section.model_fields)) if section else ""
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
        parts = key.strip().split(".")
        if raw in ("", "null", "~"):
            value = None
        elif _is_text_field(schema, parts):
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
    """Whether the dotted key names a field whose type is str or a choice of strings (`Literal["32", ...]`),
    optionally `| None`, in `schema`: `trainer.precision=32` is the choice "32", not the number 32."""
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
    merged = _merge(_merge(data or {}, parse_overrides(overrides or [])), _plain(values or {}))
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

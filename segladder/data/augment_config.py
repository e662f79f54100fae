"""The `data.augment` section: which augmentations run and how strongly (pydantic only, no albumentations).

It sits below both `segladder.config` (which holds it as `DataConfig.augment`) and `data/transforms.py`
(which builds the albumentations pipeline from it), so the data layer needs no import of the config.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Prob = Field(default=0.0, ge=0.0, le=1.0)


class AugmentConfig(BaseModel):
    """Probabilities and strengths of each augmentation; everything is off by default.

    Flips are separate switches: they hurt on the competition masks, which are offset by half a pixel from
    the images (the 2nd-place recipe, github.com/DrHB/2nd-place-contrails, trains without flips; the 1st
    place trained on soft labels shifted by 0.5 px).
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
    # The 2nd-place pipeline (github.com/DrHB/2nd-place-contrails) draws one of two photometric and one of
    # two blur transforms.
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
        description="heavy: the B3→B0 distillation recipe's photometric set for RGB images (flip, colour jitter, "
        "weather, blur, noise)",
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
        """Whether any augmentation runs: a preset, a crop, or some transform with a probability above 0."""
        return (
            self.preset != "none"
            or self.crop_size is not None
            or any(v > 0 for k, v in self.model_dump().items() if k.endswith("_p"))
        )

    @property
    def uses_gamma(self) -> bool:
        """Whether RandomGamma may run: it needs inputs in [0, 1]."""
        return self.gamma_p > 0 or self.gamma_or_brightness_p > 0

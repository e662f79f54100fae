"""Augmentation through albumentations, applied identically to every frame and to the masks."""

from __future__ import annotations

import cv2
import numpy as np

from segladder.data.albu import A
from segladder.data.augment_config import AugmentConfig
from segladder.data.images import heavy_transforms
from segladder.errors import DataError


def build_augment(cfg: AugmentConfig | None, rgb: bool = False, size: int | None = None) -> A.Compose | None:
    """The albumentations pipeline for `cfg`, or None when every probability is zero.

    `preset: heavy` (the B3→B0 distillation recipe's set: colour jitter, rain/fog/sun flare) needs RGB
    images, so it is refused unless `rgb` says the pipeline will see (H, W, 3) uint8 images (the image/mask
    folders). `size` is the side of the samples the pipeline sees; `resized_crop_p` resizes its crops back
    to it.
    """
    if cfg is None or not cfg.enabled:
        return None
    t = [transform for step in _AUGMENT_STEPS for transform in step(cfg, rgb, size)]
    return A.Compose(t, additional_targets={"soft": "mask"})


# One function per group of augment options, in the order their transforms run; each returns its
# transforms (none when its probabilities are zero) and refuses options the samples cannot take.


def _crop(cfg: AugmentConfig, rgb: bool, size: int | None) -> list:
    if cfg.crop_size is None:
        return []
    side = cfg.crop_size
    if size is not None and side > size:
        raise DataError(
            f"data.augment.crop_size is {side} but the samples are {size}×{size}: give a crop no larger "
            "than data.image_size."
        )
    share = cfg.crop_positive_share
    return [  # first, so every later transform works on the crop only
        A.OneOf(
            [
                A.CropNonEmptyMaskIfExists(height=side, width=side, p=share),
                A.RandomCrop(height=side, width=side, p=1.0 - share),
            ],
            p=1.0,
        )
    ]


def _heavy(cfg: AugmentConfig, rgb: bool, size: int | None) -> list:
    if cfg.preset != "heavy":
        return []
    if not rgb:
        raise DataError(
            "augment.preset heavy is a photometric set for RGB image folders (data.format images); "
            "for contrail bands use the augment.*_p options."
        )
    return list(heavy_transforms())


def _flips(cfg: AugmentConfig, rgb: bool, size: int | None) -> list:
    t = []
    if cfg.hflip_p:
        t.append(A.HorizontalFlip(p=cfg.hflip_p))
    if cfg.vflip_p:
        t.append(A.VerticalFlip(p=cfg.vflip_p))
    if cfg.rot90_p:
        t.append(A.RandomRotate90(p=cfg.rot90_p))
    return t


def _affine(cfg: AugmentConfig, rgb: bool, size: int | None) -> list:
    if not cfg.shift_scale_rotate_p:
        return []
    return [
        A.Affine(
            translate_percent=(-cfg.shift_limit, cfg.shift_limit),
            scale=(1 - cfg.scale_limit, 1 + cfg.scale_limit),
            rotate=(-cfg.rotate_limit, cfg.rotate_limit),
            keep_ratio=cfg.keep_ratio,
            border_mode=cv2.BORDER_REFLECT_101,
            p=cfg.shift_scale_rotate_p,
        )
    ]


def _resized_crop(cfg: AugmentConfig, rgb: bool, size: int | None) -> list:
    if not cfg.resized_crop_p:
        return []
    if size is None:
        raise DataError("augment.resized_crop_p needs the sample size (build_augment(..., size=N))")
    return [
        A.RandomResizedCrop(
            size=(size, size),
            scale=cfg.resized_crop_scale,
            ratio=cfg.resized_crop_ratio,
            p=cfg.resized_crop_p,
        )
    ]


def _photometric(cfg: AugmentConfig, rgb: bool, size: int | None) -> list:
    t = []
    if cfg.brightness_p:
        t.append(A.RandomBrightnessContrast(cfg.brightness_limit, cfg.contrast_limit, p=cfg.brightness_p))
    if cfg.gamma_p:
        t.append(A.RandomGamma(gamma_limit=cfg.gamma_limit, p=cfg.gamma_p))
    if cfg.blur_p:
        t.append(A.GaussianBlur(blur_limit=cfg.blur_limit, p=cfg.blur_p))
    if cfg.gamma_or_brightness_p:
        t.append(
            A.OneOf(
                [
                    A.RandomGamma(gamma_limit=cfg.gamma_limit, p=1.0),
                    A.RandomBrightnessContrast(cfg.brightness_limit, cfg.contrast_limit, p=1.0),
                ],
                p=cfg.gamma_or_brightness_p,
            )
        )
    if cfg.motion_or_gaussian_blur_p:
        t.append(
            A.OneOf(
                [A.MotionBlur(blur_limit=cfg.blur_limit, p=1.0), tied_gaussian_blur(cfg.blur_limit)],
                p=cfg.motion_or_gaussian_blur_p,
            )
        )
    return t


def _noise_and_cutout(cfg: AugmentConfig, rgb: bool, size: int | None) -> list:
    t = []
    if cfg.noise_p:
        t.append(A.GaussNoise(std_range=cfg.noise_std, p=cfg.noise_p))
    if cfg.cutout_p:
        t.append(
            A.CoarseDropout(
                num_holes_range=cfg.cutout_holes,
                hole_height_range=cfg.cutout_size,
                hole_width_range=cfg.cutout_size,
                fill=0.0,
                p=cfg.cutout_p,
            )
        )
    return t


_AUGMENT_STEPS = (_crop, _heavy, _flips, _affine, _resized_crop, _photometric, _noise_and_cutout)


def tied_gaussian_blur(blur_limit: tuple[int, int]) -> A.OneOf:
    """GaussianBlur as albumentations 1.x ran it (the 2nd place's `A.GaussianBlur()`): kernel and sigma tied.

    1.x drew k from range(lo, hi + 1) and moved an even k to k + 1 (for 3–7: k 3, 5, 7 with chances 1, 2
    and 2 in 5), and passed sigma 0 to OpenCV, which then takes 0.3·((k − 1)/2 − 1) + 0.8 (0.8 / 1.1 / 1.4).
    2.x draws sigma on its own, so here each kernel is one fixed blur, weighted as 1.x drew it.
    """
    lo, hi = blur_limit
    draws = [k if k % 2 else (k + 1) % (hi + 1) for k in range(lo, hi + 1)]
    kernels = sorted({k for k in draws if k > 0})
    return A.OneOf(
        [
            A.GaussianBlur(blur_limit=(k, k), sigma_limit=(sigma, sigma), p=draws.count(k) / len(draws))
            for k in kernels
            for sigma in [round(0.3 * ((k - 1) * 0.5 - 1) + 0.8, 6)]
        ],
        p=1.0,
    )


def augment(
    aug: A.Compose,
    image: np.ndarray,
    mask: np.ndarray | None,
    soft: np.ndarray | None,
    dtype: type | None = np.float32,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Apply one random draw of `aug` to a (C, T, H, W) image and its (H, W) masks.

    Frames and channels are packed into one (H, W, T·C) image so that a single draw moves every frame
    and the masks together. The image comes back as `dtype` (None: as albumentations returns it).
    """
    c, t, h, w = image.shape
    packed = np.ascontiguousarray(image.transpose(2, 3, 1, 0).reshape(h, w, t * c))
    kwargs: dict[str, np.ndarray] = {"image": packed}
    if mask is not None:
        kwargs["mask"] = mask
    if soft is not None:
        kwargs["soft"] = soft
    out = aug(**kwargs)
    img = out["image"]
    oh, ow = img.shape[:2]
    image = np.ascontiguousarray(img.reshape(oh, ow, t, c).transpose(3, 2, 0, 1), dtype=dtype)
    return image, out.get("mask"), out.get("soft")

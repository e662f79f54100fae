"""RGB image/mask folders, `ROOT/{train,val}/{images,masks}/` with the same file stems, as contrail-shaped samples."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from segladder.data.albu import A
from segladder.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_VALUES = (0, 1, 255)
# Images are standardised with ImageNet's statistics, which is what pretrained timm encoders expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The competition says "validation", the usual image-folder layout says "val": either name finds the other.
_SPLIT_ALIASES = {"validation": "val", "val": "validation"}


def is_image_folder(root: str | Path) -> bool:
    """Whether `root` holds the image/mask layout (a `train/images` or `val/images` folder)."""
    root = Path(root)
    return any((root / split / "images").is_dir() for split in ("train", "val", "validation", "test"))


def split_dir(root: str | Path, split: str) -> Path:
    """`ROOT/split`, or its alias (validation ↔ val); a DataError listing the splits there when neither exists."""
    root = Path(root)
    for name in (split, _SPLIT_ALIASES.get(split)):
        if name and (root / name / "images").is_dir():
            return root / name
    found = sorted(p.name for p in root.iterdir() if (p / "images").is_dir()) if root.is_dir() else []
    raise DataError(
        f"{root}: no split '{split}' (expected {root / split / 'images'}/); splits found: "
        f"{', '.join(found) or 'none'}."
    )


@dataclass(frozen=True)
class ImagePair:
    """An image and its mask (None where the split has none), sharing the file stem `stem`."""

    stem: str
    image: Path
    mask: Path | None


def discover_pairs(root: str | Path, split: str, need_masks: bool = True) -> list[ImagePair]:
    """The split's images, sorted by stem, each with its mask `masks/<stem>.png` (a DataError names a missing one)."""
    folder = split_dir(root, split)
    images = sorted(p for p in (folder / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"{folder / 'images'}: no images ({', '.join(IMAGE_SUFFIXES)}).")
    masks: dict[str, Path] = {}
    if (folder / "masks").is_dir():
        for p in sorted((folder / "masks").iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES and (p.stem not in masks or p.suffix.lower() == ".png"):
                masks[p.stem] = p
    pairs = [ImagePair(p.stem, p, masks.get(p.stem)) for p in images]
    if need_masks:
        missing = [p for p in pairs if p.mask is None]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DataError(
                f"{missing[0].image}: no mask {folder / 'masks' / (missing[0].stem + '.png')}{more}; "
                "every image needs a mask with the same stem (PNG, 0/255 or 0/1)."
            )
    return pairs


def read_image(path: Path) -> np.ndarray:
    """An (H, W, 3) uint8 RGB image (grey and RGBA converted); a DataError naming the file when it cannot be read."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable image ({exc}).") from None


def read_mask(path: Path, image_path: Path, image_shape: tuple[int, int]) -> np.ndarray:
    """An (H, W) uint8 0/1 mask from a 0/255 or 0/1 PNG; DataErrors name the file for size or value problems."""
    try:
        with Image.open(path) as im:
            mask = np.asarray(im.convert("L") if im.mode in ("RGB", "RGBA", "LA", "P") else im)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable mask ({exc}).") from None
    if mask.shape[:2] != tuple(image_shape):
        raise DataError(
            f"{path}: mask is {mask.shape[1]}×{mask.shape[0]} but its image {image_path.name} is "
            f"{image_shape[1]}×{image_shape[0]}; masks must have their image's size."
        )
    values = np.unique(mask)
    bad = [int(v) for v in values if int(v) not in MASK_VALUES]
    if bad:
        raise DataError(
            f"{path}: mask values {bad[:5]} outside {{0, 1, 255}}; masks are binary PNGs (0/255 or 0/1)."
        )
    return (mask > 0).astype(np.uint8)


def check_pair(pair: ImagePair) -> str | None:
    """Why `pair` cannot be read (unreadable file, size mismatch, mask values), or None when it can."""
    try:
        image = read_image(pair.image)
        if pair.mask is not None:
            read_mask(pair.mask, pair.image, image.shape[:2])
    except DataError as exc:
        return str(exc)
    return None


def heavy_transforms() -> list[A.BasicTransform]:
    """The "heavy" photometric set for RGB images (uint8 HWC), from the B3→B0 distillation recipe."""
    return [
        A.HorizontalFlip(p=0.5),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.0, hue=0.0),
        A.RandomBrightnessContrast(p=0.8),
        A.OneOf([A.RandomRain(), A.RandomFog(), A.RandomSunFlare()], p=0.1),
        A.GaussianBlur(p=0.05),
        A.GaussNoise(p=0.05),
    ]


def check_image_options(extra: dict) -> None:
    """Options of the contrails reader that image folders cannot honour, refused by name."""
    if getattr(extra.get("labels"), "pseudo", None) is not None:
        raise ConfigError(
            "data.pseudo_labels works with the contrails layout only, not with image/mask folders."
        )

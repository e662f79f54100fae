"""Boxes in COCO format: reading and checking, the paper's jitter, and the crop geometry of box adjustment.

Boxes are class-agnostic; `iscrowd` annotations are skipped. A box is `(x, y, w, h)` in image pixels as in
COCO, with edges at x (left), y (top), x + w (right) and y + h (bottom) in continuous coordinates (a pixel
i spans [i, i + 1)). A crop is the rough box enlarged by `buffer_ratio` about its centre, resized to
`crop_size`² (padded with zeros outside the image); edge positions inside it are continuous crop
coordinates in [0, crop_size], and `to_image` is the exact inverse of `to_crop`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from segladder.errors import DataError

# The Snapper paper's jitter (Williams et al., IUI 2024; Kobamiyannnn/reproduct_snapper `src/config.py`):
# centre moved by up to 10% of each side, each side scaled in [0.9, 1.1].
JITTER_SHIFT = 0.1
JITTER_SCALE = (0.9, 1.1)
EDGES = ("left", "top", "right", "bottom")  # the order of edges in every (…, 4) array and model output
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True)
class BoxRecord:
    """One ground-truth box: its annotation id, its image and the box `(x, y, w, h)` in image pixels."""

    ann_id: int
    image_id: int
    file_name: str
    width: int
    height: int
    box: tuple[float, float, float, float]


# --------------------------------------------------------------------------------------------- reading


def load_json(path: str | Path, what: str = "COCO file") -> dict | list:
    """A JSON file, with one clear error for a missing file or malformed JSON."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{path}: malformed JSON ({exc}); give a COCO detection file "
            "({'images': [...], 'annotations': [...]})."
        ) from None


def read_coco(
    path: str | Path, images: str | Path | None = None, check_inside: bool = True
) -> list[BoxRecord]:
    """The non-crowd boxes of a COCO detection file, checked; `images` (a folder) also checks every image exists.

    `check_inside=False` accepts boxes reaching outside their image (rough boxes from `boxes jitter` may).

    Raises a DataError naming the file and the image or annotation id for: malformed JSON or records,
    an annotation of an unknown image, a missing image file, a zero-size box or a box outside its image.
    """
    path = Path(path)
    coco = load_json(path)
    if (
        not isinstance(coco, dict)
        or not isinstance(coco.get("images"), list)
        or not isinstance(coco.get("annotations"), list)
    ):
        raise DataError(
            f"{path}: not a COCO detection file (expected an object with 'images' and 'annotations' lists)."
        )
    imgs: dict[int, dict] = {}
    for i, im in enumerate(coco["images"]):
        try:
            imgs[int(im["id"])] = {
                "file_name": str(im["file_name"]),
                "width": int(im["width"]),
                "height": int(im["height"]),
            }
        except (KeyError, TypeError, ValueError):
            raise DataError(
                f"{path}: images[{i}] needs 'id', 'file_name', 'width' and 'height' (got {_short(im)})."
            ) from None
    if images is not None:
        folder = Path(images)
        if not folder.is_dir():
            raise DataError(f"image folder {folder} does not exist (set data.images / --images).")
        for iid, im in imgs.items():
            if not (folder / im["file_name"]).is_file():
                raise DataError(f"{path}: image id {iid}: file {folder / im['file_name']} does not exist.")
    out: list[BoxRecord] = []
    for i, ann in enumerate(coco["annotations"]):
        try:
            aid, iid = int(ann["id"]), int(ann["image_id"])
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            raise DataError(
                f"{path}: annotations[{i}] needs 'id', 'image_id' and 'bbox' [x, y, w, h] "
                f"(got {_short(ann)})."
            ) from None
        if ann.get("iscrowd", 0):
            continue
        if iid not in imgs:
            raise DataError(
                f"{path}: annotation id {aid} refers to image id {iid}, which is not in 'images'."
            )
        im = imgs[iid]
        check_box(path, aid, (x, y, w, h), im["width"], im["height"], inside=check_inside)
        out.append(BoxRecord(aid, iid, im["file_name"], im["width"], im["height"], (x, y, w, h)))
    if not out:
        raise DataError(f"{path}: no boxes (every annotation is missing or iscrowd).")
    return out


def check_box(
    path: str | Path,
    ann_id: int,
    box: Sequence[float],
    width: int,
    height: int,
    tol: float = 0.5,
    inside: bool = True,
) -> None:
    """A DataError for a zero-size box or one outside its image (by more than `tol` pixels, for float rounding)."""
    x, y, w, h = box
    if not all(np.isfinite(box)):
        raise DataError(f"{path}: annotation id {ann_id}: bbox {list(box)} is not finite.")
    if w <= 0 or h <= 0:
        raise DataError(
            f"{path}: annotation id {ann_id}: zero-size box {list(box)} (width and height must be > 0); "
            "remove the annotation."
        )
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        # Even a rough box must overlap its image: there is nothing in the crop to snap to.
        raise DataError(
            f"{path}: annotation id {ann_id}: box {list(box)} lies wholly outside its {width}×{height} image; "
            "fix its coordinates (COCO's [x, y, width, height] in pixels) or remove it."
        )
    if inside and (x < -tol or y < -tol or x + w > width + tol or y + h > height + tol):
        raise DataError(
            f"{path}: annotation id {ann_id}: box {list(box)} lies outside its {width}×{height} image; "
            "clip it to the image or remove it."
        )


def read_boxes(path: str | Path) -> dict[int, tuple[float, float, float, float]]:
    """Boxes by annotation id from a COCO file or a JSON list of {"id", "bbox"} records (e.g. `boxes adjust` output)."""
    path = Path(path)
    data = load_json(path, "boxes file")
    anns = data.get("annotations") if isinstance(data, dict) else data
    if not isinstance(anns, list):
        raise DataError(
            f"{path}: expected a COCO file or a list of {{'id': ..., 'bbox': [x, y, w, h]}} records."
        )
    out: dict[int, tuple[float, float, float, float]] = {}
    for i, ann in enumerate(anns):
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
            out[int(ann["id"])] = (x, y, w, h)
        except (KeyError, TypeError, ValueError):
            raise DataError(
                f"{path}: record {i} needs 'id' (the ground truth's annotation id) and 'bbox' [x, y, w, h] "
                f"(got {_short(ann)})."
            ) from None
    return out


def write_boxes(
    path: str | Path,
    template: str | Path,
    boxes: dict[int, Sequence[float]],
    extra: dict[int, dict] | None = None,
) -> None:
    """The COCO file `template` with each annotation's bbox replaced by `boxes[id]` (others dropped), written atomically."""
    from segladder.io import atomic_write_json

    coco = load_json(template)
    anns = []
    for ann in coco["annotations"]:
        aid = int(ann["id"])
        if aid in boxes:
            anns.append(
                {**ann, "bbox": [round(float(v), 4) for v in boxes[aid]], **(extra or {}).get(aid, {})}
            )
    atomic_write_json(path, {**coco, "annotations": anns})


def _short(obj: object, n: int = 80) -> str:
    text = json.dumps(obj, default=str)
    return text if len(text) <= n else text[: n - 3] + "..."


# ---------------------------------------------------------------------------------------------- jitter


def jitter_box(box: Sequence[float], rng: np.random.Generator) -> tuple[float, float, float, float]:
    """The paper's rough box: centre moved by up to 10% of each side, width and height scaled in [0.9, 1.1]."""
    x, y, w, h = box
    dx, dy = rng.uniform(-JITTER_SHIFT, JITTER_SHIFT, 2)
    sw, sh = rng.uniform(*JITTER_SCALE, 2)
    cx, cy = x + w / 2 + dx * w, y + h / 2 + dy * h
    nw, nh = w * sw, h * sh
    return (float(cx - nw / 2), float(cy - nh / 2), float(nw), float(nh))


def eval_rng(seed: int, ann_id: int) -> np.random.Generator:
    """The generator of one annotation's evaluation jitter: the same box for the same (seed, id), in any order."""
    return np.random.default_rng([int(seed), int(ann_id) & 0xFFFFFFFF])


def jitter_records(records: Iterable[BoxRecord], seed: int) -> dict[int, tuple[float, float, float, float]]:
    """Seeded rough boxes by annotation id (what `boxes jitter` writes and validation uses)."""
    return {r.ann_id: jitter_box(r.box, eval_rng(seed, r.ann_id)) for r in records}


# -------------------------------------------------------------------------------------------- geometry


def xywh_to_xyxy(box: Sequence[float]) -> np.ndarray:
    """An (x, y, w, h) box as an [x0, y0, x1, y1] float64 array."""
    x, y, w, h = box
    return np.array([x, y, x + w, y + h], np.float64)


def xyxy_to_xywh(box: Sequence[float]) -> tuple[float, float, float, float]:
    """An (x0, y0, x1, y1) box as (x, y, w, h) floats."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return (x0, y0, x1 - x0, y1 - y0)


def crop_region(rough: Sequence[float], buffer_ratio: float) -> np.ndarray:
    """(x0, y0, x1, y1) of the crop around the rough box `(x, y, w, h)`: enlarged by `buffer_ratio` about its centre."""
    x, y, w, h = rough
    cx, cy = x + w / 2, y + h / 2
    hw, hh = w * buffer_ratio / 2, h * buffer_ratio / 2
    return np.array([cx - hw, cy - hh, cx + hw, cy + hh], np.float64)


def to_crop(xyxy, region, crop_size: int):
    """Edges (…, 4) (left, top, right, bottom) in image pixels → continuous crop coordinates of the crop `region`.

    Works on numpy arrays and torch tensors alike (float64 keeps the round trip exact to ~1e-12 px).
    """
    lo, hi = region[..., [0, 1, 0, 1]], region[..., [2, 3, 2, 3]]
    return (xyxy - lo) * crop_size / (hi - lo)


def to_image(edges, region, crop_size: int):
    """The inverse of `to_crop`: crop coordinates (…, 4) → image pixels."""
    lo, hi = region[..., [0, 1, 0, 1]], region[..., [2, 3, 2, 3]]
    return edges * (hi - lo) / crop_size + lo


def crop_image(image: Image.Image, region: Sequence[float], crop_size: int) -> np.ndarray:
    """The (crop_size, crop_size, 3) uint8 crop of `region` (x0, y0, x1, y1), zeros outside the image.

    PIL's EXTENT transform samples output pixel i at x0 + (i + 0.5)·(x1 − x0)/crop_size, the same
    continuous mapping as `to_crop`, so edges and pixels stay aligned.
    """
    out = image.transform(
        (crop_size, crop_size),
        Image.Transform.EXTENT,
        data=tuple(float(v) for v in region),
        resample=Image.Resampling.BILINEAR,
        fillcolor=(0, 0, 0),
    )
    return np.asarray(out, np.uint8)


def normalise(crop: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 → (3, H, W) float32 with ImageNet statistics (what timm encoders were trained on)."""
    return ((crop.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy()


def open_image(path: str | Path) -> Image.Image:
    """An image file as RGB, with a DataError naming the file when it cannot be read."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as exc:
        raise DataError(f"image {path} cannot be read ({exc}).") from None

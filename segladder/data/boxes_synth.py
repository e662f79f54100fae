"""A synthetic COCO box set: textured backgrounds, varied shapes with exact boxes, some touching or overlapping."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from segladder.errors import DataError
from segladder.io import atomic_write_json
from segladder.progress import progress_bar

SHAPES = ("rectangle", "ellipse", "triangle", "polygon")
MIN_SIZE = 16


@dataclass
class BoxSynthResult:
    """What `write_box_synth` wrote: the folders, the COCO files, and boxes per split."""

    root: Path
    images: Path
    train: Path
    val: Path
    boxes: dict[str, int]


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float background: a colour gradient, smooth blobs and stripes, plus pixel noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(0.2, 0.8, 3)
    grad = rng.uniform(-0.3, 0.3, (2, 3))
    img = base + xx[..., None] * grad[0] + yy[..., None] * grad[1]
    coarse = rng.normal(0, 0.15, (size // 16 + 2, size // 16 + 2, 3))
    blobs = (
        np.asarray(
            Image.fromarray(((coarse - coarse.min()) / np.ptp(coarse) * 255).astype(np.uint8)).resize(
                (size, size), Image.Resampling.BICUBIC
            ),
            np.float32,
        )
        / 255.0
        - 0.5
    )
    img = img + 0.3 * blobs
    if rng.random() < 0.5:
        angle, freq = rng.uniform(0, np.pi), rng.uniform(4, 16)
        img = img + 0.08 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)))[..., None]
    img = img + rng.normal(0, 0.04, img.shape)
    return np.clip(img, 0, 1)


def _shape_mask(rng: np.random.Generator, size: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """A bool mask of one random shape filling the integer box (x0, y0, x1, y1) (exclusive ends) on at least one row/column each side."""
    x0, y0, x1, y1 = box
    kind = SHAPES[rng.integers(len(SHAPES))]
    im = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(im)
    # PIL's ends are inclusive: a shape drawn in [x0, x1 - 1] covers the pixels x0 … x1 - 1.
    if kind == "rectangle":
        d.rectangle([x0, y0, x1 - 1, y1 - 1], fill=255)
    elif kind == "ellipse":
        d.ellipse([x0, y0, x1 - 1, y1 - 1], fill=255)
    elif kind == "triangle":
        apex = int(rng.integers(x0, x1))
        d.polygon([(apex, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=255)
    else:
        pts = [
            (x0, int(rng.integers(y0, y1))),
            (int(rng.integers(x0, x1)), y0),
            (x1 - 1, int(rng.integers(y0, y1))),
            (int(rng.integers(x0, x1)), y1 - 1),
        ]
        d.polygon(pts, fill=255)
    return np.asarray(im) > 0


def _exact_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """The tight COCO box (x, y, w, h) of a mask's pixels, or None when it has none."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return (float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1))


def synth_image(rng: np.random.Generator, size: int, max_objects: int = 4) -> tuple[np.ndarray, list[tuple]]:
    """One (size, size, 3) uint8 image and the exact boxes of its visible shapes (drawn in order, later on top)."""
    img = _texture(rng, size)
    visible = np.zeros((size, size), np.int32) - 1
    placed: list[tuple[int, int, int, int]] = []
    colours = []
    for k in range(int(rng.integers(1, max_objects + 1))):
        w, h = (int(v) for v in rng.integers(size // 8, size // 2, 2))
        if placed and rng.random() < 0.3:  # touching the previous shape on its right or bottom side
            px0, py0, px1, py1 = placed[-1]
            x0, y0 = (
                (px1, int(rng.integers(max(0, py0 - h // 2), py1)))
                if rng.random() < 0.5
                else (int(rng.integers(max(0, px0 - w // 2), px1)), py1)
            )
        else:
            x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        x0, y0 = min(x0, size - w), min(y0, size - h)
        box = (x0, y0, x0 + w, y0 + h)
        mask = _shape_mask(rng, size, box)
        visible[mask] = k
        placed.append(box)
        colour = rng.uniform(0, 1, 3)
        shade = rng.uniform(0.7, 1.0) + 0.15 * _texture(rng, size)[..., :1] - 0.075
        img = np.where(mask[..., None], np.clip(colour * shade, 0, 1), img)
        colours.append(colour)
    boxes = []
    for k in range(len(placed)):
        box = _exact_box(visible == k)
        if box is not None and box[2] >= 4 and box[3] >= 4:
            boxes.append(box)
    return (img * 255).round().astype(np.uint8), boxes


def write_box_synth(
    out: str | Path,
    n_train: int = 200,
    n_val: int = 50,
    size: int = 128,
    seed: int = 0,
    max_objects: int = 4,
    progress: bool = True,
) -> BoxSynthResult:
    """Write `out/images/*.png`, `out/train.json` and `out/val.json` (COCO detection, one category 'object')."""
    if size < MIN_SIZE:
        raise DataError(
            f"--size {size}: synthetic box images need at least {MIN_SIZE} px a side (shapes span 1/8 to 1/2 "
            f"of it and a box needs 4 px); use --size {MIN_SIZE} or more (128 by default)."
        )
    if n_train + n_val == 0:
        raise DataError("--train 0 --val 0: nothing to write; give --train N and/or --val N (N ≥ 1).")
    out = Path(out)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    counts = {}
    ann_id = 1
    bar = progress_bar(disable=not progress)
    task = bar.add_task("writing synthetic boxes", total=n_train + n_val)
    with bar:
        for split, n, first in (("train", n_train, 0), ("val", n_val, n_train)):
            ann_id = _write_split(
                out, split, n, first, size, seed, max_objects, rng, ann_id, counts, lambda: bar.advance(task)
            )
    return BoxSynthResult(out, images, out / "train.json", out / "val.json", counts)


def _write_split(
    out: Path,
    split: str,
    n: int,
    first: int,
    size: int,
    seed: int,
    max_objects: int,
    rng: np.random.Generator,
    ann_id: int,
    counts: dict,
    advance,
) -> int:
    """Write one split's images and COCO file; returns the next free annotation id."""
    images = out / "images"
    coco = {
        "info": {"description": f"segladder synthetic boxes ({split}, seed {seed})"},
        "categories": [{"id": 1, "name": "object"}],
        "images": [],
        "annotations": [],
    }
    for i in range(first, first + n):
        img, boxes = synth_image(rng, size, max_objects)
        name = f"{i:06d}.png"
        Image.fromarray(img).save(images / name)
        advance()
        coco["images"].append({"id": i + 1, "file_name": name, "width": size, "height": size})
        for b in boxes:
            coco["annotations"].append(
                {
                    "id": ann_id,
                    "image_id": i + 1,
                    "category_id": 1,
                    "bbox": list(b),
                    "area": b[2] * b[3],
                    "iscrowd": 0,
                }
            )
            ann_id += 1
    atomic_write_json(out / f"{split}.json", coco)
    counts[split] = len(coco["annotations"])
    return ann_id

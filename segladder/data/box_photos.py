"""A small COCO box set of real photographs: scikit-image's bundled photos with hand-written boxes.

Six photographs that ship with scikit-image (`skimage.data`, no download), with boxes of the objects in
them written by hand (checked drawn on the photo; the coins were traced from their edges and checked the
same way). Each photo is written at several scales and as four corner crops at each scale, keeping the
boxes that lie wholly inside; boxes scale with the image exactly (per axis), so the set multiplies without
new labelling. The photos are split by photo, so validation and test boxes are on photographs training
never saw:

- train: coins (24 coins), rocket (the rocket and four towers)
- val: astronaut (head, mission patch, name badge, helmet, shuttle model, flag), coffee (cup, saucer,
  spoon, handle)
- test: camera (head, camera, tripod, tower), chelsea (two eyes, nose)

Boxes are hand-made: an edge may be off by a pixel or two, most on soft edges (hair, fur, a blurred
background), which caps how close any model can get.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from segladder.errors import DataError
from segladder.io import atomic_write_json

# (x, y, w, h) in the photo's own pixels, edges at pixel borders (a box from x to x + w).
PHOTOS: dict[str, tuple[str, list[tuple[str, tuple[float, float, float, float]]]]] = {
    "coins": (
        "train",
        [
            (f"coin {i + 1}", b)
            for i, b in enumerate(
                [
                    (22, 34, 45, 41),
                    (80, 39, 41, 36),
                    (131, 28, 49, 46),
                    (192, 29, 48, 45),
                    (255, 33, 42, 40),
                    (304, 15, 61, 58),
                    (24, 104, 43, 42),
                    (84, 107, 38, 38),
                    (133, 109, 41, 36),
                    (185, 105, 42, 40),
                    (245, 95, 52, 49),
                    (317, 105, 40, 40),
                    (25, 178, 38, 39),
                    (80, 174, 45, 44),
                    (135, 179, 40, 39),
                    (188, 170, 49, 47),
                    (250, 172, 48, 48),
                    (315, 156, 65, 62),
                    (18, 232, 57, 56),
                    (92, 244, 44, 44),
                    (143, 236, 59, 52),
                    (219, 240, 51, 48),
                    (275, 239, 52, 50),
                    (335, 247, 47, 42),
                ]
            )
        ],
    ),
    "rocket": (
        "train",
        [
            ("rocket", (306, 126, 30, 282)),
            ("left tower", (0, 0, 90, 427)),
            ("left mast", (162, 123, 45, 300)),
            ("right mast", (437, 123, 42, 300)),
            ("right tower", (558, 0, 82, 427)),
        ],
    ),
    "astronaut": (
        "val",
        [
            ("head", (153, 14, 149, 162)),
            ("mission patch", (135, 349, 74, 73)),
            ("name badge", (280, 340, 49, 36)),
            ("helmet", (277, 343, 235, 169)),
            ("shuttle model", (355, 0, 116, 290)),
            ("flag", (0, 2, 96, 510)),
        ],
    ),
    "coffee": (
        "val",
        [
            ("cup", (173, 17, 236, 264)),
            ("saucer", (76, 72, 404, 317)),
            ("spoon", (326, 66, 98, 260)),
            ("handle", (195, 232, 62, 76)),
        ],
    ),
    "camera": (
        "test",
        [
            ("head", (154, 65, 117, 127)),
            ("camera", (252, 138, 73, 50)),
            ("tripod", (229, 186, 179, 324)),
            ("tower", (411, 117, 22, 76)),
        ],
    ),
    "chelsea": (
        "test",
        [
            ("left eye", (133, 83, 78, 64)),
            ("right eye", (292, 110, 52, 54)),
            ("nose", (230, 222, 63, 46)),
        ],
    ),
}
SPLITS = ("train", "val", "test")
CROP_FRACTION = 0.75  # the four corner crops keep this fraction of each side
MIN_BOX = 8  # px: smaller boxes (after scaling) are dropped


@dataclass
class BoxPhotosResult:
    """What `write_box_photos` wrote: the folders, the COCO files, and boxes and images per split."""

    root: Path
    images: Path
    train: Path
    val: Path
    test: Path
    boxes: dict[str, int]
    images_written: dict[str, int]


def load_photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 of one of scikit-image's bundled photos (grey ones as three equal channels)."""
    try:
        import skimage.data
    except ModuleNotFoundError:
        raise DataError(
            "the photo set is built from scikit-image's bundled photographs: pip install scikit-image "
            "(or pip install -e '.[dev]')."
        ) from None
    im = np.asarray(getattr(skimage.data, name)())
    if im.ndim == 2:
        im = np.stack([im] * 3, -1)
    return np.ascontiguousarray(im[..., :3]).astype(np.uint8)


def photo_variants(
    image: np.ndarray, boxes: list[tuple[str, tuple]], scales: tuple[float, ...], crops: bool
) -> list[tuple[str, np.ndarray, list[tuple[str, tuple[float, ...]]]]]:
    """(suffix, image, boxes) for each scale and (with `crops`) each corner crop of a photo.

    A variant keeps the boxes wholly inside it and at least `MIN_BOX` px a side, in its own pixels.
    """
    h0, w0 = image.shape[:2]
    out = []
    for s in scales:
        w, h = max(1, round(w0 * s)), max(1, round(h0 * s))
        sx, sy = w / w0, h / h0  # exact per axis: the box scales as the pixels do
        scaled = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.LANCZOS))
        sboxes = [(n, (x * sx, y * sy, bw * sx, bh * sy)) for n, (x, y, bw, bh) in boxes]
        windows = [("full", 0, 0, w, h)]
        if crops:
            cw, ch = round(w * CROP_FRACTION), round(h * CROP_FRACTION)
            windows += [
                (corner, x0, y0, x0 + cw, y0 + ch)
                for corner, x0, y0 in (
                    ("nw", 0, 0),
                    ("ne", w - cw, 0),
                    ("sw", 0, h - ch),
                    ("se", w - cw, h - ch),
                )
            ]
        for corner, x0, y0, x1, y1 in windows:
            kept = [
                (n, (x - x0, y - y0, bw, bh))
                for n, (x, y, bw, bh) in sboxes
                if x >= x0 and y >= y0 and x + bw <= x1 and y + bh <= y1 and min(bw, bh) >= MIN_BOX
            ]
            if kept:
                out.append((f"s{round(100 * s):03d}_{corner}", scaled[y0:y1, x0:x1], kept))
    return out


def write_box_photos(
    out: str | Path, scales: tuple[float, ...] = (1.0, 0.75, 0.5), crops: bool = True
) -> BoxPhotosResult:
    """Write a COCO box set from `PHOTOS` at `scales`, with corner crops when `crops`.

    Writes `out/images/*.png` and `out/{train,val,test}.json` (COCO detection, one category 'object', each
    annotation with its object's `name`).
    """
    scales = tuple(float(s) for s in scales)
    if not scales or any(not 0.05 <= s <= 4 for s in scales):
        raise DataError(
            f"--scales {','.join(f'{s:g}' for s in scales)}: give scales in [0.05, 4], e.g. 1,0.75,0.5."
        )
    out = Path(out)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    cocos = {
        split: {
            "info": {
                "description": f"segladder photo boxes ({split}): scikit-image's photographs, hand-written boxes"
            },
            "categories": [{"id": 1, "name": "object"}],
            "images": [],
            "annotations": [],
        }
        for split in SPLITS
    }
    image_id, ann_id = 1, 1
    for name, (split, boxes) in PHOTOS.items():
        for suffix, im, kept in photo_variants(load_photo(name), boxes, scales, crops):
            file_name = f"{name}_{suffix}.png"
            Image.fromarray(im).save(images / file_name)
            coco = cocos[split]
            coco["images"].append(
                {"id": image_id, "file_name": file_name, "width": im.shape[1], "height": im.shape[0]}
            )
            for label, (x, y, w, h) in kept:
                box = [round(float(v), 4) for v in (x, y, w, h)]
                coco["annotations"].append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": 1,
                        "bbox": box,
                        "area": round(box[2] * box[3], 4),
                        "iscrowd": 0,
                        "name": f"{name}: {label}",
                    }
                )
                ann_id += 1
            image_id += 1
    for split, coco in cocos.items():
        atomic_write_json(out / f"{split}.json", coco)
    return BoxPhotosResult(
        out,
        images,
        out / "train.json",
        out / "val.json",
        out / "test.json",
        {s: len(c["annotations"]) for s, c in cocos.items()},
        {s: len(c["images"]) for s, c in cocos.items()},
    )

"""The real-photograph box set: scikit-image's photos with hand-written boxes, as COCO the reader accepts."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("skimage")

from segladder.data.box_photos import PHOTOS, write_box_photos  # noqa: E402
from segladder.data.boxes import read_coco  # noqa: E402


def test_box_photos_are_valid_coco_split_by_photo(tmp_path):
    r = write_box_photos(tmp_path / "p", scales=(0.25,), crops=True)
    photos = {}
    for split, path in (("train", r.train), ("val", r.val), ("test", r.test)):
        records = read_coco(path, r.images)  # checks every image exists and every box lies inside it
        assert records and r.boxes[split] == len(records)
        photos[split] = {rec.file_name.split("_s")[0] for rec in records}
        assert photos[split] == {name for name, (s, _) in PHOTOS.items() if s == split}
        ids = [a["id"] for a in json.loads(path.read_text())["annotations"]]
        assert len(ids) == len(set(ids))
    assert not (photos["train"] & photos["val"]) and not (photos["val"] & photos["test"])


def test_box_photos_boxes_scale_with_the_image(tmp_path):
    r = write_box_photos(tmp_path / "p", scales=(0.5,), crops=False)
    coco = json.loads(r.train.read_text())
    coins = next(im for im in coco["images"] if im["file_name"] == "coins_s050_full.png")
    sx, sy = coins["width"] / 384, coins["height"] / 303  # skimage's coins photo is 384 × 303
    first = next(a for a in coco["annotations"] if a["image_id"] == coins["id"])
    x, y, w, h = PHOTOS["coins"][1][0][1]
    assert first["bbox"] == pytest.approx([x * sx, y * sy, w * sx, h * sy], abs=1e-4)
    assert first["name"] == "coins: coin 1"

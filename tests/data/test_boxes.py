"""COCO box reading and its errors, the paper's jitter, crop geometry round trips, crops, the synthetic set."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from segladder.data.box_datasets import BoxCrops, BoxesDataModule
from segladder.data.boxes import (
    JITTER_SCALE,
    JITTER_SHIFT,
    crop_image,
    crop_region,
    eval_rng,
    jitter_box,
    jitter_records,
    read_boxes,
    read_coco,
    to_crop,
    to_image,
    xywh_to_xyxy,
)
from segladder.data.boxes_synth import write_box_synth
from segladder.errors import DataError


def write_coco(tmp_path, annotations, images=None, name="gt.json", make_files=True):
    images = images if images is not None else [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}]
    (tmp_path / "images").mkdir(exist_ok=True)
    if make_files:
        for im in images:
            Image.new("RGB", (im["width"], im["height"])).save(tmp_path / "images" / im["file_name"])
    path = tmp_path / name
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def ann(aid, bbox, image_id=1, **extra):
    return {"id": aid, "image_id": image_id, "category_id": 1, "bbox": bbox, **extra}


# ------------------------------------------------------------------------------------------- reading


def test_reads_boxes_class_agnostic_and_skips_crowd(tmp_path):
    path = write_coco(
        tmp_path,
        [
            ann(7, [1, 2, 10, 5]),
            ann(8, [0, 0, 40, 30], iscrowd=1),
            {**ann(9, [5, 5, 3, 3]), "category_id": 42},
        ],
    )
    records = read_coco(path, tmp_path / "images")
    assert [(r.ann_id, r.box, r.file_name, r.width, r.height) for r in records] == [
        (7, (1.0, 2.0, 10.0, 5.0), "a.png", 40, 30),
        (9, (5.0, 5.0, 3.0, 3.0), "a.png", 40, 30),
    ]


@pytest.mark.parametrize(
    "anns, make_files, message",
    [
        ([ann(3, [1, 1, 0, 5])], True, "gt.json: annotation id 3: zero-size box"),
        ([ann(4, [35, 1, 10, 5])], True, "gt.json: annotation id 4: box .* outside its 40×30 image"),
        ([ann(5, [1, 1, 5, 5], image_id=99)], True, "annotation id 5 refers to image id 99"),
        ([{"id": 6, "image_id": 1}], True, r"annotations\[0\] needs 'id', 'image_id' and 'bbox'"),
        ([ann(2, [1, 1, 5, 5])], False, "gt.json: image id 1: file .*a.png does not exist"),
    ],
)
def test_bad_input_names_the_file_and_id(tmp_path, anns, make_files, message):
    path = write_coco(tmp_path, anns, make_files=make_files)
    with pytest.raises(DataError, match=message):
        read_coco(path, tmp_path / "images")


def test_malformed_json_and_wrong_shape_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json: malformed JSON"):
        read_coco(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(DataError, match="bad.json: not a COCO detection file"):
        read_coco(bad)
    with pytest.raises(DataError, match="does not exist"):
        read_coco(tmp_path / "missing.json")
    with pytest.raises(DataError, match=r"record 0 needs 'id'"):
        bad.write_text(json.dumps([{"bbox": [1, 2, 3, 4]}]))
        read_boxes(bad)


def test_rough_boxes_may_reach_outside_the_image(tmp_path):
    path = write_coco(tmp_path, [ann(1, [-2, -1, 10, 5])])
    with pytest.raises(DataError, match="outside"):
        read_coco(path)
    assert read_coco(path, check_inside=False)[0].box == (-2.0, -1.0, 10.0, 5.0)


# -------------------------------------------------------------------------------------------- jitter


def test_jitter_statistics_match_the_paper():
    rng = np.random.default_rng(0)
    box = (100.0, 50.0, 40.0, 20.0)
    rough = np.array([jitter_box(box, rng) for _ in range(4000)])
    cx = (rough[:, 0] + rough[:, 2] / 2 - 120) / 40
    cy = (rough[:, 1] + rough[:, 3] / 2 - 60) / 20
    sw, sh = rough[:, 2] / 40, rough[:, 3] / 20
    for shift in (cx, cy):
        assert np.abs(shift).max() <= JITTER_SHIFT + 1e-9 and np.abs(shift).max() > 0.98 * JITTER_SHIFT
        assert abs(shift.mean()) < 0.005 and abs(shift.std() - JITTER_SHIFT / np.sqrt(3)) < 0.003  # uniform
    for scale in (sw, sh):
        assert scale.min() >= JITTER_SCALE[0] - 1e-9 and scale.max() <= JITTER_SCALE[1] + 1e-9
        assert scale.min() < 0.905 and scale.max() > 1.095 and abs(scale.mean() - 1) < 0.005


def test_evaluation_jitter_is_seeded_per_annotation(tmp_path):
    path = write_coco(tmp_path, [ann(i, [2, 2, 20, 20]) for i in range(1, 6)])
    records = read_coco(path)
    a, b = jitter_records(records, seed=3), jitter_records(records[::-1], seed=3)
    assert a == b  # order does not matter
    assert a != jitter_records(records, seed=4)
    assert len(set(a.values())) == 5  # each annotation its own draw
    assert a[2] == jitter_box((2, 2, 20, 20), eval_rng(3, 2))


# ------------------------------------------------------------------------------------------ geometry


def test_box_to_crop_and_back_is_unchanged():
    rng = np.random.default_rng(1)
    boxes = rng.uniform(0, 500, (200, 2))
    boxes = np.concatenate([boxes, boxes + rng.uniform(1, 300, (200, 2))], 1)
    rough = np.array([jitter_box((b[0], b[1], b[2] - b[0], b[3] - b[1]), rng) for b in boxes])
    regions = np.stack([crop_region(r, 1.1) for r in rough])
    for size in (64, 224):
        crop = to_crop(boxes, regions, size)
        np.testing.assert_allclose(to_image(crop, regions, size), boxes, rtol=0, atol=1e-9)
        back = to_image(torch.from_numpy(crop), torch.from_numpy(regions), size)  # the same code on tensors
        np.testing.assert_allclose(back.numpy(), boxes, rtol=0, atol=1e-9)


def test_the_rough_box_sits_at_the_buffer_margin_of_its_crop():
    rough = (10.0, 20.0, 30.0, 40.0)
    region = crop_region(rough, 1.1)
    edges = to_crop(xywh_to_xyxy(rough), region, 110)
    np.testing.assert_allclose(edges, [5, 5, 105, 105], atol=1e-9)


def test_crop_pixels_line_up_with_crop_coordinates(tmp_path):
    img = np.zeros((60, 80, 3), np.uint8)
    img[15:35, 20:50] = 255  # a white box x 20..50, y 15..35
    true = np.array([20, 15, 50, 35], np.float64)
    region = crop_region((19.0, 14.0, 32.0, 22.0), 1.1)  # the true box lies inside the crop
    crop = crop_image(Image.fromarray(img), region, 64)
    target = to_crop(true, region, 64)
    cols, rows = np.nonzero(crop[..., 0].max(0) > 127)[0], np.nonzero(crop[..., 0].max(1) > 127)[0]
    # Bright pixel centres lie inside the true edges, the pixels beyond them are dark.
    assert abs(cols.min() - target[0]) <= 1 and abs(cols.max() + 1 - target[2]) <= 1
    assert abs(rows.min() - target[1]) <= 1 and abs(rows.max() + 1 - target[3]) <= 1


def test_crops_outside_the_image_are_padded_with_zeros():
    img = Image.fromarray(np.full((20, 20, 3), 200, np.uint8))
    crop = crop_image(img, np.array([-20.0, 0.0, 20.0, 20.0]), 40)
    assert crop[:, :18].max() == 0 and crop[:, 22:].min() == 200


def test_box_crops_items(tmp_path):
    path = write_coco(tmp_path, [ann(1, [5, 4, 20, 12]), ann(2, [1, 1, 8, 8])])
    records = read_coco(path, tmp_path / "images")
    ds = BoxCrops(records, tmp_path / "images", crop_size=32, buffer_ratio=1.1, jitter="fixed", seed=2)
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["ann_id"] == 1
    np.testing.assert_allclose(
        item["target"].numpy(), to_crop(item["true"].numpy(), item["region"].numpy(), 32), atol=1e-5
    )
    np.testing.assert_allclose(
        item["rough"].numpy(), xywh_to_xyxy(jitter_box((5, 4, 20, 12), eval_rng(2, 1)))
    )
    train = BoxCrops(records, tmp_path / "images", 32, 1.1, "random", seed=2)
    first = train[0]["rough"].clone()
    assert torch.equal(train[0]["rough"], first)  # a function of (seed, epoch, index)
    train.set_epoch(1)
    assert not torch.equal(train[0]["rough"], first)


def test_datamodule_needs_its_files(tmp_path):
    from segladder.config import DataConfig
    from segladder.errors import ConfigError

    data = DataConfig(format="coco", coco={"val": "v.json"})
    with pytest.raises(
        ConfigError, match=r"data\.coco\.images and data\.coco\.train: .*--set data\.coco\.images="
    ):
        BoxesDataModule(data, data.coco).setup("fit")


# ----------------------------------------------------------------------------------------- synthetic


def test_synthetic_set_is_valid_coco_with_overlapping_boxes(tmp_path):
    r = write_box_synth(tmp_path / "s", n_train=12, n_val=3, size=64, seed=5)
    train = read_coco(r.train, r.images)
    assert len(train) == r.boxes["train"] > 12 and len(read_coco(r.val, r.images)) == r.boxes["val"]
    assert not {x.image_id for x in train} & {x.image_id for x in read_coco(r.val)}
    by_image: dict[int, list] = {}
    for x in train:
        by_image.setdefault(x.image_id, []).append(xywh_to_xyxy(x.box))
    touching = 0
    for boxes in by_image.values():
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                touching += min(a[2], b[2]) >= max(a[0], b[0]) and min(a[3], b[3]) >= max(a[1], b[1])
    assert touching > 0
    again = write_box_synth(tmp_path / "t", n_train=12, n_val=3, size=64, seed=5)
    assert again.train.read_text() == r.train.read_text()

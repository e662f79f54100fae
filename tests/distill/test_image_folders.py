"""RGB image/mask folders: recognised from data.root, shaped like contrail samples, clear one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from segladder.config import DataConfig
from segladder.data.datasets import ImageMaskDataset, data_format, dataset_from_config
from segladder.data.module import ContrailsDataModule
from segladder.errors import DataError
from tests.distill.images import write_image_folder


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(tmp_path / "set", n_train=4, n_val=2)


def test_folder_is_recognised_and_items_look_like_contrail_samples(folder):
    cfg = DataConfig(root=str(folder), image_size=32)
    assert (
        data_format(cfg) == "images"
        and data_format(DataConfig(root=str(folder), format="contrails")) == "contrails"
    )
    ds = dataset_from_config(cfg, "validation")  # "validation" finds val/
    assert isinstance(ds, ImageMaskDataset) and len(ds) == 2
    item = ds[0]
    assert item["image"].shape == (3, 1, 32, 32) and item["mask"].shape == (1, 32, 32)
    assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0} and item["mask"].sum() > 0
    same = dataset_from_config(DataConfig(root=str(folder), image_size=40), "val")[0]
    raw = torch.from_numpy(
        np.asarray(Image.open(folder / "val" / "images" / "img000.png").convert("RGB")).copy()
    )
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    expected = (raw.permute(2, 0, 1).float() / 255 - mean[:, None, None]) / std[:, None, None]
    torch.testing.assert_close(
        same["image"][:, 0], expected
    )  # at its own size: exactly the pixels, standardised
    disc = same["image"][:, 0][:, same["mask"][0] > 0].mean(1)
    torch.testing.assert_close(disc, (torch.tensor([220, 200, 60]) / 255 - mean) / std)


def test_heavy_preset_augments_reproducibly_through_the_data_module(folder):
    cfg = DataConfig(
        root=str(folder), image_size=32, batch_size=2, num_workers=0, augment={"preset": "heavy"}
    )
    dm = ContrailsDataModule(cfg, seed=5)
    dm.setup("fit")
    a = dm.train_set[1]["image"]
    b = dm.train_set[1]["image"]
    plain = dataset_from_config(cfg, "train")[1]["image"]
    assert torch.equal(a, b)  # (seed, epoch, index) decide the draw
    dm.set_epoch(1)
    draws = [dm.train_set[1]["image"] for _ in range(1)] + [dm.train_set[i]["image"] for i in range(4)]
    assert any(not torch.equal(d, plain) for d in [a, *draws])


def test_heavy_preset_is_refused_on_contrail_bands(tmp_path):
    from segladder.config import AugmentConfig
    from segladder.data.transforms import build_augment

    with pytest.raises(DataError, match="preset heavy .*RGB image folders"):
        build_augment(AugmentConfig(preset="heavy"))


def _expect_one_line(folder, match):
    with pytest.raises(DataError) as err:
        ImageMaskDataset(folder, "train", image_size=32)
    msg = str(err.value)
    assert "\n" not in msg and err.match(match), msg


def test_missing_mask_names_the_image(folder):
    (folder / "train" / "masks" / "img002.png").unlink()
    _expect_one_line(folder, r"img002.png: no mask .*masks/img002.png")


def test_size_mismatch_names_the_mask(folder):
    Image.fromarray(np.zeros((20, 40), np.uint8)).save(folder / "train" / "masks" / "img001.png")
    _expect_one_line(folder, r"masks/img001.png: mask is 40×20 but its image img001.png is 40×40")


def test_unreadable_image_names_the_file(folder):
    (folder / "train" / "images" / "img003.png").write_bytes(b"not a png")
    _expect_one_line(folder, r"images/img003.png: unreadable image")


def test_mask_values_outside_0_1_255_name_the_mask(folder):
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(folder / "train" / "masks" / "img000.png")
    _expect_one_line(folder, r"masks/img000.png: mask values \[128\] outside \{0, 1, 255\}")


def test_jpg_images_with_0_1_masks_and_skip_bad(tmp_path):
    root = write_image_folder(tmp_path / "jpg", n_train=3, n_val=1, suffix=".jpg")
    Image.fromarray(np.ones((40, 40), np.uint8)).save(root / "train" / "masks" / "img000.png")  # 0/1 mask
    (root / "train" / "images" / "img001.jpg").write_bytes(b"broken")
    ds = ImageMaskDataset(root, "train", image_size=32, skip_bad=True)
    assert ds.record_ids == ["img000", "img002"] and ds[0]["mask"].min() == 1
    with pytest.raises(DataError, match="no split 'test'.*splits found: train, val"):
        ImageMaskDataset(root, "test")

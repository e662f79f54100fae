import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from segladder.data.datasets import ContrailsDataset
from segladder.data.transforms import AugmentConfig, augment, build_augment
from segladder.errors import DataError

SPATIAL = AugmentConfig(hflip_p=0.5, vflip_p=0.5, rot90_p=0.5, shift_scale_rotate_p=0.7, rotate_limit=30)


@st.composite
def masks(draw):
    size = draw(st.sampled_from([16, 24, 32]))
    mask = np.zeros((size, size), np.uint8)
    for _ in range(draw(st.integers(1, 4))):
        r0, c0 = draw(st.integers(0, size - 2)), draw(st.integers(0, size - 2))
        h, w = draw(st.integers(1, size // 2)), draw(st.integers(1, size // 2))
        mask[r0 : r0 + h, c0 : c0 + w] = 1
    return mask


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mask=masks(), seed=st.integers(0, 2**31 - 1))
def test_spatial_augmentation_moves_every_frame_and_the_masks_together(mask, seed):
    """Each frame and channel is the mask itself, so after any spatial draw they must still agree."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    aug = build_augment(SPATIAL)
    aug.set_random_seed(seed)
    image = np.broadcast_to(mask.astype(np.float32), (2, 3, *mask.shape)).copy()  # (C, T, H, W)
    soft = mask.astype(np.float32) * 0.5
    out, m, s = augment(aug, image, mask, soft)
    assert out.shape == image.shape and out.dtype == np.float32
    for c in range(2):
        for t in range(3):
            np.testing.assert_array_equal(out[c, t], out[0, 0])  # one draw for all frames
    # Where bilinear interpolation says "certainly inside/outside", the nearest-neighbour mask agrees.
    assert (m[out[0, 0] > 0.99] == 1).all()
    assert (m[out[0, 0] < 0.01] == 0).all()
    np.testing.assert_allclose(s, m * 0.5)  # the soft label travels with the mask


def test_pixel_transforms_leave_masks_alone():
    cfg = AugmentConfig(brightness_p=1, gamma_p=1, blur_p=1, noise_p=1, cutout_p=1)
    aug = build_augment(cfg)
    rng = np.random.default_rng(0)
    image = rng.random((3, 4, 32, 32), dtype=np.float32)
    mask = (rng.random((32, 32)) > 0.7).astype(np.uint8)
    out, m, _ = augment(aug, image, mask, None)
    assert out.shape == image.shape and not np.allclose(out, image)
    np.testing.assert_array_equal(m, mask)


def test_flips_off_by_default_and_config_is_validated():
    assert build_augment(AugmentConfig()) is None
    assert build_augment(None) is None
    with pytest.raises(ValidationError, match="hflip_q"):
        AugmentConfig(hflip_q=0.5)
    with pytest.raises(ValidationError):
        AugmentConfig(hflip_p=1.5)
    with pytest.raises(ValidationError, match="gamma_limit"):
        AugmentConfig(gamma_limit=(120, 80))


def test_dataset_applies_augmentation_with_aligned_masks(synth_root):
    ds = ContrailsDataset(
        synth_root, "train", frames=[3, 4], image_size=32, augment=AugmentConfig(hflip_p=1.0)
    )
    plain = ContrailsDataset(synth_root, "train", frames=[3, 4], image_size=32)
    for i in range(len(ds)):
        a, b = ds[i], plain[i]
        assert (a["image"] == b["image"].flip(-1)).all()
        assert (a["mask"] == b["mask"].flip(-1)).all()
        assert (a["soft"] == b["soft"].flip(-1)).all()
    with pytest.raises(DataError, match="gamma_p"):
        ContrailsDataset(synth_root, "train", channels=["ash", "bands"], augment=AugmentConfig(gamma_p=0.5))


def second_place_augment(**forced) -> AugmentConfig:
    from segladder.config import CONFIG_DIR, load_config

    cfg = load_config(CONFIG_DIR / "coat_ulstm.yaml").data.augment
    return cfg.model_copy(update=forced)


def test_second_place_pipeline_is_built_as_the_original():
    import albumentations as A

    steps = build_augment(second_place_augment()).transforms
    affine, color, blur = steps
    assert isinstance(affine, A.Affine) and affine.p == 0.75 and affine.keep_ratio
    assert affine.rotate == (-30, 30) and affine.scale == {"x": (0.8, 1.2), "y": (0.8, 1.2)}
    assert affine.translate_percent == {"x": (-0.2, 0.2), "y": (-0.2, 0.2)}
    assert isinstance(color, A.OneOf) and color.p == 0.5
    gamma, contrast = color.transforms
    assert isinstance(gamma, A.RandomGamma) and tuple(gamma.gamma_limit) == (50, 150)
    assert isinstance(contrast, A.RandomBrightnessContrast)
    assert tuple(contrast.brightness_limit) == (-0.1, 0.1) and tuple(contrast.contrast_limit) == (-0.2, 0.2)
    assert isinstance(blur, A.OneOf) and blur.p == 0.25
    motion, gaussian = blur.transforms
    assert isinstance(motion, A.MotionBlur) and tuple(motion.blur_limit) == (3, 7)
    assert motion.p == gaussian.p == 1.0  # MotionBlur or a Gaussian, even odds, as the original's OneOf
    assert isinstance(gaussian, A.OneOf)
    assert [(tuple(g.blur_limit), tuple(g.sigma_limit), g.p) for g in gaussian.transforms] == [
        ((3, 3), (0.8, 0.8), 0.2),
        ((5, 5), (1.1, 1.1), 0.4),
        ((7, 7), (1.4, 1.4), 0.4),
    ]


def test_gaussian_blur_ties_sigma_to_the_kernel_as_albumentations_1x():
    """Each draw is exactly one of OpenCV's (k, sigma) blurs, k 3 / 5 / 7 about 1 : 2 : 2 as 1.x drew it."""
    import albumentations as A
    import cv2

    from segladder.data.transforms import tied_gaussian_blur

    rng = np.random.default_rng(0)
    image = rng.random((33, 33, 2), dtype=np.float32)
    refs = {
        (k, sigma): cv2.GaussianBlur(image, (k, k), sigmaX=sigma, borderType=cv2.BORDER_REFLECT_101)
        for k, sigma in ((3, 0.8), (5, 1.1), (7, 1.4))
    }
    pipe = A.Compose([tied_gaussian_blur((3, 7))])
    pipe.set_random_seed(3)
    counts = dict.fromkeys(refs, 0)
    for _ in range(400):
        out = pipe(image=image)["image"]
        (hit,) = [key for key, ref in refs.items() if np.allclose(out, ref, atol=1e-5)]
        counts[hit] += 1
    assert 50 <= counts[(3, 0.8)] <= 110 and 125 <= counts[(5, 1.1)] <= 195 and 125 <= counts[(7, 1.4)] <= 195


def third_place_augment(**forced) -> AugmentConfig:
    from segladder.config import CONFIG_DIR, load_config

    cfg = load_config(CONFIG_DIR / "unet25d.yaml").data.augment
    assert load_config(CONFIG_DIR / "unet25d_wide.yaml").data.augment == cfg
    return cfg.model_copy(update=forced)


def test_third_place_pipeline_is_built_as_the_original():
    import albumentations as A

    hflip, vflip, rot90, affine, crop = build_augment(third_place_augment(), size=256).transforms
    assert isinstance(hflip, A.HorizontalFlip) and hflip.p == 0.1
    assert isinstance(vflip, A.VerticalFlip) and vflip.p == 0.1
    assert isinstance(rot90, A.RandomRotate90) and rot90.p == 0.4
    assert isinstance(affine, A.Affine) and affine.p == 0.3 and affine.keep_ratio  # ShiftScaleRotate
    assert affine.rotate == (-15, 15) and affine.scale == {"x": (0.9, 1.1), "y": (0.9, 1.1)}
    assert affine.translate_percent == {"x": (-0.05, 0.05), "y": (-0.05, 0.05)}
    assert isinstance(crop, A.RandomResizedCrop) and crop.p == 0.7 and tuple(crop.size) == (256, 256)
    assert tuple(crop.scale) == (0.75, 1.0) and crop.ratio == pytest.approx((0.9, 1 / 0.9))


def test_third_place_crop_zooms_in_and_keeps_frames_and_masks_together(synth_root):
    """The resized crop keeps 75–100 % of the area and comes back at the sample size, in the dataset too."""
    only_crop = third_place_augment(hflip_p=0, vflip_p=0, rot90_p=0, shift_scale_rotate_p=0, resized_crop_p=1)
    aug = build_augment(only_crop, size=64)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 1  # 1024 pixels
    areas = []
    for seed in range(20):
        aug.set_random_seed(seed)
        image = np.broadcast_to(mask.astype(np.float32), (2, 3, 64, 64)).copy()
        out, m, _ = augment(aug, image, mask, None)
        assert out.shape == image.shape and m.shape == mask.shape
        np.testing.assert_array_equal(out[1, 2], out[0, 0])
        areas.append(int(m.sum()))
    # A crop of area fraction f in [0.75, 1] magnifies the square by 1/f: 1024 to at most ~1365 pixels.
    assert min(areas) >= 1024 * 0.95 and max(areas) <= 1024 / 0.75 * 1.1 and max(areas) > 1100
    ds = ContrailsDataset(synth_root, "train", frames=[2, 3, 4], image_size=32, augment=third_place_augment())
    (crop,) = [t for t in ds.aug.transforms if type(t).__name__ == "RandomResizedCrop"]
    assert tuple(crop.size) == (32, 32) and ds[0]["image"].shape[-2:] == (32, 32)
    with pytest.raises(DataError, match="resized_crop_p needs the sample size"):
        build_augment(only_crop)


def test_second_place_pipeline_moves_every_frame_and_the_mask_together():
    """Every frame and channel starts as the mask; with every transform forced on, all must still agree
    with each other (one draw per sample), and well inside and outside the moved mask the image must keep
    its order (gamma and brightness/contrast are increasing maps, blurs reach at most a few pixels)."""
    import cv2

    def erode(region):
        return cv2.erode(region.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=8).astype(bool)

    aug = build_augment(
        second_place_augment(
            shift_scale_rotate_p=1.0, gamma_or_brightness_p=1.0, motion_or_gaussian_blur_p=1.0
        )
    )
    size = 64
    mask = np.zeros((size, size), np.uint8)
    mask[12:44, 20:48] = 1
    mask[50:54, 4:60] = 1
    checked = 0
    for seed in range(12):
        aug.set_random_seed(seed)
        image = np.broadcast_to(mask.astype(np.float32), (3, 5, size, size)).copy()  # (C, T, H, W)
        out, m, s = augment(aug, image, mask, mask.astype(np.float32) * 0.5)
        assert not np.isin(out, (0.0, 1.0)).all(), "the photometric transforms should have changed the values"
        for c in range(3):
            for t in range(5):
                np.testing.assert_array_equal(out[c, t], out[0, 0])
        np.testing.assert_array_equal(s, m * 0.5)
        inside = erode(m == 1)
        outside = erode(m == 0)
        if inside.any() and outside.any():
            assert out[0, 0][inside].min() > out[0, 0][outside].max(), seed
            checked += 1
    assert checked >= 8


def test_crops_cut_every_frame_and_the_masks_at_one_place_and_find_the_contrails():
    """A (C, T, H, W) image whose pixels encode their own row and column: a crop's pixels say where it was cut."""
    h, w, side = 40, 56, 16  # not square, so swapped axes show
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.stack([np.stack([rows, cols, rows + 1000 * t]) for t in range(2)], axis=1)  # (3, 2, H, W)
    mask = np.zeros((h, w), np.uint8)
    mask[30:32, 45:50] = 1  # one small contrail near a corner
    soft = mask * np.float32(0.75)
    positive = build_augment(AugmentConfig(crop_size=side, crop_positive_share=1.0))
    anywhere = build_augment(AugmentConfig(crop_size=side, crop_positive_share=0.0))
    hits = {"positive": 0, "anywhere": 0}
    for seed in range(30):
        for name, aug in (("positive", positive), ("anywhere", anywhere)):
            aug.set_random_seed(seed)
            out, m, s = augment(aug, image, mask, soft)
            assert out.shape == (3, 2, side, side)
            r0, c0 = int(out[0, 0, 0, 0]), int(out[1, 0, 0, 0])
            np.testing.assert_array_equal(out[0, 1], out[0, 0])  # the same cut for every frame
            np.testing.assert_array_equal(out[2, 1] - out[2, 0], 1000)
            np.testing.assert_array_equal(m, mask[r0 : r0 + side, c0 : c0 + side])
            np.testing.assert_array_equal(s, soft[r0 : r0 + side, c0 : c0 + side])
            hits[name] += int(m.any())
    assert hits["positive"] == 30 and hits["anywhere"] < 15
    with pytest.raises(DataError, match=r"crop_size is 64 but the samples are 32×32"):
        build_augment(AugmentConfig(crop_size=64), size=32)

"""Unet25D, the 3rd place's 2.5D UNet: size, Conv3d equivalence, frames t−2..t0, input resizing, two heads."""

import pytest
import torch
from torch import nn

from segladder import models
from segladder.config import build_config
from segladder.errors import ConfigError
from segladder.models.blocks import Conv3dCollapse, PairConv3d
from segladder.models.profile import count_parameters
from segladder.tasks.segmentation import SegmentationTask


def make(**kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("input_size", None)
    return models.create("Unet25D", **kwargs).eval()


def test_size_is_the_third_place_design_with_resnet18():
    with torch.device("meta"):
        assert count_parameters(models.create("Unet25D")) / 1e6 == pytest.approx(27.0, rel=0.01)


def test_pair_conv_is_a_conv3d_with_kernel_2_and_replicate_padding():
    torch.manual_seed(1)
    conv3d = nn.Conv3d(4, 6, (2, 3, 3), padding=(0, 1, 1), padding_mode="replicate")
    pair = PairConv3d(4, 6, 3)
    pair.from_conv3d(conv3d)
    x = torch.rand(2, 4, 3, 9, 7)  # (B, C, T, H, W)
    want = conv3d(x)  # (B, 6, 2, 9, 7): no temporal padding, T 3 -> 2
    got = pair(x.transpose(1, 2).flatten(0, 1), 3).view(2, 2, 6, 9, 7).transpose(1, 2)
    torch.testing.assert_close(got, want)


def test_collapse_takes_three_frames_to_one_as_the_conv3d_blocks_do():
    torch.manual_seed(2)
    blocks = nn.Sequential(
        *[
            m
            for _ in range(2)
            for m in (
                nn.Conv3d(5, 5, (2, 3, 3), padding=(0, 1, 1), padding_mode="replicate"),
                nn.BatchNorm3d(5),
                nn.LeakyReLU(),
            )
        ]
    )
    collapse = Conv3dCollapse(5)
    for i in range(2):
        collapse.convs[i].from_conv3d(blocks[3 * i])
    x = torch.rand(3, 5, 3, 8, 8)
    want = blocks(x).squeeze(2)  # training-mode BatchNorm: batch statistics on both sides
    torch.testing.assert_close(collapse(x.transpose(1, 2).flatten(0, 1), 3), want)


def test_only_frames_t_minus_2_to_t0_matter():
    model = make()
    x = torch.rand(1, 3, 5, 32, 32)
    with torch.no_grad():
        ref = model(x)
        for frame, matters in ((0, False), (1, False), (2, True), (4, True)):
            y = x.clone()
            y[:, :, frame] = torch.rand_like(y[:, :, frame])
            assert torch.allclose(model(y), ref) != matters, frame
        # frame_index=3 reads frames 1..3: the frame after the label changes nothing.
        model.frame_index = 3
        ref = model(x)
        y = x.clone()
        y[:, :, 4] = 0
        assert torch.allclose(model(y), ref)


def test_short_sequences_repeat_their_first_frame():
    model = make()
    frame = torch.rand(1, 3, 32, 32)
    two = torch.rand(1, 3, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(frame), model(frame[:, :, None].expand(-1, -1, 3, -1, -1)))
        torch.testing.assert_close(
            model(two), model(torch.stack([two[:, :, 0], two[:, :, 0], two[:, :, 1]], 2))
        )


@pytest.mark.medium
def test_frames_are_resized_to_input_size_and_logits_back():
    model = make(input_size=64)
    seen = []
    model.encoder.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        out = model(torch.rand(2, 3, 3, 40, 24))  # any size: the model resizes
    assert out.shape == (2, 1, 40, 24) and seen == [(6, 3, 64, 64)]
    with pytest.raises(models.ModelError, match="divisible by the encoder's stride 32"):
        models.create("Unet25D", input_size=100)
    with pytest.raises(models.ModelInputError, match="divisible by 32"):
        make()(torch.rand(1, 3, 3, 40, 40))  # input_size=None: the input itself must fit


@pytest.mark.medium
def test_hard_and_soft_heads():
    model = make()
    x = torch.rand(2, 3, 3, 32, 32)
    with torch.no_grad():
        out = model(x, aux=True)
        assert set(out) == {"mask", "hard"} and out["hard"].shape == out["mask"].shape == (2, 1, 32, 32)
        assert torch.equal(out["mask"], model(x)) and not torch.allclose(out["hard"], out["mask"])
    assert model.head[0].out_channels == 2 and make(hard_head=False).head[0].out_channels == 1


def test_unknown_options_are_refused():
    with pytest.raises(models.ModelError, match="fusion"):
        models.create("Unet25D", fusion="residual")  # segladder's earlier fusion is gone (docs/models.md)


@pytest.mark.medium
def test_task_trains_the_hard_head_with_dice_on_the_mask():
    cfg = build_config(
        {
            "model": {"name": "Unet25D", "input_size": None},
            "aux": {"hard_mask_weight": 1.0},
            "loss": [{"name": "soft_bce"}],
        }
    )
    task = SegmentationTask(cfg, make())
    batch = {"image": torch.rand(2, 3, 3, 32, 32), "mask": (torch.rand(2, 1, 32, 32) > 0.8).float()}
    batch["soft"] = batch["mask"] * 0.75
    loss, parts = task.compute_loss(batch)
    assert "hard" in parts and 0 < float(parts["hard"]) <= 1
    assert float(loss.detach()) == pytest.approx(float(parts["soft_bce"]) + float(parts["hard"]), rel=1e-5)
    plain = SegmentationTask(cfg, make(hard_head=False))
    with pytest.raises(models.ModelError, match="hard_head=False"):
        plain.compute_loss(batch)
    with_cls = SegmentationTask(cfg, make(hard_head=False, aux_classifier=True))
    with pytest.raises(ConfigError, match="hard_mask_weight > 0 needs a model with that head"):
        with_cls.compute_loss(batch)


def test_the_original_eightfold_decoder_is_an_option_and_a_config():
    from segladder.config import CONFIG_DIR, load_config

    cfg = load_config(CONFIG_DIR / "unet25d_wide.yaml")
    assert cfg.model.kwargs["decoder_ch_coef"] == 8
    assert "decoder_ch_coef" not in load_config(CONFIG_DIR / "unet25d.yaml").model.kwargs
    with torch.device("meta"):
        wide = models.create(cfg.model.name, **cfg.model.kwargs)
    assert count_parameters(wide) == 115_009_858  # 115.0 M, the 3rd place's resnet18 2.5D model
    assert [b.conv1[0].out_channels for b in wide.decoder.blocks] == [2048, 1024, 512, 256, 128]
    assert wide.head[0].in_channels == 128
    with pytest.raises(ConfigError, match="decoder_ch_coef must be a positive integer"):
        models.create("Unet25D", decoder_ch_coef=0)

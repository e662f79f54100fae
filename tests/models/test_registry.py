"""The registry: names, lookup errors with suggestions, option checking."""

import pytest
from torch import nn

from segladder import models
from segladder.errors import ConfigError, SegladderError

SEED_LADDER = ["ResNet18_SimplerFCN", "ResNet18_Simple", "ResNet18_U", "ResNet18_ULSTM", "CoaT_ULSTM"]


def test_available_lists_the_seed_ladder_and_the_families():
    names = models.available()
    assert names[:5] == SEED_LADDER
    for name in [
        "Unet2D",
        "UnetPlusPlus2D",
        "FPN2D",
        "DeepLabV3Plus2D",
        "MAnet2D",
        "SMP2D",
        "SegCls2D",
        "Unet25D",
        "Unet25DCls",
        "Classifier",
        "Classifier25D",
    ]:
        assert name in names


def test_info_describes_each_model():
    for name in models.available():
        entry = models.info(name)
        assert entry.name == name and entry.description and entry.input_desc
        assert entry.output in {"mask", "label", "box"}
    assert models.info("ResNet18_ULSTM").uses_time and not models.info("ResNet18_U").uses_time


def test_unknown_model_suggests_close_names():
    with pytest.raises(models.ModelError, match="Did you mean: .*ResNet18_ULSTM") as err:
        models.create("ResNet18_ULSMT")
    assert isinstance(err.value, ConfigError) and isinstance(err.value, SegladderError)


def test_unknown_option_lists_accepted_ones():
    with pytest.raises(models.ModelError, match="no option.*encoderr.*Did you mean: encoder"):
        models.create("Unet2D", encoderr="resnet18")


def test_unknown_encoder_suggests_timm_names():
    with pytest.raises(models.ModelError, match="unknown timm encoder 'resnet_18'.*resnet18"):
        models.create("Unet25D", encoder="resnet_18")


def test_unknown_smp_architecture_suggests_close_names():
    with pytest.raises(models.ModelError, match="UnetPlusPlus"):
        models.create("SMP2D", arch="UnetPlus")


def test_registering_a_name_twice_fails():
    with pytest.raises(ValueError, match="twice"):
        models.register("Unet2D", description="x", uses_time=False, input_desc="x")(nn.Identity)


def test_check_options_validates_without_building():
    assert models.check_options("Unet25D", {"num_frames": 5}).name == "Unet25D"
    with pytest.raises(models.ModelError, match="num_frame.*Did you mean: num_frames"):
        models.check_options("Unet25D", {"num_frame": 5})

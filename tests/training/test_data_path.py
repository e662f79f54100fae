"""Training on uint8 batches decoded on the device gives the results of the float data path."""

import pytest

import segladder.data.module as module
from segladder.data.datasets import dataset_from_config
from segladder.training.run import train
from tests.training.conftest import quick_config


@pytest.mark.medium
def test_two_epochs_on_uint8_batches_match_the_float_path(train_cache, tmp_path, monkeypatch):
    over = {
        "model.name": "ResNet18_SimplerFCN",
        "trainer.limit_train_batches": 3,
        "trainer.overlays": 1,
        "data.augment.rot90_p": 0.5,
        "data.augment.hflip_p": 0.5,
    }
    emitted = []

    def recording(*args, **kw):
        ds = dataset_from_config(*args, **kw)
        emitted.append(ds.emits_uint8)
        return ds

    monkeypatch.setattr(module, "dataset_from_config", recording)
    u8 = train(quick_config(train_cache, **over), out=tmp_path / "uint8").metrics
    assert emitted == [True, True]  # train (flips, rot90) and validation both went to the device as uint8

    monkeypatch.setattr(module, "TRAINING_OUTPUT_DTYPE", "float32")
    fl = train(quick_config(train_cache, **over), out=tmp_path / "float32").metrics
    assert emitted[2:] == [False, False]

    assert len(u8["epochs"]) == len(fl["epochs"]) == 2
    for a, b in zip(u8["epochs"], fl["epochs"], strict=True):
        for key in ("train/loss_epoch", "val/loss", "val/dice_best", "val/threshold"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), (key, a, b)
    assert (tmp_path / "uint8" / "overlays" / "epoch_002.png").is_file()

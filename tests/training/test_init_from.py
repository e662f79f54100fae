"""trainer.init_from: a run starts from another run's weights (fine-tuning), and refuses weights that mean
something else, naming the key."""

from __future__ import annotations

import pytest
import torch

from segladder.config import ModelConfig
from segladder.errors import ConfigError
from segladder.inference.checkpoint import load_checkpoint
from segladder.training.build import build_task
from segladder.training.run import train
from tests.faults.conftest import tiny_config


@pytest.fixture(scope="module")
def source(synth_root, tmp_path_factory):
    run = train(
        tiny_config(synth_root, **{"trainer.max_epochs": 1}), out=tmp_path_factory.mktemp("src") / "run"
    )
    return run.run_dir / "checkpoints" / "best.ckpt"


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if v.is_floating_point() and "running" not in k}


@pytest.mark.medium
def test_the_run_starts_from_the_checkpoints_weights_and_trains_on(synth_root, source, tmp_path):
    src = _weights(load_checkpoint(source).model)
    # Another seed: a fresh model differs from the checkpoint everywhere, so equality below is the load's.
    fresh = _weights(build_task(tiny_config(synth_root, seed=11)).model)
    started = _weights(build_task(tiny_config(synth_root, seed=11, **{"trainer.init_from": source})).model)
    assert all(torch.equal(started[k], src[k]) for k in src)
    assert not any(torch.equal(fresh[k], src[k]) for k in src if src[k].numel() > 1 and "bias" not in k)

    # Through a whole run: at a learning rate of ~0 the fine-tuned weights stay the source's.
    over = {"trainer.max_epochs": 1, "trainer.init_from": source, "optim.lr": 1e-12}
    done = train(tiny_config(synth_root, seed=11, **over), out=tmp_path / "ft").run_dir
    tuned = _weights(load_checkpoint(done / "checkpoints" / "best.ckpt").model)
    assert all(torch.allclose(tuned[k], src[k], atol=1e-6) for k in src)


@pytest.mark.medium
def test_weights_that_mean_something_else_are_refused_naming_the_key(synth_root, source, tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.init_from: .* does not exist"):
        build_task(tiny_config(synth_root, **{"trainer.init_from": tmp_path / "none.ckpt"}))
    text = tmp_path / "notes.ckpt"
    text.write_text("not weights")
    with pytest.raises(ConfigError, match=r"trainer.init_from: .*notes.ckpt is not a segladder checkpoint"):
        build_task(tiny_config(synth_root, **{"trainer.init_from": text}))
    with pytest.raises(ConfigError, match=r"holds Unet2D, this run trains ResNet18_U; set model.name=Unet2D"):
        cfg = tiny_config(synth_root, **{"trainer.init_from": source})
        build_task(cfg.model_copy(update={"model": ModelConfig(name="ResNet18_U")}))
    with pytest.raises(ConfigError, match=r"data.frames \[4\] here, \[3, 4\] in the checkpoint"):
        build_task(tiny_config(synth_root, **{"trainer.init_from": source, "data.frames": "[4]"}))
    # Another size is fine: the model is convolutional.
    build_task(tiny_config(synth_root, **{"trainer.init_from": source, "data.image_size": 64}))

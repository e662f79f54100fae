"""Pretrained weights: local files and folders, the hub cache, and the clear offline error."""

import pickle

import pytest
import timm
import torch
from safetensors.torch import save_file

from segladder import models


def timm_state(name="resnet18", seed=1):
    torch.manual_seed(seed)
    return timm.create_model(name).state_dict()


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    """Empty Hugging Face and torch hub caches, and the user's own switch to stay offline."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("SEGLADDER_WEIGHTS", raising=False)
    return tmp_path


def test_pth_file_loads_into_the_encoder(tmp_path):
    state = timm_state()
    torch.save(state, tmp_path / "resnet18.pth")
    model = models.create("ResNet18_U", pretrained=tmp_path / "resnet18.pth")
    assert torch.equal(model.encoder.model.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(model.encoder.model.bn1.running_mean, state["bn1.running_mean"])
    report = model.encoder.weights_report
    assert report.loaded == 120 and not report.missing and report.unexpected == ["fc.weight", "fc.bias"]


def test_saved_model_state_loads_into_a_fresh_model(tmp_path):
    torch.manual_seed(3)
    trained = models.create("Unet2D")
    torch.save(trained.state_dict(), tmp_path / "unet.pt")
    fresh = models.create("Unet2D", pretrained=str(tmp_path / "unet.pt"))
    for (key, a), b in zip(
        trained.net.encoder.state_dict().items(), fresh.net.encoder.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), key
    assert fresh.encoder_report.unexpected, "the decoder tensors of the file should be reported as unused"


@pytest.mark.medium
def test_safetensors_and_hub_folder(tmp_path):
    state = timm_state()
    snapshot = tmp_path / "models--timm--resnet18.a1_in1k" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    save_file(state, snapshot / "model.safetensors")
    for source in (snapshot / "model.safetensors", tmp_path / "models--timm--resnet18.a1_in1k"):
        model = models.create("Unet25D", pretrained=source)
        assert torch.equal(model.encoder.model.conv1.weight, state["conv1.weight"])


@pytest.mark.medium
def test_original_coat_checkpoint_loads(tmp_path):
    state = timm_state("coat_lite_mini")
    torch.save({"model": state}, tmp_path / "coat_lite_mini.pth")  # the mlpc-ucsd release layout
    model = models.create("CoaT_ULSTM", encoder="coat_lite_mini", pretrained=tmp_path / "coat_lite_mini.pth")
    key = "serial_blocks4.0.mlp.fc1.weight"
    assert torch.equal(model.encoder.model.model.get_parameter(key), state[key])


def test_first_conv_is_adapted_to_in_chans(tmp_path):
    torch.save(timm_state(), tmp_path / "r18.pth")
    model = models.create("Unet2D", pretrained=tmp_path / "r18.pth", frames_as_channels=True, num_frames=2)
    assert model.net.encoder.model.conv1.weight.shape == (64, 6, 7, 7)
    assert model.encoder_report.adapted == ["conv1.weight"]


def test_classifier_keeps_its_new_head(tmp_path):
    torch.save(timm_state(), tmp_path / "r18.pth")
    model = models.create("Classifier", pretrained=tmp_path / "r18.pth")
    assert model.net.fc.weight.shape == (1, 512)
    assert model.weights_report.missing == ["fc.weight", "fc.bias"]


@pytest.mark.medium
def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.save(timm_state("resnet50"), tmp_path / "r50.pth")
    with pytest.raises(
        models.ModelError,
        match=r"do not fit encoder 'resnet18.*layer1.0.conv1.weight: file \(64, 64, 1, 1\)",
    ):
        models.create("ResNet18_U", pretrained=tmp_path / "r50.pth")


def test_unrelated_file_is_refused(tmp_path):
    torch.save({"foo": torch.zeros(3)}, tmp_path / "junk.pth")
    with pytest.raises(models.ModelError, match="none of the 1 tensors.*expects keys like conv1.weight"):
        models.create("ResNet18_U", pretrained=tmp_path / "junk.pth")


def test_bad_paths_are_clear_errors(tmp_path):
    with pytest.raises(models.ModelError, match="does not exist"):
        models.create("ResNet18_U", pretrained=tmp_path / "missing.pth")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(models.ModelError, match="expected one of"):
        models.create("ResNet18_U", pretrained=tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(models.ModelError, match="no weights file"):
        models.create("ResNet18_U", pretrained=tmp_path / "empty")


class Unsafe:
    """Anything not on torch's weights_only allow-list."""


def test_pickled_objects_are_not_loaded(tmp_path):
    with open(tmp_path / "unsafe.pth", "wb") as f:
        torch.save({"state_dict": timm_state(), "extra": Unsafe()}, f, pickle_module=pickle)
    with pytest.raises(models.ModelError, match="weights_only=True"):
        models.create("ResNet18_U", pretrained=tmp_path / "unsafe.pth")


def test_missing_offline_weights_say_how_to_supply_them(offline_env):
    with pytest.raises(models.ModelError) as err:
        models.create("ResNet18_U", pretrained=True)
    message = str(err.value)
    assert message.startswith("pretrained weights for 'resnet18.tv_in1k' are not on this machine")
    assert "HF_HUB_OFFLINE is set" in message.splitlines()[0]
    assert "https://huggingface.co/timm/resnet18.tv_in1k" in message and "model.safetensors" in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert "pretrained='/path/to/" in message
    assert "HF_HUB_OFFLINE unset, run `segladder models fetch CONFIG`" in message
    assert str(offline_env / "hf" / "hub") in message


def test_pretrained_true_reads_the_hub_cache(offline_env):
    state = timm_state()
    repo = offline_env / "hf" / "hub" / "models--timm--resnet18.tv_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc")
    (repo / "snapshots" / "abc").mkdir(parents=True)
    save_file(state, repo / "snapshots" / "abc" / "model.safetensors")
    model = models.create("ResNet18_ULSTM", pretrained=True, in_chans=1)
    assert torch.allclose(model.encoder.model.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(model.encoder.model.layer4[0].conv1.weight, state["layer4.0.conv1.weight"])


def test_no_weights_are_loaded_by_default():
    assert models.create("ResNet18_U").encoder.weights_report is None


def test_pretrained_true_finds_a_torchvision_download(offline_env):
    state = timm_state()
    checkpoints = offline_env / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / "resnet18-f37072fd.pth")  # where torchvision caches its ResNet-18
    model = models.create("ResNet18_SimplerFCN", pretrained=True)
    assert torch.equal(model.encoder.model.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])


@pytest.mark.medium
def test_auto_finds_weights_named_after_the_encoder_in_segladder_weights(offline_env, monkeypatch):
    folder = offline_env / "weights"
    folder.mkdir()
    coat = timm_state("coat_lite_mini")
    torch.save({"model": coat}, folder / "coat_lite_mini_a750cd63.pth")  # the CoaT release's own name
    torch.save(timm_state("coat_lite_small"), folder / "coat_lite_small.in1k.pth")
    r18 = timm_state(seed=2)
    save_file(r18, folder / "resnet18.tv_in1k.safetensors")
    save_file(timm_state(seed=3), folder / "resnet18.a1_in1k.safetensors")  # another tag: not chosen
    monkeypatch.setenv("SEGLADDER_WEIGHTS", str(folder))

    model = models.create("CoaT_ULSTM", encoder="coat_lite_mini", pretrained="auto")
    key = "serial_blocks4.0.mlp.fc1.weight"
    assert torch.equal(model.encoder.model.model.get_parameter(key), coat[key])
    assert "SEGLADDER_WEIGHTS" in model.encoder.weights_report.source
    rung = models.create("ResNet18_U", pretrained=True)
    assert torch.equal(rung.encoder.model.layer4[0].conv1.weight, r18["layer4.0.conv1.weight"])


def test_auto_without_weights_names_both_ways_and_training_from_scratch(offline_env, monkeypatch):
    monkeypatch.setenv("SEGLADDER_WEIGHTS", str(offline_env))  # a folder without CoaT weights
    with pytest.raises(models.ModelError) as err:
        models.create("CoaT_ULSTM", encoder="coat_lite_mini", pretrained="auto")
    message = str(err.value)
    assert "https://huggingface.co/timm/coat_lite_mini.in1k" in message
    assert "$SEGLADDER_WEIGHTS" in message and "coat_lite_mini.in1k.safetensors" in message
    assert str(offline_env / "hf" / "hub") in message  # the Hugging Face cache it looked in
    assert "model.pretrained=false" in message


def test_segladder_weights_must_name_folders(offline_env, monkeypatch):
    monkeypatch.setenv("SEGLADDER_WEIGHTS", str(offline_env / "nowhere"))
    with pytest.raises(models.ModelError, match="SEGLADDER_WEIGHTS.*is not a folder"):
        models.create("ResNet18_SimplerFCN", pretrained="auto")

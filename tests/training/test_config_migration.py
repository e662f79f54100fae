"""Configs written before the data formats had sections keep loading: the box keys that sat at the top of
`data` (images, train, val, crop_size, buffer_ratio) move into `data.coco` with one warning naming each old
and new key, from YAML files, `--set`, stored run configs and checkpoints alike."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import yaml

from segladder.config import (
    CONFIG_DIR,
    ExperimentConfig,
    MovedKeyWarning,
    build_config,
    dump_config,
    load_config,
)
from segladder.errors import ConfigError

# configs/snapper.yaml's data section as it was written before data.coco existed.
OLD_SNAPPER_DATA = {
    "format": "coco",
    "crop_size": 224,
    "buffer_ratio": 1.1,
    "batch_size": 64,
    "num_workers": 4,
}
BOX_FILES = {"images": "photos/images", "train": "photos/train.json", "val": "photos/val.json"}


def moved_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, MovedKeyWarning)]


def old_snapper(tmp_path: Path, **data) -> Path:
    shipped = yaml.safe_load((CONFIG_DIR / "snapper.yaml").read_text())
    shipped["data"] = {**OLD_SNAPPER_DATA, **data}
    path = tmp_path / "snapper.yaml"
    path.write_text(yaml.safe_dump(shipped))
    return path


def test_an_old_yaml_gives_the_same_config_with_one_warning_naming_each_moved_key(tmp_path):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        old = load_config(old_snapper(tmp_path, **BOX_FILES))
    new = load_config(CONFIG_DIR / "snapper.yaml", [f"data.coco.{k}={v}" for k, v in BOX_FILES.items()])
    assert old.model_dump() == new.model_dump()  # name aside: both files are called snapper
    assert old.data.coco.crop_size == 224 and old.data.coco.train == "photos/train.json"
    (message,) = moved_warnings(record)
    for key in ("crop_size", "buffer_ratio", "images", "train", "val"):
        assert f"data.{key} is now data.coco.{key}" in message
    assert not moved_warnings(_record(lambda: load_config(CONFIG_DIR / "snapper.yaml")))  # the new layout


def _record(fn) -> list:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fn()
    return record


def test_old_style_set_overrides_the_new_layout_and_keeps_paths_as_written():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cfg = load_config(CONFIG_DIR / "snapper.yaml", ["data.crop_size=64", "data.images=2023"])
    assert (cfg.data.coco.crop_size, cfg.data.coco.images) == (64, "2023")  # a folder name, not a number
    (message,) = moved_warnings(record)
    assert "data.crop_size is now data.coco.crop_size" in message
    assert "data.images is now data.coco.images" in message
    # An old key in both the file and a --set is named once.
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        build_config({"data": {"format": "coco", "crop_size": 32}}, ["data.crop_size=48"])
    (message,) = moved_warnings(record)
    assert message.count("data.crop_size is now") == 1


def test_errors_in_old_keys_name_the_set_and_keys_given_twice_are_refused():
    with (
        pytest.warns(MovedKeyWarning),
        pytest.raises(
            ConfigError, match=r"^--set data\.crop_size=8: Input should be greater than or equal to 16$"
        ),
    ):
        build_config({"data": {"format": "coco"}}, ["data.crop_size=8"])
    with pytest.raises(
        ConfigError,
        match=r"data\.crop_size and data\.coco\.crop_size are both set.*keep data\.coco\.crop_size",
    ):
        build_config({"data": {"crop_size": 64, "coco": {"crop_size": 32}}})


def test_a_stored_contrails_config_drops_the_unused_box_keys_silently(tmp_path):
    """Run directories and checkpoints of contrails runs stored all five keys at their defaults: nothing moves."""
    cfg = load_config(CONFIG_DIR / "resnet18_u.yaml")
    stored = cfg.model_dump(mode="json")
    stored["data"].update(images=None, train=None, val=None, crop_size=224, buffer_ratio=1.1)
    record = _record(lambda: ExperimentConfig.model_validate(stored))
    assert ExperimentConfig.model_validate(stored) == cfg and not moved_warnings(record)
    run_config = tmp_path / "config.yaml"  # what `train --resume` reads
    run_config.write_text(yaml.safe_dump(stored, sort_keys=False))
    assert load_config(run_config).model_dump() == {**cfg.model_dump(), "name": "resnet18_u"}
    assert "coco" not in dump_config(load_config(run_config))


def test_a_box_key_set_on_a_contrails_config_moves_and_says_where():
    # The confusion the sections remove: data.crop_size was never the training crop.
    with pytest.warns(MovedKeyWarning, match=r"data\.crop_size is now data\.coco\.crop_size"):
        cfg = build_config({}, ["data.crop_size=96"])
    assert cfg.data.resolved_format == "contrails" and cfg.data.augment.crop_size is None
    assert cfg.data.coco.crop_size == 96


def test_an_old_box_checkpoint_loads_with_its_crop_geometry(tmp_path):
    from segladder.inference.boxes import BoxAdjuster
    from segladder.inference.checkpoint import CHECKPOINT_KEY, load_checkpoint
    from segladder.models import create

    model_cfg = {"name": "Snapper", "encoder": "test_resnet", "hidden": 16, "decoder_layers": 2}
    config = {
        "task": "boxes",
        "data": {**OLD_SNAPPER_DATA, "crop_size": 32, "buffer_ratio": 1.3},
        "model": model_cfg,
    }
    model = create("Snapper", **{k: v for k, v in model_cfg.items() if k != "name"})
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "old.ckpt"
    meta = {"version": 1, "task": "boxes", "threshold": 0.5, "config": config}
    torch.save({"state_dict": state, CHECKPOINT_KEY: meta}, path)
    # Silently: a checkpoint's user has no config to rewrite.
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ck = load_checkpoint(path)
        adjuster = BoxAdjuster.from_checkpoint(path, device="cpu")
    assert (ck.config.data.coco.crop_size, ck.config.data.coco.buffer_ratio) == (32, 1.3)
    assert (adjuster.crop_size, adjuster.buffer_ratio) == (32, 1.3)
    assert not moved_warnings(record)


def test_the_cli_shows_a_moved_key_as_one_warning_line(tmp_path, capsys):
    from segladder.cli import run

    target = tmp_path / "train.json"
    target.write_text("{}")
    code = run(["train", "snapper", "--out", str(target), "--set", f"data.train={target}"])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if "config keys moved" in line]
    assert lines == [lines[0]] and lines[0].startswith("warning: config keys moved: data.train is now")
    assert "MovedKeyWarning" not in err and ".py:" not in err, err


def test_train_refuses_an_output_over_a_coco_file_given_old_style_or_new(tmp_path, capsys):
    from segladder.cli import run

    target = tmp_path / "train.json"
    target.write_text("{}")
    for key in ("data.train", "data.coco.train"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MovedKeyWarning)
            code = run(["train", "snapper", "--out", str(target), "--set", f"{key}={target}"])
        err = capsys.readouterr().err
        assert code == 2 and "is the input data.coco.train" in err, err

"""Data formats are a registry (segladder/data/formats/): each format one module with its own section of
`data`, found by `data.format` or auto-detection, building its data module with no branch elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from segladder.config import DataConfig, build_config, dump_config
from segladder.data.formats import DATA_FORMATS, DataFormat, FormatSection
from segladder.errors import ConfigError
from segladder.training.build import build_datamodule, resolve_model
from tests.distill.images import write_image_folder


def test_every_format_is_registered_under_its_name_and_its_section_is_a_data_key():
    assert {"coco", "contrails", "images"} <= set(DATA_FORMATS.names())
    for name, fmt in DATA_FORMATS.items():
        assert fmt.name == name and fmt.summary.startswith(f"{name}: ")
        if fmt.section is not None:
            assert issubclass(fmt.section, FormatSection)
            assert fmt.section in DataConfig.model_fields[name].annotation.__args__
            assert set(fmt.moved_keys) <= set(fmt.section.model_fields)
    assert DataConfig.model_fields["coco"].default is None  # written only where it is used


def test_the_box_keys_live_in_the_coco_section_only():
    cfg = build_config({"data": {"format": "coco", "coco": {"crop_size": 64}}})
    assert (cfg.data.coco.crop_size, cfg.data.coco.buffer_ratio, cfg.data.coco.images) == (64, 1.1, None)
    for key in ("images", "train", "val", "crop_size", "buffer_ratio"):
        assert key not in DataConfig.model_fields
    # A contrails config carries none of them, in memory or written out.
    plain = build_config({"data": {"root": "somewhere"}})
    assert plain.data.coco is None and "coco" not in plain.data.model_dump()
    assert "buffer_ratio" not in dump_config(plain) and "buffer_ratio" in dump_config(cfg)
    # data.format coco gets its section's defaults when none is given.
    assert build_config({"data": {"format": "coco"}}).data.coco.crop_size == 224


def test_auto_detection_picks_coco_images_or_contrails(tmp_path):
    folder = write_image_folder(tmp_path / "pairs", n_train=2, n_val=1, size=24)
    cases = {
        "coco": {"coco": {"train": "t.json"}},
        "images": {"root": str(folder)},
        "contrails": {"root": str(tmp_path / "layout")},
    }
    for expected, data in cases.items():
        cfg = DataConfig(**data)
        assert cfg.format == "auto" and cfg.resolved_format == expected, data
    # An explicit format wins, and a root given at read time is what auto looks at.
    assert DataConfig(root=str(folder), format="contrails").resolved_format == "contrails"
    assert DataConfig(root=str(tmp_path)).resolve_format(folder).name == "images"


def test_the_format_says_what_the_model_reads_and_which_data_module_trains_it():
    boxes = build_config(
        {"task": "boxes", "data": {"format": "coco"}, "model": {"name": "Snapper", "encoder": "test_resnet"}}
    )
    contrails = build_config({"data": {"channels": ["ash", "band_11"]}})
    assert resolve_model(boxes).model.kwargs["in_chans"] == 3
    assert resolve_model(contrails).model.kwargs["in_chans"] == 4
    assert type(build_datamodule(boxes)).__name__ == "BoxesDataModule"
    assert type(build_datamodule(contrails)).__name__ == "ContrailsDataModule"


def test_an_unknown_format_or_format_key_names_the_fix():
    with pytest.raises(
        ConfigError, match=r"^--set data\.format=cocoo: unknown data format 'cocoo'\. Did you mean: coco\?"
    ):
        build_config({}, ["data.format=cocoo"])
    with pytest.raises(ConfigError, match=r"unknown key 'data\.coco\.crop_sise'\. Did you mean: crop_size\?"):
        build_config({"data": {"coco": {"crop_sise": 64}}})
    # A format's key written at the top of `data` is suggested where it lives.
    with pytest.raises(
        ConfigError, match=r"unknown key 'data\.buffer_ration'\. Did you mean: coco\.buffer_ratio"
    ):
        build_config({}, ["data.buffer_ration=1.2"])


class _MarkerFormat(DataFormat):
    """A format defined only here: a folder holding a marker file, trained by a stand-in data module."""

    name = "marker"
    summary = "marker: a folder with a MARKER file"
    detect_order = -1

    @classmethod
    def detect(cls, data, source) -> bool:
        return source is not None and (Path(source) / "MARKER").exists()

    @classmethod
    def datamodule(cls, data, seed: int):
        return ("marker module", data.root, seed)


def test_a_new_format_is_one_registered_class(tmp_path, monkeypatch):
    """Registering a format is all it takes: `data.format` accepts it, auto finds its data, and training
    builds its data module (no other file names it)."""
    monkeypatch.setitem(DATA_FORMATS._entries, "marker", _MarkerFormat)
    (tmp_path / "MARKER").write_text("")
    cfg = build_config({"data": {"root": str(tmp_path)}, "seed": 3})
    assert cfg.data.resolved_format == "marker"
    assert build_datamodule(cfg) == ("marker module", str(tmp_path), 3)
    assert build_config({"data": {"format": "marker"}}).data.resolved_format == "marker"

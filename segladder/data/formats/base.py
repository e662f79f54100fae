"""The data-format contract and its registry.

Pydantic only at import, so `segladder.config` can build its schema from the registered formats (a
format's builders import torch-side modules inside their bodies).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from segladder.errors import ConfigError
from segladder.registry import Registry

if TYPE_CHECKING:
    import lightning as L
    from torch.utils.data import Dataset

AUTO = "auto"
FALLBACK = "contrails"  # what `data.format: auto` reads when no other format recognises the data


class FormatSection(BaseModel):
    """The config keys one format owns, under `data.<format name>`; an unknown key is refused by name."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataFormat:
    """One way samples are stored, registered with `@DATA_FORMATS.register(name)` (name == `name` below).

    The `data` argument of every method is the experiment's `DataConfig` (the shared keys: root, sizes,
    batches, splits, augment) with this format's own keys in `data.<name>` when it has a `section`.

    Class attributes:
        name: the registry name, the value of `data.format` and the key of its section.
        summary: one line for the `data.format` description.
        section: the `FormatSection` of its own keys, or None when the shared keys are all it reads.
        moved_keys: keys this format took from the top of `data` into its section, with their old defaults:
            configs and checkpoints written before the section still load (see `config.migrate_data_keys`).
        detect_order: `data.format: auto` asks the formats that have one, lowest first, whether the data
            is theirs (`detect`); None: never detected (the fallback needs none).
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    section: ClassVar[type[FormatSection] | None] = None
    moved_keys: ClassVar[dict[str, Any]] = {}
    detect_order: ClassVar[int | None] = None

    @classmethod
    def detect(cls, data, source: str | Path | None) -> bool:
        """Whether `data.format: auto` should read `data` (its root, or `source` instead) as this format."""
        return False

    @classmethod
    def options(cls, data) -> FormatSection | None:
        """This format's section of `data`: as given, or its defaults; None for a format without one."""
        if cls.section is None:
            return None
        return getattr(data, cls.name, None) or cls.section()

    @classmethod
    def in_chans(cls, data) -> int:
        """Channels of the model input this format's samples give (the model's `in_chans`)."""
        from segladder.data.contrails import resolve_channels

        return len(resolve_channels(data.channels))

    @classmethod
    def datamodule(cls, data, seed: int) -> L.LightningDataModule:
        """The Lightning data module that trains on `data`, its shuffles seeded with `seed`."""
        raise NotImplementedError

    @classmethod
    def dataset(
        cls,
        data,
        split: str,
        source: str | Path,
        *,
        augment: bool = False,
        stats: dict | None = None,
        **options,
    ) -> Dataset:
        """One split of `source` as a dataset of records; see `datasets.dataset_from_config` for arguments.

        Training, evaluate, predict, viz and the ladder all read records through it.
        """
        raise ConfigError(
            f"data.format {cls.name} has no dataset of records; it trains through its data module only."
        )

    @classmethod
    def inputs(cls, data) -> dict[str, str | None]:
        """The files and folders of this format's own keys that a run reads, by config key."""
        return {}


DATA_FORMATS: Registry[type[DataFormat]] = Registry("data format", ConfigError)


def resolve_format(data, source: str | Path | None = None) -> type[DataFormat]:
    """The format that reads `data`: `data.format`, or for auto the first format that recognises it.

    Formats are tried by `detect_order`, looking at `source` instead of `data.root` when given; the fallback
    reads what none recognises.
    """
    if data.format != AUTO:
        return DATA_FORMATS.get(data.format)
    source = source if source is not None else data.root
    ordered = sorted(
        (f for _, f in DATA_FORMATS.items() if f.detect_order is not None), key=lambda f: f.detect_order
    )
    return next((f for f in ordered if f.detect(data, source)), DATA_FORMATS.get(FALLBACK))

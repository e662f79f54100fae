"""Data formats: how samples are stored, each one module registered in `DATA_FORMATS`.

Each has its own keys under `data.<name>` (docs/architecture.md, "Adding a data format"). Importing this
package registers them.
"""

from segladder.data.formats import coco, contrails, images  # noqa: F401  (importing them registers the formats)
from segladder.data.formats.base import AUTO, DATA_FORMATS, DataFormat, FormatSection, resolve_format

__all__ = ["AUTO", "DATA_FORMATS", "DataFormat", "FormatSection", "resolve_format"]

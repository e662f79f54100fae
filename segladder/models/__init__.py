"""Segmentation and classification models for image sequences, built by name from one registry.

`create("ResNet18_ULSTM")` builds a model: (B, C, T, H, W) or (B, C, H, W) in, (B, 1, H, W) logits out.
`available()` lists the names; `segladder models list` prints them as a table. See docs/models.md.
"""

from segladder.models import coat, families, ladder, snapper  # noqa: F401  (importing them registers the models)
from segladder.models.base import SequenceModel
from segladder.models.encoders import Encoder, WeightsReport, load_pretrained
from segladder.models.registry import (
    ModelError,
    ModelInfo,
    ModelInputError,
    available,
    check_options,
    create,
    info,
    register,
    with_output,
)

__all__ = [
    "Encoder",
    "ModelError",
    "ModelInfo",
    "ModelInputError",
    "SequenceModel",
    "WeightsReport",
    "available",
    "check_options",
    "create",
    "info",
    "load_pretrained",
    "register",
    "with_output",
]

"""albumentations, imported without its PyPI update check and without leaving a variable set behind."""

from __future__ import annotations

import os
import sys

# albumentations asks PyPI for a newer version when first imported unless NO_ALBUMENTATIONS_UPDATE is set;
# a library's import must not reach the network, nor change the environment the user's own code sees.
if "albumentations" not in sys.modules and "NO_ALBUMENTATIONS_UPDATE" not in os.environ:
    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
    try:
        import albumentations  # noqa: F401  (the first import runs the check)
    finally:
        del os.environ["NO_ALBUMENTATIONS_UPDATE"]

import albumentations as A  # noqa: E402

__all__ = ["A"]

"""segladder: train, debug, distil and ship segmentation models on satellite image sequences."""

import os as _os

# Nothing may reach the network implicitly: albumentations checks PyPI for updates on import and the
# Hugging Face hub (used by timm) downloads on a cache miss unless told it is offline.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
if _os.environ.get("SEGLADDER_ALLOW_DOWNLOAD", "") not in {"1", "true", "yes"}:
    _os.environ.setdefault("HF_HUB_OFFLINE", "1")

__version__ = "0.1.0"

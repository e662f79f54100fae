"""segladder: train, debug, distil and ship segmentation models on satellite image sequences."""

import os as _os

# albumentations asks PyPI for a newer version on every import; a library's import must not reach the
# network. The Hugging Face switches (HF_HUB_OFFLINE, HF_ENDPOINT) are the user's: never set here.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"

"""segladder: train, debug, distil and ship segmentation models on satellite image sequences."""

# Importing segladder changes no environment variable: the Hugging Face switches (HF_HUB_OFFLINE,
# HF_ENDPOINT) are the user's, and albumentations' update check is silenced only around its own import
# (segladder/data/albu.py).

__version__ = "0.1.0"

"""Data: the competition layout, ash RGB, validation, the compact cache, datasets and augmentation."""

"""Names and shapes of the competition / OpenContrails layout (docs/data.md), shared by reader and writer.

The Kaggle competition "Google Research - Identify Contrails to Reduce Global Warming" and OpenContrails
(Ng et al. 2023, arXiv:2304.02122): per record `band_08.npy` … `band_16.npy` (H, W, 8) float32 brightness
temperatures in K, 8 frames 10 minutes apart with the label on frame index 4, `human_pixel_masks.npy`
(H, W, 1) and, in train, `human_individual_masks.npy` (H, W, 1, R), one slice per annotator.
"""

BANDS: tuple[int, ...] = (8, 9, 10, 11, 12, 13, 14, 15, 16)
BAND_FILES: tuple[str, ...] = tuple(f"band_{b:02d}.npy" for b in BANDS)
N_FRAMES = 8
LABELED_FRAME = 4  # the human masks belong to frame index 4 (0-based): 4 before, 3 after
SPLITS: tuple[str, ...] = ("train", "validation", "test")
PIXEL_MASK_FILE = "human_pixel_masks.npy"  # int32 (H, W, 1), values {0, 1}
INDIVIDUAL_MASKS_FILE = "human_individual_masks.npy"  # int32 (H, W, 1, R), one slice per annotator
METADATA_FILES: dict[str, str] = {
    "train": "train_metadata.json",
    "validation": "validation_metadata.json",
}
METADATA_KEYS: tuple[str, ...] = (
    "record_id",
    "projection_wkt",
    "row_min",
    "row_size",
    "col_min",
    "col_size",
    "timestamp",
)
SAMPLE_SUBMISSION_FILE = "sample_submission.csv"  # header: record_id,encoded_pixels
DEFAULT_SIZE = 256


def band_file(band: int) -> str:
    """The file name of band `band` in a record folder: `band_08.npy`."""
    return f"band_{band:02d}.npy"

"""Names and shapes of the competition / OpenContrails layout (domain-facts §1), shared by reader and writer."""

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
    return f"band_{band:02d}.npy"

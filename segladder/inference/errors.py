"""Errors of the inference layer: each names the checkpoint, ONNX file, option or folder and the fix."""

from segladder.errors import SegladderError


class InferenceError(SegladderError):
    """Inference cannot start: bad options, incompatible models, an unusable device or output folder."""


class CheckpointError(InferenceError):
    """A checkpoint is missing, unsafe, of another task or of an incompatible version."""


class ExportError(InferenceError):
    """Export failed, the ONNX model disagrees with PyTorch, or an ONNX file lacks segladder's metadata."""

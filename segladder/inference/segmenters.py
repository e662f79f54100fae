"""Segmenters: a checkpoint, an ensemble or an ONNX model as one `probs(images)` call, with flip TTA."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from segladder.inference.checkpoint import LoadedCheckpoint, load_checkpoint
from segladder.inference.errors import CheckpointError, ExportError, InferenceError
from segladder.inference.inputs import InputSpec

INPUT_NAME = "image"  # (batch, C, T, H, W) float32
OUTPUT_NAME = "logits"  # (batch, 1, H, W) for segmenters, (batch, 1) for classifiers
META_PREFIX = "segladder."
ONNX_FORMAT_VERSION = 1
DEFAULT_OPSET = 17  # what `export onnx` writes, and what an opset error advises


def shift_along(t: torch.Tensor, pixels: int, dim: int) -> torch.Tensor:
    """out[q] = t[q + pixels] along `dim`, repeating the edge value where that runs off the image."""
    if pixels == 0:
        return t
    n = t.shape[dim]
    idx = (torch.arange(n, device=t.device) + pixels).clamp(0, n - 1)
    return t.index_select(dim, idx)


class Segmenter:
    """Images (B, C, T, H, W) → contrail probabilities (B, 1, H, W), float32 on the CPU; optional flip TTA.

    Flip TTA averages the plain prediction with those of the horizontally and vertically flipped input,
    flipped back. Competition masks sit half a pixel off the image grid (why the 2nd-place recipe,
    DrHB/2nd-place-contrails, trains without flips, and the 1st place trained on soft labels shifted by
    0.5 px), so a flipped-back prediction lands one pixel off; `tta_shift` moves it back:
    out[q] = flipped_back[q + shift] along the flipped axis (+1 when labels lie half a pixel right/below
    their pixels; docs/inference.md).

    Args:
        name: the model's name in messages (its checkpoint's path).
        spec: the input it reads.
        threshold: its mask threshold.
        tta: average with the flipped inputs' predictions.
        tta_shift: pixels a flipped-back prediction is moved along the flipped axis.
    """

    def __init__(self, name: str, spec: InputSpec, threshold: float, tta: bool = False, tta_shift: int = 0):
        self.name, self.spec, self.threshold = name, spec, float(threshold)
        self.tta, self.tta_shift = tta, int(tta_shift)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits (B, 1, H, W) for images `x`."""
        raise NotImplementedError

    @torch.inference_mode()
    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities (B, 1, H, W) for images `x`, float32 on the CPU; averaged over flips with `tta`."""
        p = torch.sigmoid(self.logits(x).float())
        if self.tta:
            views = [p]
            for dim in (-1, -2):
                back = torch.sigmoid(self.logits(x.flip(dim)).float()).flip(dim)
                views.append(shift_along(back, self.tta_shift, dim))
            p = torch.stack(views).mean(0)
        return p.nan_to_num(0.0).cpu()


class TorchSegmenter(Segmenter):
    """A segmentation checkpoint's model run by PyTorch.

    Args:
        ck: the loaded segmentation checkpoint.
        device: where the model runs.
        tta: average with the flipped inputs' predictions.
        tta_shift: pixels a flipped-back prediction is moved along the flipped axis.
    """

    def __init__(self, ck: LoadedCheckpoint, device: torch.device, tta: bool = False, tta_shift: int = 0):
        if ck.task != "segmentation":
            raise CheckpointError(f"{ck.path}: a {ck.task} checkpoint where a segmentation model is needed.")
        super().__init__(str(ck.path), InputSpec.from_checkpoint(ck), ck.threshold, tta, tta_shift)
        self.device = device
        self.model = ck.model.to(device).eval()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits for `x`, moved to the model's device."""
        return self.model(x.to(self.device, non_blocking=True))


class TorchClassifier:
    """Images → per-record contrail probabilities (B,) from a classification checkpoint.

    Args:
        ck: the loaded classification checkpoint.
        device: where the model runs.
    """

    def __init__(self, ck: LoadedCheckpoint, device: torch.device):
        if ck.task != "classification":
            raise CheckpointError(f"{ck.path}: a {ck.task} checkpoint where a classifier is needed.")
        self.name, self.spec, self.threshold = str(ck.path), InputSpec.from_checkpoint(ck), ck.threshold
        self.device = device
        self.model = ck.model.to(device).eval()

    @torch.inference_mode()
    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) probabilities that each record holds contrails, float32 on the CPU; NaN as 0."""
        return torch.sigmoid(self.model(x.to(self.device)).float()).reshape(x.shape[0]).nan_to_num(0.0).cpu()


class Ensemble:
    """Weighted mean of segmenters' probabilities.

    Members may read different frames or channels (each gets its own input), but must predict at one image
    size.

    Args:
        members: the segmenters.
        weights: each member's weight, positive (default: equal); normalised to sum to 1.
    """

    def __init__(self, members: Sequence[Segmenter], weights: Sequence[float] | None = None):
        if not members:
            raise InferenceError("no model to predict with: give at least one checkpoint (or --onnx).")
        weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
        if len(weights) != len(members):
            raise InferenceError(f"{len(weights)} ensemble weight(s) for {len(members)} model(s).")
        if not all(math.isfinite(w) and w > 0 for w in weights):
            raise InferenceError(f"ensemble weights must be positive numbers, got {weights}.")
        if len({m.spec.image_size for m in members}) > 1:
            sizes = ", ".join(f"{m.name}: {m.spec.image_size}" for m in members)
            raise InferenceError(
                f"the models predict at different image sizes ({sizes}); "
                "an ensemble needs one size to average at."
            )
        total = sum(weights)
        self.members, self.weights = list(members), [w / total for w in weights]

    @property
    def threshold(self) -> float:
        """The members' stored thresholds, averaged with the ensemble weights."""
        return sum(w * m.threshold for m, w in zip(self.members, self.weights, strict=True))

    @property
    def specs(self) -> list[InputSpec]:
        """The distinct input specs the members read, in member order."""
        return list(dict.fromkeys(m.spec for m in self.members))

    def member_probs(
        self, images: Mapping[InputSpec, torch.Tensor], known: Mapping[Segmenter, torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        """Each member's probabilities; those in `known` (already computed elsewhere) are not run again."""
        known = known or {}
        return [known[m] if m in known else m.probs(images[m.spec]) for m in self.members]

    def combine(self, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The weighted mean of the members' probabilities `probs`."""
        return sum(w * p for w, p in zip(self.weights, probs, strict=True))

    def probs(
        self, images: Mapping[InputSpec, torch.Tensor], known: Mapping[Segmenter, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """The ensemble's probabilities for `images` (by spec); members in `known` are not run again."""
        return self.combine(self.member_probs(images, known))


def resolve_device(device: str | None) -> torch.device:
    """The torch device for `device` (None: CUDA when there is one); an error when it is not there."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InferenceError(f"unknown device {device!r}; use cpu, cuda or cuda:N.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError(
            f"device {device!r} asked for, but no CUDA device is available; use --device cpu."
        )
    return dev


def load_segmenters(
    checkpoints: Sequence[str | Path], device: torch.device, tta: bool = False, tta_shift: int = 0
) -> list[TorchSegmenter]:
    """A `TorchSegmenter` for each checkpoint, on `device`."""
    return [TorchSegmenter(load_checkpoint(c), device, tta, tta_shift) for c in checkpoints]


# ------------------------------------------------------------------------------------------ ONNX


def onnx_session(path: str | Path, device: torch.device):
    """An onnxruntime session of the model at `path`, on CUDA where `device` is and onnxruntime can."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        raise ExportError(f"{path}: not a readable ONNX model ({str(exc).splitlines()[0]}).") from None


def onnx_metadata(session) -> dict[str, str]:
    """The segladder metadata of an onnxruntime session, without the key prefix."""
    props = session.get_modelmeta().custom_metadata_map
    return {k[len(META_PREFIX) :]: v for k, v in props.items() if k.startswith(META_PREFIX)}


class OnnxSegmenter(Segmenter):
    """An exported segmenter run by onnxruntime; its metadata says which input it needs.

    Args:
        path: the exported model.
        device: where it runs (CUDA where onnxruntime has the provider).
        tta: average with the flipped inputs' predictions.
        tta_shift: pixels a flipped-back prediction is moved along the flipped axis.
    """

    def __init__(
        self,
        path: str | Path,
        device: torch.device = torch.device("cpu"),
        tta: bool = False,
        tta_shift: int = 0,
    ):
        path = Path(path)
        if not path.is_file():
            raise ExportError(f"ONNX model {path} does not exist.")
        self.session = onnx_session(path, device)
        meta = onnx_metadata(self.session)
        if "input" not in meta or meta.get("format_version") != str(ONNX_FORMAT_VERSION):
            raise ExportError(
                f"{path}: no segladder metadata of version {ONNX_FORMAT_VERSION}; "
                "export the model with `segladder export onnx`."
            )
        if meta.get("task") != "segmentation":
            raise ExportError(f"{path}: a {meta.get('task')} model where a segmentation model is needed.")
        # A fold ensemble's export carries the out-of-fold component size; `predict --onnx` applies it.
        self.min_component = int(meta.get("min_component", 0))
        super().__init__(
            str(path),
            InputSpec.from_dict(json.loads(meta["input"])),
            float(meta["threshold"]),
            tta,
            tta_shift,
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The exported model's logits for `x`, run on the CPU input."""
        x = x.detach().cpu().float().contiguous()
        return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])


def trace_onnx(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    meta: dict[str, str],
    opset: int,
    model_name: str = "",
) -> None:
    """Trace `model` at `example` into `path` (dynamic batch axis) and add `meta` under the segladder prefix.

    The legacy (TorchScript) exporter: the dynamo exporter needs onnxscript, and the legacy one handles the
    LSTM models. An opset the model cannot be written at is one clear `ExportError`.
    """
    import onnx

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about the input checks' Python branches
        try:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
        except (torch.onnx.errors.OnnxExporterError, RuntimeError) as exc:
            # An opset too old for an operator, or one this torch does not know, surfaces here.
            if not isinstance(exc, torch.onnx.errors.OnnxExporterError) and "opset" not in str(exc):
                raise
            reason = str(exc).splitlines()[0].split(". Please")[0]
            raise ExportError(
                f"opset {opset}: the ONNX exporter cannot write {model_name or 'the model'} "
                f"({reason}); use --opset {DEFAULT_OPSET}."
            ) from None
    proto = onnx.load(str(path))
    for key, value in meta.items():
        proto.metadata_props.add(key=META_PREFIX + key, value=value)
    onnx.save(proto, str(path))

"""`export onnx`: a checkpoint as an ONNX model (dynamic batch, input contract in its metadata), parity-checked against PyTorch."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segladder.inference.checkpoint import load_checkpoint
from segladder.inference.predict import InferenceError, InputSpec, Segmenter
from segladder.io import atomic_path

INPUT_NAME = "image"  # (batch, C, T, H, W) float32
OUTPUT_NAME = "logits"  # (batch, 1, H, W) for segmenters, (batch, 1) for classifiers
META_PREFIX = "segladder."
ONNX_FORMAT_VERSION = 1
DEFAULT_OPSET = 17
PARITY_ATOL = 1e-4  # on probabilities, fp32


class ExportError(InferenceError):
    """Export failed, the ONNX model disagrees with PyTorch, or an ONNX file lacks segladder's metadata."""


@dataclass
class ExportResult:
    path: Path
    max_abs_diff_random: float
    max_abs_diff_real: float | None  # None when no data was given to check on
    real_records: int


def export_onnx(checkpoint: str | Path, out: str | Path, *, data: str | Path | None = None,
                split: str = "validation", check_records: int = 4, opset: int = DEFAULT_OPSET,
                atol: float = PARITY_ATOL) -> ExportResult:
    """Export a checkpoint; parity is checked on random inputs and, with `data`, on the split's first records."""
    ck = load_checkpoint(checkpoint)
    spec = InputSpec.from_checkpoint(ck)
    real = None
    if data is not None:
        ds = spec.dataset(data, split)
        n = min(check_records, len(ds))
        if n == 0:
            raise ExportError(f"split '{split}' of {data} holds no records to check the export on.")
        real = torch.stack([ds[i]["image"] for i in range(n)])
    return export_model(ck.model, spec, out, task=ck.task, threshold=ck.threshold, model_name=ck.config.model.name,
                        source=str(checkpoint), opset=opset, atol=atol, real=real)


def export_model(model: nn.Module, spec: InputSpec, out: str | Path, *, task: str = "segmentation",
                 threshold: float = 0.5, model_name: str = "", source: str = "", opset: int = DEFAULT_OPSET,
                 atol: float = PARITY_ATOL, real: torch.Tensor | None = None) -> ExportResult:
    """Write `model` as ONNX with `spec` and `threshold` in its metadata; on a parity failure nothing is written.

    The legacy (TorchScript) exporter is used: the dynamo exporter needs onnxscript, and the legacy one
    handles the LSTM models. The model is traced at batch 1 and checked at batch 3, which proves the
    batch axis dynamic.
    """
    import onnx

    out = Path(out)
    model = model.cpu().eval()
    shape = (len(spec.channels), len(spec.frames), spec.image_size, spec.image_size)
    meta = {"format_version": str(ONNX_FORMAT_VERSION), "task": task, "threshold": repr(float(threshold)),
            "model": model_name, "source": source, "input": json.dumps(spec.as_dict())}
    rand = torch.rand(3, *shape, generator=torch.Generator().manual_seed(0))
    try:
        with atomic_path(out) as tmp:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # tracer warnings about the input checks' Python branches
                torch.onnx.export(model, (torch.rand(1, *shape),), str(tmp), dynamo=False, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
            proto = onnx.load(str(tmp))
            for key, value in meta.items():
                proto.metadata_props.add(key=META_PREFIX + key, value=value)
            onnx.save(proto, str(tmp))
            session = _session(tmp, torch.device("cpu"))
            diff_random = _parity(model, session, rand)
            diff_real = _parity(model, session, real) if real is not None else None
            worst = max(d for d in (diff_random, diff_real) if d is not None)
            if not worst <= atol:
                raise ExportError(f"ONNX and PyTorch probabilities differ by up to {worst:.2e} (allowed {atol:g}); "
                                  f"{out} was not written.")
    except OSError as exc:
        raise ExportError(f"cannot write {out} ({exc.strerror or exc}).") from None
    return ExportResult(out, diff_random, diff_real, 0 if real is None else len(real))


def _session(path: str | Path, device: torch.device):
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        raise ExportError(f"{path}: not a readable ONNX model ({str(exc).splitlines()[0]}).") from None


def _parity(model: nn.Module, session, x: torch.Tensor) -> float:
    with torch.no_grad():
        expected = torch.sigmoid(model(x).float()).numpy()
    got = 1 / (1 + np.exp(-session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0].astype(np.float64)))
    return float(np.abs(got - expected).max())


def onnx_metadata(session) -> dict[str, str]:
    """segladder's metadata of an onnxruntime session, without the key prefix."""
    props = session.get_modelmeta().custom_metadata_map
    return {k[len(META_PREFIX):]: v for k, v in props.items() if k.startswith(META_PREFIX)}


class OnnxSegmenter(Segmenter):
    """An exported segmenter run by onnxruntime; its metadata says which input it needs."""

    def __init__(self, path: str | Path, device: torch.device = torch.device("cpu"), tta: bool = False,
                 tta_shift: int = 0):
        path = Path(path)
        if not path.is_file():
            raise ExportError(f"ONNX model {path} does not exist.")
        self.session = _session(path, device)
        meta = onnx_metadata(self.session)
        if "input" not in meta or meta.get("format_version") != str(ONNX_FORMAT_VERSION):
            raise ExportError(f"{path}: no segladder metadata of version {ONNX_FORMAT_VERSION}; "
                              "export the model with `segladder export onnx`.")
        if meta.get("task") != "segmentation":
            raise ExportError(f"{path}: a {meta.get('task')} model where a segmentation model is needed.")
        super().__init__(str(path), InputSpec.from_dict(json.loads(meta["input"])), float(meta["threshold"]),
                         tta, tta_shift)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().cpu().float().contiguous()
        return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])

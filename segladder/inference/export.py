"""`export onnx`: a checkpoint as an ONNX model (dynamic batch, input contract in its metadata), parity-checked against PyTorch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segladder.inference.checkpoint import load_checkpoint
from segladder.inference.errors import ExportError
from segladder.inference.inputs import InputSpec
from segladder.inference.segmenters import (  # noqa: F401  (trace_onnx re-exported)
    DEFAULT_OPSET,
    INPUT_NAME,
    META_PREFIX,
    ONNX_FORMAT_VERSION,
    OUTPUT_NAME,
    onnx_session,
    trace_onnx,
)
from segladder.io import atomic_path

PARITY_ATOL = 1e-4  # on probabilities, fp32


@dataclass
class ExportResult:
    """What `export_model` wrote, and how far ONNX runtime's outputs lie from PyTorch's."""

    path: Path
    max_abs_diff_random: float
    max_abs_diff_real: float | None  # None when no data was given to check on
    real_records: int
    input_shape: tuple[int, ...] = ()  # one input without its batch axis, as traced and checked


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    *,
    data: str | Path | None = None,
    split: str = "validation",
    check_records: int = 4,
    opset: int = DEFAULT_OPSET,
    atol: float = PARITY_ATOL,
    folds: bool = False,
) -> ExportResult:
    """Export a checkpoint; parity is checked on random inputs and, with `data`, on the split's first records.

    With `folds`, `checkpoint` is a `train --folds` run directory and its fold ensemble becomes one ONNX
    model: the folds' mean probability (as logits), the out-of-fold threshold and component size in
    its metadata. A `boxes` checkpoint is exported as `boxes export` does: its input is (batch, 3, S, S)
    crops, not contrail records, and parity is checked on such crops.
    """
    if folds:
        model, spec, meta = _fold_ensemble_model(checkpoint)
    else:
        ck = load_checkpoint(checkpoint)
        if ck.task == "boxes":
            return _export_boxes(checkpoint, ck.config.data.section("coco").crop_size, out, data, opset, atol)
        spec = InputSpec.from_checkpoint(ck)
        model = ck.model
        meta = {"task": ck.task, "threshold": ck.threshold, "model_name": ck.config.model.name}
    real = None
    if data is not None:
        ds = spec.dataset(data, split)
        n = min(check_records, len(ds))
        if n == 0:
            raise ExportError(f"split '{split}' of {data} holds no records to check the export on.")
        real = torch.stack([ds[i]["image"] for i in range(n)])
    return export_model(model, spec, out, **meta, source=str(checkpoint), opset=opset, atol=atol, real=real)


def _export_boxes(checkpoint, size: int, out, data, opset: int, atol: float) -> ExportResult:
    from segladder.inference.boxes import export_box_onnx

    if data is not None:
        raise ExportError(
            f"--data {data}: {checkpoint} is a box model, checked on random crops, not on contrail records; "
            "leave --data out (or use `segladder boxes export`)."
        )
    r = export_box_onnx(checkpoint, out, opset=opset, atol=atol)
    return ExportResult(r.path, r.max_prob_diff, None, 0, (3, size, size))


def _fold_ensemble_model(run_dir: str | Path) -> tuple[nn.Module, InputSpec, dict]:
    from segladder.inference.folds import ProbabilityMean, read_fold_ensemble

    ens = read_fold_ensemble(run_dir)
    cks = [load_checkpoint(c) for c in ens.checkpoints]
    specs = {InputSpec.from_checkpoint(ck) for ck in cks}
    if len(specs) > 1 or any(ck.task != "segmentation" for ck in cks):
        raise ExportError(
            f"{run_dir}: its folds read different inputs or are not segmenters; "
            "one ONNX model needs folds of one segmentation config."
        )
    meta = {
        "task": "segmentation",
        "threshold": ens.threshold,
        "model_name": f"{len(cks)}-fold ensemble of {cks[0].config.model.name}",
        "extra": {"min_component": str(ens.min_component), "folds": str(len(cks))},
    }
    return ProbabilityMean([ck.model for ck in cks]), specs.pop(), meta


def export_model(
    model: nn.Module,
    spec: InputSpec,
    out: str | Path,
    *,
    task: str = "segmentation",
    threshold: float = 0.5,
    model_name: str = "",
    source: str = "",
    opset: int = DEFAULT_OPSET,
    atol: float = PARITY_ATOL,
    real: torch.Tensor | None = None,
    extra: dict[str, str] | None = None,
) -> ExportResult:
    """Write `model` as ONNX with `spec` and `threshold` in its metadata; on a parity failure nothing is written.

    The model is traced at batch 1 (`trace_onnx`) and checked at batch 3, which proves the batch axis
    dynamic.
    """
    out = Path(out)
    model = model.cpu().eval()
    shape = (len(spec.channels), len(spec.frames), spec.image_size, spec.image_size)
    meta = {
        "format_version": str(ONNX_FORMAT_VERSION),
        "task": task,
        "threshold": repr(float(threshold)),
        "model": model_name,
        "source": source,
        "input": json.dumps(spec.as_dict()),
        **(extra or {}),
    }
    rand = torch.rand(3, *shape, generator=torch.Generator().manual_seed(0))
    try:
        with atomic_path(out) as tmp:
            trace_onnx(model, torch.rand(1, *shape), tmp, meta, opset, model_name)
            session = onnx_session(tmp, torch.device("cpu"))
            diff_random = _parity(model, session, rand)
            diff_real = _parity(model, session, real) if real is not None else None
            worst = max(d for d in (diff_random, diff_real) if d is not None)
            if not worst <= atol:
                raise ExportError(
                    f"ONNX and PyTorch probabilities differ by up to {worst:.2e} (allowed {atol:g}); "
                    f"{out} was not written."
                )
    except OSError as exc:
        raise ExportError(f"cannot write {out} ({exc.strerror or exc}).") from None
    return ExportResult(out, diff_random, diff_real, 0 if real is None else len(real), shape)


def _parity(model: nn.Module, session, x: torch.Tensor) -> float:
    with torch.no_grad():
        expected = torch.sigmoid(model(x).float()).numpy()
    got = 1 / (1 + np.exp(-session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0].astype(np.float64)))
    return float(np.abs(got - expected).max())

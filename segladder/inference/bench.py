"""The inference benchmark: a registered model's samples/s in PyTorch and in onnxruntime on the CPU."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from segladder.data.contrails import resolve_channels
from segladder.inference.export import export_model
from segladder.inference.inputs import InputSpec


def bench_inference(
    model: str = "ResNet18_U",
    *,
    image_size: int = 256,
    frames: int = 5,
    batch_size: int = 8,
    seconds: float = 10.0,
    threads: int | None = None,
    **model_kwargs,
) -> dict:
    """Inference samples/s of a registered model (random weights) on the CPU: PyTorch vs onnxruntime.

    Both run the same fp32 model on the same random (B, 3, T, H, W) batch; the ONNX copy is exported
    and parity-checked like `segladder export onnx`. Times exclude one warm-up batch.
    """
    import onnxruntime as ort

    from segladder.models import create

    if threads:
        torch.set_num_threads(threads)
    net = create(model, pretrained=False, **model_kwargs).eval()
    spec = InputSpec(tuple(range(frames)), resolve_channels(["ash"]), image_size)
    x = torch.rand(
        batch_size,
        len(spec.channels),
        frames,
        image_size,
        image_size,
        generator=torch.Generator().manual_seed(0),
    )

    def rate(run: Callable[[], object]) -> float:
        run()
        n, start = 0, time.perf_counter()
        while True:
            run()
            n += batch_size
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return n / elapsed

    with torch.inference_mode():
        torch_rate = rate(lambda: net(x))
    with tempfile.TemporaryDirectory(prefix="segladder-bench-") as tmp:
        exported = export_model(net, spec, Path(tmp) / "model.onnx", model_name=model)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(exported.path), opts, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        onnx_rate = rate(lambda: session.run(None, feed))
    return {
        "model": model,
        "input": list(x.shape),
        "threads": torch.get_num_threads(),
        "torch_samples_per_s": torch_rate,
        "onnx_samples_per_s": onnx_rate,
        "parity_max_abs_diff": exported.max_abs_diff_random,
    }

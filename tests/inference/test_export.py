import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from segladder.cli import app
from segladder.cli import predict as _cli  # noqa: F401  (registers the commands)
from segladder.inference.checkpoint import load_checkpoint
from segladder.inference.errors import ExportError
from segladder.inference.export import export_model, export_onnx
from segladder.inference.inputs import InputSpec
from segladder.inference.predict import predict
from segladder.inference.segmenters import OnnxSegmenter
from tests.inference.helpers import make_checkpoint


@pytest.fixture(scope="module")
def exported(synth_root, seg_ckpt, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "seg.onnx"
    return export_onnx(seg_ckpt, path, data=synth_root)


@pytest.mark.medium
def test_parity_on_random_and_real_input(exported):
    assert exported.max_abs_diff_random <= 1e-4
    assert exported.max_abs_diff_real is not None and exported.max_abs_diff_real <= 1e-4
    assert exported.real_records == 4


@pytest.mark.medium
def test_dynamic_batch_and_metadata(exported, seg_ckpt):
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    x = torch.rand(5, 3, 5, 32, 32)
    got = session.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        expected = load_checkpoint(seg_ckpt).model(x).numpy()
    assert got.shape == (5, 1, 32, 32)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    seg = OnnxSegmenter(exported.path)
    assert seg.spec == InputSpec((0, 1, 2, 3, 4), ("ash_r", "ash_g", "ash_b"), 32) and seg.threshold == 0.5


def test_predict_with_onnx_matches_pytorch(synth_root, seg_ckpt, exported, tmp_path):
    a = predict([], synth_root, tmp_path / "onnx", onnx=exported.path, progress=False)
    b = predict([seg_ckpt], synth_root, tmp_path / "torch", progress=False)
    assert a.threshold == b.threshold
    for f in sorted((tmp_path / "torch" / "probs").glob("*.npy")):
        p_onnx = np.load(tmp_path / "onnx" / "probs" / f.name).astype(np.float32)
        np.testing.assert_allclose(p_onnx, np.load(f).astype(np.float32), atol=1e-3)


def test_parity_failure_writes_nothing(tmp_path):
    class Flaky(torch.nn.Module):  # traced with one constant, so ONNX and PyTorch disagree afterwards
        def __init__(self):
            super().__init__()
            self.k = 0.0

        def forward(self, x):
            self.k += 1.0
            return x[:, :1, -1] * 0 + self.k

    with pytest.raises(ExportError, match="differ"):
        export_model(Flaky(), InputSpec((4,), ("ash_r", "ash_g", "ash_b"), 32), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_foreign_onnx_is_refused(tmp_path):
    path = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Identity(), (torch.rand(1, 3),), str(path), dynamo=False)
    with pytest.raises(ExportError, match="no segladder metadata"):
        OnnxSegmenter(path)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ExportError, match="not a readable ONNX"):
        OnnxSegmenter(tmp_path / "junk.onnx")


@pytest.mark.medium
def test_cli_export_classifier(tmp_path):
    ck = make_checkpoint(tmp_path / "cls.ckpt", "Classifier", task="classification", frames=(4,))
    r = CliRunner().invoke(app, ["export", "onnx", str(ck), "--out", str(tmp_path / "cls.onnx")])
    assert r.exit_code == 0, r.output
    assert "no --data given" in r.output
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "cls.onnx")).metadata_props}
    assert meta["segladder.task"] == "classification"
    with pytest.raises(ExportError, match="classification model"):
        OnnxSegmenter(tmp_path / "cls.onnx")

import json
import pathlib

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from segladder.cli import app
from segladder.cli import predict as _cli  # noqa: F401  (registers the commands)
from segladder.data.cache import CacheOptions, prepare_cache
from segladder.data.datasets import ContrailsDataset
from segladder.errors import DataError, SegladderError
from segladder.inference.checkpoint import CheckpointError, LoadedCheckpoint
from segladder.inference.errors import InferenceError
from segladder.inference.postprocess import binarize, remove_small_components
from segladder.inference.predict import predict
from segladder.inference.pseudo import pseudo_label
from segladder.inference.segmenters import Ensemble, TorchSegmenter, shift_along
from segladder.inference.submission import check_submission, read_submission, rle_decode
from segladder.metrics import global_dice
from tests.inference.helpers import experiment_config, make_checkpoint


def _ids(root, split):
    return sorted(p.name for p in (root / split).iterdir())


def test_outputs_are_consistent(synth_root, seg_ckpt, tmp_path):
    out = tmp_path / "pred"
    res = predict(
        [seg_ckpt], synth_root, out, split="validation", min_component=3, overlays=2, progress=False
    )
    ids = _ids(synth_root, "validation")
    assert res.records == len(ids) and res.threshold == 0.5 and res.submission_problems == []
    sub = read_submission(out / "submission.csv")
    assert list(sub) == ids
    assert check_submission(out / "submission.csv", synth_root, "validation") == []
    positive = 0
    for rid in ids:
        probs, mask = np.load(out / "probs" / f"{rid}.npy"), np.load(out / "masks" / f"{rid}.npy")
        assert probs.dtype == np.float16 and probs.shape == (32, 32) and mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, remove_small_components(binarize(probs, 0.5), 3))
        np.testing.assert_array_equal(rle_decode(sub[rid], (32, 32)), mask)
        positive += int(mask.sum())
    assert positive == res.positive_pixels > 0  # a random network marks some pixels
    ds = ContrailsDataset(synth_root, "validation", frames=[4], image_size=32)
    probs = np.stack([np.load(out / "probs" / f"{rid}.npy") for rid in ids])
    assert res.dice == pytest.approx(
        global_dice(probs.astype(np.float32), np.stack([ds[i]["mask"][0] for i in range(4)]), 0.5)
    )
    assert (out / "overlays" / "overlay_00000.png").stat().st_size > 0
    summary = json.loads((out / "predict.json").read_text())
    assert summary["threshold"] == 0.5 and summary["input"]["frames"] == [0, 1, 2, 3, 4]


def test_ensemble_weights_and_mixed_frames(synth_root, const_ckpts, tmp_path):
    # 0.2 everywhere (frames 0-4) and 0.8 everywhere (frame 4 only), weights 1:3 → 0.65; thresholds 0.3, 0.7 → 0.6.
    res = predict(const_ckpts, synth_root, tmp_path / "ens", split="test", weights=[1, 3], progress=False)
    assert res.threshold == pytest.approx(0.6)
    for rid in _ids(synth_root, "test"):
        p = np.load(tmp_path / "ens" / "probs" / f"{rid}.npy").astype(np.float32)
        np.testing.assert_allclose(p, 0.65, atol=1e-3)
    assert set(read_submission(tmp_path / "ens" / "submission.csv").values()) == {"1 1024"}


def test_percentile_threshold(synth_root, seg_ckpt, tmp_path):
    out = tmp_path / "pct"
    res = predict([seg_ckpt], synth_root, out, split="validation", percentile=95, progress=False)
    probs = np.stack([np.load(f) for f in sorted((out / "probs").glob("*.npy"))]).astype(np.float32).ravel()
    values = np.sort(probs)
    assert res.threshold == values[int(np.ceil(0.95 * values.size)) - 1]
    assert res.positive_pixels == int((probs > res.threshold).sum()) <= 0.05 * probs.size
    assert "percentile 95" in res.threshold_source


class _LastFrameChannel0(torch.nn.Module):
    def forward(self, x):
        return (x[:, :1, -1] - 0.5) * 10


def test_flip_tta_and_its_half_pixel_shift(synth_root):
    ck = LoadedCheckpoint(_LastFrameChannel0(), experiment_config(), 0.5, "segmentation", pathlib.Path("toy"))
    x = torch.rand(2, 3, 5, 32, 32)
    plain = TorchSegmenter(ck, torch.device("cpu")).probs(x)
    # A flip-equivariant model is unchanged by flip TTA ...
    torch.testing.assert_close(TorchSegmenter(ck, torch.device("cpu"), tta=True).probs(x), plain)
    # ... and with a shift, each flipped-back view moves one pixel along its axis.
    shifted = TorchSegmenter(ck, torch.device("cpu"), tta=True, tta_shift=1).probs(x)
    expected = (plain + shift_along(plain, 1, -1) + shift_along(plain, 1, -2)) / 3
    torch.testing.assert_close(shifted, expected)
    t = torch.arange(4.0)
    assert shift_along(t, 1, 0).tolist() == [1, 2, 3, 3] and shift_along(t, -1, 0).tolist() == [0, 0, 1, 2]


def test_masks_are_written_at_each_records_own_size(synth_copy, seg_ckpt, tmp_path):
    """A model at 32² on a split with an odd-sized (30×22) record: its map, mask and row fit the record."""
    from segladder.data.layout import BANDS, band_file

    odd = synth_copy / "test" / "9990001"
    odd.mkdir()
    rng = np.random.default_rng(0)
    for b in BANDS:
        np.save(odd / band_file(b), (260 + 20 * rng.random((30, 22, 8))).astype(np.float32))
    out = tmp_path / "o"
    r = CliRunner().invoke(
        app, ["predict", str(seg_ckpt), "--data", str(synth_copy), "--out", str(out), "--threshold", "0.5"]
    )
    assert r.exit_code == 0, r.output
    assert "warning" not in r.output and "4 records" in r.output
    mask = np.load(out / "masks" / "9990001.npy")
    assert mask.shape == (30, 22) and np.load(out / "probs" / "9990001.npy").shape == (30, 22)
    assert np.load(
        out / "masks" / f"{sorted(p.name for p in (synth_copy / 'test').iterdir())[0]}.npy"
    ).shape == (32, 32)
    assert check_submission(out / "submission.csv", synth_copy, "test") == []
    rows = dict(line.split(",") for line in (out / "submission.csv").read_text().splitlines()[1:])
    np.testing.assert_array_equal(rle_decode(rows["9990001"], (30, 22)), mask)
    assert json.loads((out / "predict.json").read_text())["submission_problems"] == []


def test_a_model_at_another_size_than_the_records_writes_masks_at_the_records_size(synth_root, tmp_path):
    big = make_checkpoint(tmp_path / "big.ckpt", image_size=64)
    res = predict([big], synth_root, tmp_path / "o", progress=False)
    assert res.submission_problems == []
    assert np.load(next((tmp_path / "o" / "masks").glob("*.npy"))).shape == (32, 32)
    assert check_submission(res.submission, synth_root, "test") == []


def test_cli_predict(synth_root, seg_ckpt, tmp_path):
    out = tmp_path / "cli"
    r = CliRunner().invoke(
        app,
        [
            "predict",
            str(seg_ckpt),
            "--data",
            str(synth_root),
            "--out",
            str(out),
            "--threshold",
            "0.6",
            "--tta",
            "--min-component",
            "2",
            "--batch-size",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "3 records" in r.output and "(fixed)" in r.output
    assert check_submission(out / "submission.csv", synth_root, "test") == []


# ----------------------------------------------------------------------------------- bad input


@pytest.mark.medium
def test_refuses_bad_checkpoints_before_work(synth_root, seg_ckpt, tmp_path):
    cls = make_checkpoint(tmp_path / "cls.ckpt", "Classifier", task="classification")
    with pytest.raises(CheckpointError, match="classification checkpoint"):
        predict([cls], synth_root, tmp_path / "o1", progress=False)
    v2 = make_checkpoint(tmp_path / "v2.ckpt", version=2)
    with pytest.raises(CheckpointError, match="version 2"):
        predict([v2], synth_root, tmp_path / "o2", progress=False)
    big = make_checkpoint(tmp_path / "big.ckpt", image_size=64)
    with pytest.raises(InferenceError, match="different image sizes"):
        predict([seg_ckpt, big], synth_root, tmp_path / "o3", progress=False)
    for out in ("o1", "o2", "o3"):
        assert not (tmp_path / out / "probs").exists()


def test_refuses_a_malicious_pickle(synth_root, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "segladder": {"version": 1}, "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        predict([path], synth_root, tmp_path / "out", progress=False)
    assert not marker.exists()


def test_refuses_data_the_checkpoint_cannot_read(synth_root, seg_ckpt, tmp_path):
    cache = tmp_path / "cache"
    prepare_cache(
        synth_root,
        cache,
        CacheOptions(frames=(4,), image_size=32),
        ["train", "validation"],
        workers=1,
        progress=False,
    )
    with pytest.raises(DataError, match="frames"):
        predict([seg_ckpt], cache, tmp_path / "o", split="validation", progress=False)
    assert not (tmp_path / "o" / "probs").exists()


def test_refuses_an_empty_split_and_an_unwritable_output(synth_copy, seg_ckpt, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(InferenceError, match="not writable"):
        predict([seg_ckpt], synth_copy, blocker / "out", progress=False)
    for rec in (synth_copy / "test").iterdir():
        for f in rec.iterdir():
            f.unlink()
        rec.rmdir()
    with pytest.raises(DataError, match="no record"):
        predict([seg_ckpt], synth_copy, tmp_path / "o", progress=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"threshold": 0.5, "percentile": 99}, "not both"),
        ({"threshold": 2.0}, r"\[0, 1\]"),
        ({"weights": [1, 2]}, "2 ensemble weight"),
        ({"weights": [-1]}, "positive"),
        ({"device": "cuda:7" if not torch.cuda.is_available() else "nonsense"}, "device"),
    ],
)
def test_option_errors(synth_root, seg_ckpt, tmp_path, kwargs, match):
    with pytest.raises(SegladderError, match=match):
        predict([seg_ckpt], synth_root, tmp_path / "o", progress=False, **kwargs)


def test_ensemble_needs_models():
    with pytest.raises(InferenceError, match="at least one"):
        Ensemble([])


def test_pseudo_labels(synth_root, seg_ckpt, tmp_path):
    out = tmp_path / "pseudo"
    r = CliRunner().invoke(
        app,
        [
            "pseudo-label",
            str(seg_ckpt),
            "--data",
            str(synth_root),
            "--out",
            str(out),
            "--split",
            "validation",
            "--tta",
        ],
    )
    assert r.exit_code == 0, r.output
    index = json.loads((out / "index.json").read_text())
    assert index["records"] == _ids(synth_root, "validation") and index["split"] == "validation"
    assert index["format"] == "segladder-pseudo-labels" and index["shape"] == [32, 32] and index["tta"]
    for rid in index["records"]:
        p = np.load(out / index["path"].format(record_id=rid))
        assert p.dtype == np.float16 and p.shape == (32, 32) and 0 <= p.min() and p.max() <= 1
    with pytest.raises(InferenceError, match="teacher"):
        pseudo_label([], synth_root, tmp_path / "none", progress=False)

"""Every command's happy path at tiny size and its documented bad inputs: exit code and the one-line message.

All cases of this module run, in order, through the real entry point in one fresh interpreter (see
conftest.py); each case is then its own test. Order matters where a case uses an earlier one's output
(export → predict --onnx → submission check).
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch

from tests.cli.conftest import run_many

CUDA = torch.cuda.is_available()

# (id, argv with {placeholders}, expected exit code, regex the `error:` line (code 2) or stdout must match)
CASES = [
    # synth
    ("synth-zero-records", "synth contrails {tmp}/s0 --records 0", 2, r"^error: --records is 0"),
    (
        "synth-tiny",
        "synth contrails {tmp}/s1 --records 2 --val-records 1 --test-records 1 --size 16 --no-progress",
        0,
        r"4 record\(s\) written",
    ),
    (
        "synth-again-resumes",
        "synth contrails {tmp}/s1 --records 2 --val-records 1 --test-records 1 --size 16 --no-progress",
        0,
        r"0 record\(s\) written, 4 already present",
    ),
    (
        "synth-other-seed",
        "synth contrails {tmp}/s1 --records 2 --size 16 --seed 3 --no-progress",
        2,
        r"^error: .*--overwrite",
    ),
    # data check
    ("check-good", "data check {raw}", 0, r"checked 19 records .*: all good"),
    ("check-bad-record", "data check {bad}", 1, r"(?m)^{bad_id}: missing band_11\.npy$(?s:.*)1 bad$"),
    ("check-no-root", "data check {tmp}/nowhere", 2, r"^error: .*nowhere"),
    ("check-no-argument", "data check", 2, r"^error: Missing argument 'root'; see `.* data check --help`$"),
    # data prepare
    (
        "prepare-bad",
        "data prepare {bad} --out {tmp}/c1 --size 32 --frames 3,4",
        2,
        r"^error: 1 bad record\(s\) in .*\n  {bad_id}: missing band_11\.npy\n.*--skip-bad",
    ),
    (
        "prepare-skip-bad",
        "data prepare {bad} --out {tmp}/c1 --size 32 --frames 3,4 --skip-bad",
        0,
        r"train\s*│\s*12\s*│\s*1\s*│",
    ),
    (
        "prepare-other-options",
        "data prepare {bad} --out {tmp}/c1 --size 32 --frames 2-4 --skip-bad",
        2,
        r"^error: .*other options.*--overwrite",
    ),
    (
        "prepare-overwrite",
        "data prepare {bad} --out {tmp}/c1 --size 32 --frames 2-4 --skip-bad --overwrite",
        0,
        r"frames \[2, 3, 4\]",
    ),
    # Without --size the cache keeps the records' own size (32² here), never a silent upsampling.
    ("prepare-native-size", "data prepare {raw} --out {tmp}/c3 --frames 4 --splits validation", 0, r", 32²"),
    ("prepare-bad-frames", "data prepare {raw} --out {tmp}/c2 --frames 2-x", 2, r"^error: --frames '2-x'"),
    (
        "prepare-bad-channel",
        "data prepare {raw} --out {tmp}/c2 --channels nosuch",
        2,
        r"^error: unknown input channel 'nosuch'",
    ),
    # models
    ("models-show", "models show ResNet18_U", 0, r"^ResNet18_U: (?s:.*)options:"),
    ("models-show-unknown", "models show ResNet18U", 2, r"^error: unknown model 'ResNet18U'"),
    # train: config errors before any work
    (
        "train-unknown-key",
        "train tiny_synthetic --set data.root={cache} optim.lrr=1",
        2,
        r"^error: --set optim\.lrr=1: unknown key 'optim\.lrr'\. Did you mean:? lr\?$",
    ),
    (
        "train-bad-value",
        "train tiny_synthetic --set data.root={cache} trainer.max_epochs=abc",
        2,
        r"^error: --set trainer\.max_epochs=abc: .*valid integer[^\n]*$",
    ),
    (
        "train-unknown-config",
        "train nosuchconfig",
        2,
        r"^error: config file .*nosuchconfig\.yaml does not exist",
    ),
    ("train-set-without-value", "train tiny_synthetic --set data.root", 2, r"^error: --set 'data\.root'"),
    ("train-resume-no-config", "train --resume {raw}", 2, r"^error: --resume .*: no config\.yaml there"),
    (
        "train-resume-and-config",
        "train tiny_synthetic --resume {seg}",
        2,
        r"^error: .*--resume takes the config",
    ),
    # evaluate
    (
        "evaluate-classifier",
        "evaluate {cls}/checkpoints/best.ckpt --data {raw}",
        2,
        r"^error: .*a classification checkpoint; evaluate scores segmentation masks",
    ),
    (
        "evaluate-unlabelled",
        "evaluate {seg}/checkpoints/best.ckpt --data {raw} --split test",
        2,
        r"^error: split 'test' of .* has no masks",
    ),
    (
        "evaluate-unknown-split",
        "evaluate {seg}/checkpoints/best.ckpt --data {raw} --split nosuch",
        2,
        r"^error: unknown split 'nosuch'",
    ),
    (
        "evaluate",
        "evaluate {seg}/checkpoints/best.ckpt --data {cache} --out {tmp}/eval",
        0,
        r"4 records of validation",
    ),
    # viz
    (
        "viz-classifier",
        "viz {cls} --data {raw}",
        2,
        r"^error: .*a classification run; viz draws segmentation",
    ),
    ("viz-no-checkpoint", "viz {raw}", 2, r"^error: .*no checkpoints/best\.ckpt"),
    ("viz", "viz {seg} --data {raw} --records 2", 0, r"written: .*overlays_validation\.png"),
    # export and ONNX predict
    (
        "export-opset-unknown",
        "export onnx {seg}/checkpoints/best.ckpt --out {tmp}/x.onnx --opset 100",
        2,
        r"^error: opset 100: .*--opset 17",
    ),
    (
        "export-opset-too-old",
        "export onnx {seg}/checkpoints/best.ckpt --out {tmp}/x.onnx --opset 5",
        2,
        r"^error: Invalid value for '--opset'",
    ),
    (
        "export-atol-negative",
        "export onnx {seg}/checkpoints/best.ckpt --out {tmp}/x.onnx --atol -1",
        2,
        r"^error: Invalid value for '--atol'",
    ),
    (
        "export-atol-tiny",
        "export onnx {seg}/checkpoints/best.ckpt --out {tmp}/x.onnx --atol 1e-12",
        2,
        r"^error: ONNX and PyTorch probabilities differ by up to .*allowed 1e-12.*was not written",
    ),
    (
        "export",
        "export onnx {seg}/checkpoints/best.ckpt --out {tmp}/m.onnx --opset 17 --atol 1e-4 --data {raw}",
        0,
        r"wrote .*m\.onnx; .* on 4 real records",
    ),
    (
        "predict-onnx",
        "predict --onnx {tmp}/m.onnx --data {raw} --out {tmp}/p-onnx",
        0,
        r"3 records → .*p-onnx",
    ),
    (
        "predict-onnx-missing",
        "predict --onnx {tmp}/none.onnx --data {raw} --out {tmp}/p1",
        2,
        r"^error: ONNX model .*none\.onnx does not exist",
    ),
    (
        "predict-onnx-and-ckpt",
        "predict {seg}/checkpoints/best.ckpt --onnx {tmp}/m.onnx --data {raw} --out {tmp}/p1",
        2,
        r"^error: give checkpoint\(s\) or --onnx MODEL, not both",
    ),
    ("predict-nothing", "predict --data {raw} --out {tmp}/p1", 2, r"^error: give checkpoint\(s\) or --onnx"),
    (
        "predict-weights-parse",
        "predict {seg}/checkpoints/best.ckpt --weights 1,x --data {raw} --out {tmp}/p1",
        2,
        r"^error: --weights '1,x'",
    ),
    (
        "predict-weights-count",
        "predict {seg}/checkpoints/best.ckpt --weights 1,2 --data {raw} --out {tmp}/p1",
        2,
        r"^error: 2 ensemble weight\(s\) for 1 model",
    ),
    (
        "predict-threshold-and-percentile",
        "predict {seg}/checkpoints/best.ckpt --threshold 0.3 --percentile 99 --data {raw} --out {tmp}/p1",
        2,
        r"^error: give --threshold or --percentile, not both",
    ),
    # submission check
    (
        "submission-good",
        "submission check {tmp}/p-onnx/submission.csv --data {raw}",
        0,
        r"submission\.csv: ok",
    ),
    (
        "submission-bad-header",
        "submission check {tmp}/bad-header.csv --data {raw}",
        1,
        r"line 1: header 'id,encoded_pixels'(?s:.*)1 problem\(s\)",
    ),
    (
        "submission-missing-file",
        "submission check {tmp}/none.csv",
        2,
        r"^error: .*none\.csv.* does not exist",
    ),
    # pipeline
    (
        "pipeline-threshold",
        "pipeline run {tmp}/pipe.yaml --data {raw} --out {tmp}/pipe-t --threshold 0.3",
        0,
        r"at threshold 0\.3 \(fixed\)",
    ),
    (
        "pipeline-percentile",
        "pipeline run {tmp}/pipe.yaml --data {raw} --out {tmp}/pipe-p --percentile 99",
        0,
        r"\(percentile 99 of all pixels\)",
    ),
    (
        "pipeline-both",
        "pipeline run {tmp}/pipe.yaml --data {raw} --out {tmp}/pipe-x --threshold 0.3 --percentile 99",
        2,
        r"^error: give --threshold or --percentile, not both",
    ),
    (
        "pipeline-percentile-range",
        "pipeline run {tmp}/pipe.yaml --data {raw} --out {tmp}/pipe-x --percentile 101",
        2,
        r"^error: --percentile 101: must lie in \[0, 100\]",
    ),
    (
        "pipeline-threshold-range",
        "pipeline run {tmp}/pipe.yaml --data {raw} --out {tmp}/pipe-x --threshold 1.5",
        2,
        r"^error: --threshold 1\.5: .*\[0, 1\]",
    ),
    (
        "pipeline-evaluate",
        "pipeline evaluate {tmp}/pipe.yaml --data {raw} --out {tmp}/pipe-e",
        0,
        r"4 records of validation, 3 with contrails",
    ),
    # pseudo-label
    (
        "pseudo-label",
        "pseudo-label {seg}/checkpoints/best.ckpt --data {raw} --out {tmp}/pl --split validation",
        0,
        r"4 soft labels of validation",
    ),
    (
        "pseudo-label-out-is-a-file",
        "pseudo-label {seg}/checkpoints/best.ckpt --data {raw} --out {tmp}/a-file",
        2,
        r"^error: --out \S*a-file is a file; give a folder \(new or existing\) for the outputs\.$",
    ),
    (
        "pseudo-label-labels-is-a-file",
        "pseudo-label {seg}/checkpoints/best.ckpt --data {raw} --out {tmp}/broken",
        2,
        r"^error: \S*broken/labels is a file where the output folder labels/ goes; remove it or choose "
        r"another --out\.$",
    ),
    # parse errors of the other list options
    (
        "bench-train-modes",
        "bench train --modes fp32,nosuch --skip-data",
        2,
        r"^error: Invalid value for --modes: unknown mode\(s\) \['nosuch'\]",
    ),
    ("ladder-budget-key", "ladder --data {cache} --budget foo=1", 2, r"^error: .*--budget.*'foo=1'"),
    (
        "ladder-budget-value",
        "ladder --data {cache} --budget epochs=x",
        2,
        r"^error: --budget 'epochs=x': use epochs=N, .* with N ≥ 1",
    ),
    # bench smoke runs
    (
        "bench-data",
        "bench data --records 2 --frames 3-4 --seconds 0.1",
        0,
        r"speed-up over raw: uint8 [\d.]+×",
    ),
    (
        "bench-train",
        "bench train --size 32 --batch 2 --steps 1 --warmup 1 --data {bench_cache} --workers 0 --frames 2",
        0,
        r'"mode": "trainer_cache_aug_fp32"',
    ),
]
if not CUDA:  # with a GPU, 16-mixed is valid (tests/training/test_config.py checks the config there)
    CASES.append(
        (
            "train-16-mixed-on-cpu",
            "train tiny_synthetic --set data.root={cache} trainer.precision=16-mixed",
            2,
            r"^error: trainer\.precision 16-mixed needs a CUDA device; use 32 or bf16-mixed on CPU\.$",
        )
    )


@pytest.fixture(scope="module")
def ctx(cli_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cases")
    bad = tmp / "bad"
    shutil.copytree(cli_data["raw"], bad)
    bad_id = sorted(p.name for p in (bad / "train").iterdir())[0]
    (bad / "train" / bad_id / "band_11.npy").unlink()
    (tmp / "bad-header.csv").write_text(
        "id,encoded_pixels\n" + "".join(f"{p.name},-\n" for p in sorted((cli_data["raw"] / "test").iterdir()))
    )
    (tmp / "a-file").write_text("not a folder")
    (tmp / "broken").mkdir()
    (tmp / "broken" / "labels").write_text("a file where the labels folder goes")
    (tmp / "pipe.yaml").write_text(
        f"classifier: {cli_data['cls']}/checkpoints/best.ckpt\n"
        f"stage2: [{cli_data['seg']}/checkpoints/best.ckpt]\n"
    )
    # bench train reads a cache at its --size holding its frames (T=2: frames 3, 4)
    from segladder.data.cache import CacheOptions, prepare_cache

    bench_cache = tmp / "bench-cache"
    prepare_cache(
        cli_data["raw"],
        bench_cache,
        CacheOptions(frames=(3, 4), image_size=32),
        ["train"],
        workers=1,
        progress=False,
    )
    values = {
        **{k: str(v) for k, v in cli_data.items()},
        "tmp": str(tmp),
        "bad": str(bad),
        "bad_id": bad_id,
        "bench_cache": str(bench_cache),
    }
    argvs = [argv.format(**values).split() for _, argv, _, _ in CASES]
    results = run_many(argvs, tmp)
    return {"tmp": tmp, "values": values, "results": dict(zip([c[0] for c in CASES], results, strict=True))}


@pytest.mark.parametrize(
    "name, code, pattern", [(c[0], c[2], c[3]) for c in CASES], ids=[c[0] for c in CASES]
)
@pytest.mark.medium
def test_exit_code_and_message(ctx, name, code, pattern):
    r = ctx["results"][name]
    assert r.code == code, str(r)
    pattern = pattern.replace("{bad_id}", ctx["values"]["bad_id"])
    if code == 2:
        assert re.search(pattern, r.error()), str(r)
    else:
        assert "Traceback" not in r.out + r.err and not any(
            s.startswith("error:") for s in r.err.splitlines()
        ), str(r)
        assert re.search(pattern, r.out), str(r)


@pytest.mark.medium
def test_files_the_happy_paths_promise(ctx):
    tmp = ctx["tmp"]
    ev = json.loads((tmp / "eval" / "metrics.json").read_text())
    assert 0 <= ev["dice_best"] <= 1 and (tmp / "eval" / "per_record.csv").read_text().count("\n") == 5
    assert (tmp / "eval" / "threshold_curve.png").stat().st_size > 1000
    assert not (tmp / "x.onnx").exists()  # a failed parity check writes nothing
    pred = json.loads((tmp / "p-onnx" / "predict.json").read_text())
    assert pred["records"] == 3 and pred["models"][0]["model"].endswith("m.onnx")
    fixed = json.loads((tmp / "pipe-t" / "predict.json").read_text())
    assert (fixed["threshold"], fixed["threshold_source"]) == (0.3, "fixed")
    pct = json.loads((tmp / "pipe-p" / "predict.json").read_text())
    assert pct["threshold_source"].startswith("percentile 99")
    # At the 99th percentile about 1% of the test pixels are above the threshold (ties aside).
    masks = [np.load(p) for p in sorted((tmp / "pipe-p" / "probs").glob("*.npy"))]
    probs = np.concatenate([m.ravel().astype(np.float32) for m in masks])
    assert (probs > pct["threshold"]).mean() <= 0.011
    assert (tmp / "pipe-e" / "per_record.csv").exists()
    index = json.loads((tmp / "pl" / "index.json").read_text())
    assert len(index["records"]) == 4 and index["split"] == "validation"
    assert (
        sorted(p.name for p in (tmp / "c1" / "train").iterdir()) and (tmp / "c1" / "manifest.json").exists()
    )

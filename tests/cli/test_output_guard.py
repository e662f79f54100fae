"""One guard for outputs (`segladder.io.refuse_overwriting_inputs`): every command that writes refuses, before
any work, an output that is one of its inputs or already exists inside one; a new path inside is fine.

The refusals happen before any file is read, so the inputs here are stand-ins (a checkpoint of a few bytes).
"""

from __future__ import annotations

import re

import pytest

from segladder.errors import SegladderError
from segladder.io import refuse_overwriting_inputs, run_folder_of


@pytest.fixture
def tree(tmp_path):
    """ROOT (a dataset: splits and metadata), RUN (a run with checkpoints/best.ckpt and metrics.json),
    a pipeline YAML and COCO boxes; every file's bytes are remembered to prove none changed."""
    root = tmp_path / "root"
    for split in ("train", "validation"):
        (root / split / "1000").mkdir(parents=True)
        (root / f"{split}_metadata.json").write_text("[]\n")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.ckpt").write_bytes(b"not really weights")
    (run / "metrics.json").write_text('{"final": {}}\n')
    (run / "config.yaml").write_text("name: x\n")
    (tmp_path / "pipeline.yaml").write_text("segmenter: x\n")
    (tmp_path / "images").mkdir()
    (tmp_path / "val.json").write_text("{}\n")
    return tmp_path, {p: p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")}


# (id, argv with {t} = the tree's folder, regex of the one `error:` line)
CASES = [
    (
        "data-folds-over-metadata",
        "data folds {t}/root --out {t}/root/train_metadata.json",
        r"--out \S*train_metadata\.json already exists inside the input ROOT \(\S*root\): it would be "
        r"overwritten; give a new path \(nothing was written\)\.$",
    ),
    (
        "data-folds-over-root",
        "data folds {t}/root --out {t}/root",
        r"--out \S*root is the input ROOT \(\S*root\): it would be overwritten; write to another folder",
    ),
    (
        "data-prepare-into-a-split",
        "data prepare {t}/root --out {t}/root/train/cache",
        r"--out \S*train/cache lies inside the input ROOT/train \(\S*\), where anything new would be read",
    ),
    (
        "data-prepare-over-root",
        "data prepare {t}/root --out {t}/root",
        r"--out \S*root is the input ROOT ",
    ),
    (
        "synth-compare-json-over-metadata",
        "synth compare {t}/root {t}/root --json {t}/root/validation_metadata.json --no-progress",
        r"--json \S*validation_metadata\.json already exists inside the input REAL",
    ),
    (
        "synth-compare-out-over-real",
        "synth compare {t}/root --out {t}/root --no-progress",
        r"--out \S*root is the input REAL ",
    ),
    (
        "evaluate-over-its-run",
        "evaluate {t}/run/checkpoints/best.ckpt --data {t}/root --out {t}/run",
        r"--out \S*run is the input the run folder of CHECKPOINT \(\S*run\)",
    ),
    (
        "evaluate-into-the-data",
        "evaluate {t}/run/checkpoints/best.ckpt --data {t}/root --out {t}/root/validation",
        r"--out \S*validation already exists inside the input --data",
    ),
    (
        "predict-over-its-run",
        "predict {t}/run/checkpoints/best.ckpt --data {t}/root --out {t}/run",
        r"--out \S*run is the input the run folder of CHECKPOINT ",
    ),
    (
        "predict-over-the-data",
        "predict {t}/run/checkpoints/best.ckpt --data {t}/root --out {t}/root",
        r"--out \S*root is the input --data ",
    ),
    (
        "predict-folds-over-the-run",
        "predict {t}/run --folds --data {t}/root --out {t}/run",
        r"--out \S*run is the input CHECKPOINT ",
    ),
    (
        "pseudo-label-into-a-split",
        "pseudo-label {t}/run/checkpoints/best.ckpt --data {t}/root --out {t}/root/train",
        r"--out \S*root/train already exists inside the input --data ",
    ),
    (
        "pipeline-run-over-the-data",
        "pipeline run {t}/pipeline.yaml --data {t}/root --out {t}/root",
        r"--out \S*root is the input --data ",
    ),
    (
        "pipeline-evaluate-over-the-pipeline",
        "pipeline evaluate {t}/pipeline.yaml --data {t}/root --out {t}/pipeline.yaml",
        r"--out \S*pipeline\.yaml is the input PIPELINE ",
    ),
    (
        "export-onnx-over-the-checkpoint",
        "export onnx {t}/run/checkpoints/best.ckpt --out {t}/run/checkpoints/best.ckpt",
        r"--out \S*best\.ckpt is the input CHECKPOINT \(\S*\): it would be overwritten; write to another file",
    ),
    (
        "export-onnx-over-run-metrics",
        "export onnx {t}/run --folds --out {t}/run/metrics.json",
        r"--out \S*metrics\.json already exists inside the input CHECKPOINT ",
    ),
    (
        "distill-compare-out-over-the-data",
        "distill compare {t}/run/checkpoints/best.ckpt {t}/run/checkpoints/best.ckpt --data {t}/root "
        "--out {t}/root",
        r"--out \S*root is the input --data ",
    ),
    (
        "bench-boxes-json-over-annotations",
        "bench boxes {t}/run/checkpoints/best.ckpt --images {t}/images --annotations {t}/val.json "
        "--json {t}/val.json",
        r"--json \S*val\.json is the input --annotations ",
    ),
    (
        "train-over-the-data",
        "train tiny_synthetic --out {t}/root --set data.root={t}/root",
        r"--out \S*root is the input data\.root ",
    ),
]


@pytest.mark.parametrize("argv, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_writing_command_refuses_an_output_over_its_inputs(tree, capsys, argv, pattern):
    from segladder.cli import run

    tmp, before = tree
    code = run(argv.format(t=tmp).split())
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, out + err
    assert lines[0].startswith("error: ") and re.search(pattern, lines[0]), lines[0]
    assert set(tmp.rglob("*")) == set(before), "something was written"
    assert all(p.read_bytes() == b for p, b in before.items() if b is not None)


def test_a_new_path_inside_an_input_is_fine_an_existing_one_or_the_input_itself_is_not(tmp_path):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "meta.json").write_text("{}")
    refuse_overwriting_inputs({"--out": data / "new"}, {"--data": data})
    refuse_overwriting_inputs({"--out": data / "new.csv"}, {"--data": data})
    refuse_overwriting_inputs({"--out": tmp_path / "elsewhere"}, {"--data": data, "--none": None})
    for out in (data, data / "meta.json", data / "train", tmp_path / "data" / ".." / "data"):
        with pytest.raises(SegladderError, match="nothing was written"):
            refuse_overwriting_inputs({"--out": out}, {"--data": data})
    # a folder whose subfolders are other commands' outputs: only the folder itself is refused
    refuse_overwriting_inputs({"--out": data / "train"}, {"RUN": data}, shallow=("RUN",))
    with pytest.raises(SegladderError, match="is the input RUN"):
        refuse_overwriting_inputs({"--out": data}, {"RUN": data}, shallow=("RUN",))
    # a sealed input (a dataset's split) takes nothing new either
    with pytest.raises(SegladderError, match="where anything new would be read as input"):
        refuse_overwriting_inputs(
            {"--out": data / "train" / "new"}, {"split": data / "train"}, sealed=("split",)
        )
    # a link to an input is the input
    (tmp_path / "link.json").symlink_to(data / "meta.json")
    with pytest.raises(SegladderError, match="is the input GT"):
        refuse_overwriting_inputs({"--out": tmp_path / "link.json"}, {"GT": data / "meta.json"})


def test_the_run_folder_of_a_checkpoint(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "best.ckpt").write_bytes(b"x")
    assert run_folder_of(tmp_path / "run" / "checkpoints" / "best.ckpt") == tmp_path / "run"
    (tmp_path / "s2r").mkdir()
    (tmp_path / "s2r" / "config.yaml").write_text("name: x\n")
    assert run_folder_of(tmp_path / "s2r" / "best.ckpt") == tmp_path / "s2r"
    assert run_folder_of(tmp_path / "loose.ckpt") is None and run_folder_of(None) is None

"""Bad input to the distill, boxes, folds and export commands, through the real entry point: exit 2, one
`error:` line naming the file or option and the fix, and no input overwritten.

All cases run, in order, in one fresh interpreter (see conftest.py); each case is then its own test.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from tests.cli.conftest import run_many

# Files that are not checkpoints, each given where a checkpoint is read.
NOT_CHECKPOINTS = {
    "text": ("notes.txt", "a text file"),
    "csv": ("table.csv", "a text file"),
    "png": ("picture.png", "a PNG image"),
    "empty": ("empty.ckpt", "an empty file"),
    "folder": ("folder.ckpt", "a folder"),
}

# (id, argv with {placeholders}, expected exit code, regex the `error:` line (code 2) or stdout must match)
CASES = [
    *[
        (
            f"evaluate-{kind}",
            f"evaluate {{tmp}}/{name} --data {{raw}}",
            2,
            rf"^error: \S*{re.escape(name)} is not a segladder checkpoint \({what}\); give a best\.ckpt",
        )
        for kind, (name, what) in NOT_CHECKPOINTS.items()
    ],
    (
        "predict-csv",
        "predict {tmp}/table.csv --data {raw} --out {tmp}/p-csv",
        2,
        r"^error: \S*table\.csv is not a segladder checkpoint \(a text file\)",
    ),
    (
        "distill-compare-teacher-text",
        "distill compare {tmp}/notes.txt {seg}/checkpoints/best.ckpt --data {raw} --out {tmp}/dc-text",
        2,
        r"^error: \S*notes\.txt is not a segladder checkpoint \(a text file\)",
    ),
    (
        "distill-compare-student-png",
        "distill compare {seg}/checkpoints/best.ckpt {tmp}/picture.png --data {raw} --out {tmp}/dc-png",
        2,
        r"^error: \S*picture\.png is not a segladder checkpoint \(a PNG image\)",
    ),
    (
        "distill-teacher-csv",
        "train distill_b0_from_b3 --out {tmp}/run-teacher-csv --set data.root={cache} "
        "distill.teacher={tmp}/table.csv",
        2,
        r"^error: distill\.teacher: \S*table\.csv is not a segladder checkpoint \(a text file\)",
    ),
    (
        "boxes-export-text",
        "boxes export {tmp}/notes.txt {tmp}/b.onnx",
        2,
        r"^error: \S*notes\.txt is not a segladder checkpoint \(a text file\)",
    ),
    (
        "export-onnx-empty",
        "export onnx {tmp}/empty.ckpt --out {tmp}/e.onnx",
        2,
        r"^error: \S*empty\.ckpt is not a segladder checkpoint \(an empty file\)",
    ),
]


@pytest.fixture(scope="module")
def ctx(cli_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad-inputs")
    (tmp / "notes.txt").write_text("these are my notes, not weights\n")
    (tmp / "table.csv").write_text("id,encoded_pixels\n1000216489776414077,1 3\n")
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp / "picture.png")
    (tmp / "empty.ckpt").write_bytes(b"")
    (tmp / "folder.ckpt").mkdir()
    values = {**{k: str(v) for k, v in cli_data.items()}, "tmp": str(tmp)}
    argvs = [argv.format(**values).split() for _, argv, _, _ in CASES]
    results = run_many(argvs, tmp)
    return {"tmp": tmp, "values": values, "results": dict(zip([c[0] for c in CASES], results, strict=True))}


@pytest.mark.parametrize(
    "name, code, pattern", [(c[0], c[2], c[3]) for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_exit_code_and_message(ctx, name, code, pattern):
    r = ctx["results"][name]
    assert r.code == code, str(r)
    if code == 2:
        msg = r.error()
        assert re.search(pattern, msg), str(r)
        assert "weights_only" not in msg, str(r)  # no advice to load a file that could run code
    else:
        assert "Traceback" not in r.out + r.err and not any(
            s.startswith("error:") for s in r.err.splitlines()
        ), str(r)
        assert re.search(pattern, r.out), str(r)

"""Bad input to the distill, boxes, folds and export commands, through the real entry point: exit 2, one
`error:` line naming the file or option and the fix, and no input overwritten.

All cases run, in order, in one fresh interpreter (see conftest.py); each case is then its own test.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segladder.data.boxes_synth import write_box_synth
from tests.cli.conftest import run_many
from tests.distill.images import write_image_folder
from tests.inference.helpers import make_checkpoint

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
        r"^error: TEACHER: \S*notes\.txt is not a segladder checkpoint \(a text file\)",
    ),
    (
        "distill-compare-student-png",
        "distill compare {seg}/checkpoints/best.ckpt {tmp}/picture.png --data {raw} --out {tmp}/dc-png",
        2,
        r"^error: STUDENT: \S*picture\.png is not a segladder checkpoint \(a PNG image\)",
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
    # distillation: teacher and student read the same input, checked before training or scoring
    (
        "distill-teacher-other-size",
        "train distill_b0_from_b3 --out {tmp}/run-other-size --set data.root={cache} "
        "distill.teacher={seg}/checkpoints/best.ckpt",
        2,
        r"^error: distill\.teacher \S*best\.ckpt: the teacher and the student read different input: "
        r"data\.image_size 32 vs 256, data\.frames \[0, 1, 2, 3, 4\] vs \[4\] "
        r"\(teacher vs student\); set data\.image_size=32 data\.frames=\[0,1,2,3,4\] as the teacher was trained",
    ),
    (
        "distill-compare-other-size",
        "distill compare {seg}/checkpoints/best.ckpt {tmp}/student48.ckpt --data {raw} --out {tmp}/dc-48",
        2,
        r"^error: STUDENT \S*student48\.ckpt reads data\.image_size 48, TEACHER \S*best\.ckpt 32: .*"
        r"give a student distilled from this teacher",
    ),
    (
        "distill-compare-baseline-missing",
        "distill compare {seg}/checkpoints/best.ckpt {tmp}/seg-copy.ckpt --data {raw} --out {tmp}/dc-b "
        "--baseline {tmp}/none.ckpt",
        2,
        r"^error: --baseline: checkpoint \S*none\.ckpt does not exist",
    ),
    # train --folds: checked before any folder is made
    (
        "train-folds-mistyped-file",
        "train tiny_synthetic --folds 2 --out {tmp}/f-none --set data.root={raw} data.folds={tmp}/none.csv",
        2,
        r"^error: data\.folds \S*none\.csv does not exist; make it with `segladder data folds ROOT",
    ),
    (
        "train-folds-all-in-fold-0",
        "train tiny_synthetic --out {tmp}/f-zero --set data.root={raw} data.folds={tmp}/zero.csv",
        2,
        r"^error: \S*zero\.csv: every record is in fold 0, so fold 0 has no records to train on",
    ),
    (
        # Before: "set model.name=Snapper", which cannot train on contrail masks either.
        "train-init-from-a-box-checkpoint",
        "train tiny_synthetic --out {tmp}/r-box-init --set data.root={raw} trainer.init_from={box_ckpt}",
        2,
        r"^error: trainer\.init_from: \S+ is a boxes checkpoint \(Snapper\) and this run trains the "
        r"segmentation task; start from a segmentation checkpoint",
    ),
    (
        "train-folds-too-many",
        "train tiny_synthetic --folds 50 --out {tmp}/f-50 --set data.root={raw}",
        2,
        r"^error: only 12 group\(s\) for 50 folds: lower --folds to at most 12\.$",
    ),
    (
        "train-folds-one",
        "train tiny_synthetic --folds 1 --out {tmp}/f-1 --set data.root={raw}",
        2,
        r"^error: --folds 1: cross-validation needs at least 2 folds",
    ),
    # a run refused on its data leaves no run directory (checked in test_a_refused_run_leaves_...)
    (
        "train-bad-data-root",
        "train tiny_synthetic --out {tmp}/r-root --set data.root={tmp}/nowhere",
        2,
        r"^error: .*nowhere",
    ),
    (
        "train-bad-coco",
        "train snapper --out {tmp}/r-coco --set data.coco.images={boxes}/images "
        "data.coco.train={tmp}/notes.txt data.coco.val={boxes}/val.json model.encoder=test_resnet "
        "data.coco.crop_size=32",
        2,
        r"^error: \S*notes\.txt: malformed JSON",
    ),
    (
        "train-snapper-no-data",
        "train snapper --out {tmp}/r-snapper",
        2,
        r"^error: .*data\.coco\.(images|train)",
    ),
    # settings that were silently wrong (issue 36)
    (
        "train-corrupt-record",
        "train tiny_synthetic --out {tmp}/r-bad --set data.root={tmp}/bad-raw",
        2,
        r"^error: 1 bad record\(s\) in \S*bad-raw/train:\n  \d+: missing band_11\.npy\nRun `segladder data check "
        r"\S*bad-raw` for a full report; fix or remove them, or leave them out: `--set data\.skip_bad=true` for "
        r"training, `segladder data prepare --skip-bad` for a cache\.$",
    ),
    (
        "predict-out-is-a-file",
        "predict {seg}/checkpoints/best.ckpt --data {raw} --out {tmp}/notes.txt",
        2,
        r"^error: --out \S*notes\.txt is a file; give a folder \(new or existing\) for the outputs\.$",
    ),
    (
        "train-split-named-twice",
        "train tiny_synthetic --out {tmp}/r-twice --set data.root={raw} data.train_split=train+train",
        2,
        r"^error: --set data\.train_split=train\+train: split 'train' is named twice \(its records would count "
        r"double\); name each split once, e.g\. data\.train_split=train$",
    ),
    (
        "train-on-the-test-split",
        "train tiny_synthetic --out {tmp}/r-test --set data.root={raw} data.train_split=train+test",
        2,
        r"^error: --set data\.train_split=train\+test: the test split has no masks to train on",
    ),
    (
        "crop-share-without-crop-size",
        "train tiny_synthetic --out {tmp}/r-share --set data.root={raw} data.augment.crop_positive_share=0.9",
        2,
        r"^error: --set data\.augment\.crop_positive_share=0\.9: data\.augment\.crop_positive_share is set "
        r"but data\.augment\.crop_size is not.*"
        r"set data\.augment\.crop_size=N too",
    ),
    # a bad --set value is blamed on that --set, in one line
    (
        "set-crop-size-too-small",
        "train tiny_synthetic --out {tmp}/r-crop --set data.root={raw} data.augment.crop_size=4",
        2,
        r"^error: --set data\.augment\.crop_size=4: Input should be greater than or equal to 8$",
    ),
    (
        "set-two-bad-values",
        "train tiny_synthetic --out {tmp}/r-two --set data.root={raw} optim.lr=abc trainer.max_epochs=-1",
        2,
        r"^error: --set optim\.lr=abc: [^\n]*; --set trainer\.max_epochs=-1: [^\n]*$",
    ),
    (
        "train-folds-csv-missing-records",
        "train tiny_synthetic --folds 3 --out {tmp}/f-part --set data.root={raw} data.folds={tmp}/part.csv",
        2,
        r"^error: \S*part\.csv: 3 of the 12 records of split 'train' in \S* have no fold \(first: train/\d+\), "
        r"so they would never be trained or validated on; cut folds for this dataset with `segladder data "
        r"folds \S* --k 3 --pool train --out NEW\.csv` and set data\.folds=NEW\.csv\.$",
    ),
    (
        "train-folds-csv-missing-a-pooled-split",
        "train tiny_synthetic --folds 3 --out {tmp}/f-pool --set data.root={raw} data.folds={tmp}/three.csv "
        "data.train_split=train+validation",
        2,
        r"^error: \S*three\.csv: 4 of the 4 records of split 'validation' .* have no fold .*"
        r"--k 3 --pool train,validation --out NEW\.csv`",
    ),
    (
        "train-folds-csv-unknown-record",
        "train tiny_synthetic --folds 3 --out {tmp}/f-unknown --set data.root={raw} data.folds={tmp}/unknown.csv",
        2,
        r"^error: \S*unknown\.csv: 1 record\(s\) of split 'train' are not in \S* \(first: train/123\), so the "
        r"folds were cut from another dataset",
    ),
    (
        # Before: the CSV's 3 folds were trained in silence under --folds 5.
        "train-folds-count-differs-from-the-csv",
        "train tiny_synthetic --folds 5 --out {tmp}/f-five --set data.root={raw} data.folds={tmp}/three.csv",
        2,
        r"^error: --folds 5: data\.folds \S*three\.csv holds 3 folds; leave out --folds to train its 3, or cut 5 "
        r"with `segladder data folds ROOT --k 5 --out NEW\.csv`",
    ),
    (
        "train-folds-csv-fold-7",
        "train tiny_synthetic --folds 3 --out {tmp}/f-seven --set data.root={raw} data.folds={tmp}/seven.csv",
        2,
        r"^error: \S*seven\.csv: fold 3 holds no records \(folds 0\.\.7 are numbered\).*"
        r"`segladder data folds ROOT --k 3 --out NEW\.csv` and set data\.folds=NEW\.csv\.$",
    ),
    # export onnx reads the input shape from the checkpoint's task
    (
        "export-onnx-box-model",
        "export onnx {box_ckpt} --out {tmp}/box.onnx",
        0,
        r"wrote \S*box\.onnx; .* on random input, no --data given; input \(batch, 3, 32, 32\)$",
    ),
    (
        "export-onnx-box-model-with-data",
        "export onnx {box_ckpt} --out {tmp}/box-data.onnx --data {raw}",
        2,
        r"^error: --data \S*: \S*box\.ckpt is a box model, checked on random crops",
    ),
    # data check on image/mask folders
    (
        "check-image-folders",
        "data check {tmp}/rgb",
        0,
        r"checked 6 image/mask pairs \(4 train, 2 val\) in \S*rgb \(image folders layout\): all good$",
    ),
    (
        "check-image-folders-bad",
        "data check {tmp}/rgb-bad",
        1,
        r"(?m)^train/img001: no mask train/masks/img001\.png\n"
        r"val/img000: \S*img000\.png: mask values \[7\] outside .*\n.*2 bad$",
    ),
    # predict --folds: the stored out-of-fold choices, unless an option (0 included) overrides them
    (
        "predict-folds",
        "predict {tmp}/folds-run --folds --data {raw} --split validation --out {tmp}/pf",
        0,
        r"4 records",
    ),
    (
        "predict-folds-min-component-0",
        "predict {tmp}/folds-run --folds --data {raw} --split validation --out {tmp}/pf0 --min-component 0",
        0,
        r"4 records",
    ),
    (
        "prepare-into-the-dataset",
        "data prepare {raw} --out {raw}/train --frames 4",
        2,
        r"^error: --out \S*train is the input ROOT/train \(\S*\): it would be overwritten; write to another folder",
    ),
    # boxes synth
    ("boxes-synth-too-small", "boxes synth {tmp}/bs4 --size 4", 2, r"^error: --size 4: .*--size 16 or more"),
    (
        "boxes-synth-nothing",
        "boxes synth {tmp}/bs0 --train 0 --val 0",
        2,
        r"^error: --train 0 --val 0: .*N ≥ 1",
    ),
    ("boxes-synth-smallest", "boxes synth {tmp}/bs16 --train 1 --val 1 --size 16", 0, r"training and 1 val"),
    # --out never overwrites an input
    (
        "boxes-jitter-over-gt",
        "boxes jitter {boxes}/val.json --out {boxes}/val.json",
        2,
        r"^error: --out \S*val\.json is the input GT .*nothing was written",
    ),
    ("boxes-jitter", "boxes jitter {boxes}/val.json --out {tmp}/rough.json", 0, r"rough boxes written"),
    (
        "boxes-adjust-over-boxes",
        "boxes adjust {box_ckpt} --images {boxes}/images --boxes {tmp}/rough.json --out {tmp}/rough.json",
        2,
        r"^error: --out \S*rough\.json is the input --boxes",
    ),
    (
        "boxes-adjust-png-over-image",
        "boxes adjust {box_ckpt} {boxes}/images/000000.png --box 2,3,20,10 --out {boxes}/images/000000.png",
        2,
        r"^error: --out \S*000000\.png is the input IMAGE",
    ),
    (
        "boxes-adjust-min-confidence-above-1",
        "boxes adjust {box_ckpt} --images {boxes}/images --boxes {boxes}/val.json --out {tmp}/gate.json "
        "--min-confidence 1.5",
        2,
        r"^error: --min-confidence 1\.5: an edge confidence is a probability; give a value in \[0, 1\]",
    ),
    (
        "boxes-adjust-one-min-confidence-negative",
        "boxes adjust {box_ckpt} {boxes}/images/000000.png --box 2,3,20,10 --out {tmp}/gate.png "
        "--min-confidence -0.1",
        2,
        r"^error: --min-confidence -0\.1: .*give a value in \[0, 1\]",
    ),
    (
        "boxes-evaluate-min-confidence-above-1",
        "boxes evaluate {box_ckpt} --images {boxes}/images --annotations {boxes}/val.json --out {tmp}/ev-gate "
        "--min-confidence 2",
        2,
        r"^error: --min-confidence 2: .*give a value in \[0, 1\]",
    ),
    (
        "boxes-score-json-over-gt",
        "boxes score {boxes}/val.json {tmp}/rough.json --json {boxes}/val.json",
        2,
        r"^error: --json \S*val\.json is the input GT",
    ),
    (
        # Before: the rename onto the folder failed, naming a temporary file the user never chose.
        "boxes-score-json-is-a-folder",
        "boxes score {boxes}/val.json {tmp}/rough.json --json {boxes}/images",
        2,
        r"^error: --json \S*images is a folder; give a file path, e\.g\. \S*images/out\.json",
    ),
    (
        "boxes-evaluate-over-annotations",
        "boxes evaluate {box_ckpt} --images {boxes}/images --annotations {tmp}/ev/rough.json --out {tmp}/ev",
        2,
        r"^error: OUT/rough\.json \S*ev/rough\.json is the input --annotations",
    ),
    (
        "boxes-export-over-checkpoint",
        "boxes export {box_ckpt} {box_ckpt}",
        2,
        r"^error: OUT \S*box\.ckpt is the input CHECKPOINT",
    ),
    (
        "export-onnx-over-checkpoint",
        "export onnx {tmp}/seg-copy.ckpt --out {tmp}/seg-copy.ckpt",
        2,
        r"^error: --out \S*seg-copy\.ckpt is the input CHECKPOINT",
    ),
    (
        "distill-compare-json-over-student",
        "distill compare {seg}/checkpoints/best.ckpt {tmp}/seg-copy.ckpt --data {raw} --json {tmp}/seg-copy.ckpt",
        2,
        r"^error: --json \S*seg-copy\.ckpt is the input STUDENT",
    ),
    # boxes: boxes that cannot be right
    (
        # Before: "adjusted" to [199.3, 299.5, 0.0006, 1.57] in silence.
        "boxes-adjust-box-wholly-outside",
        "boxes adjust {box_ckpt} --images {boxes}/images --boxes {tmp}/outside.json --out {tmp}/outside-adj.json",
        2,
        r"^error: \S*outside\.json: annotation id \d+: box \[199\.3, 299\.5, 4\.0, 3\.0\] lies wholly outside "
        r"its 48×48 image",
    ),
    (
        "boxes-score-negative-width",
        "boxes score {boxes}/val.json {tmp}/negative.json",
        2,
        r"^error: \S*negative\.json: annotation id {neg_id}: bbox \[.*\] has a negative width; .*not corners",
    ),
    (
        "boxes-adjust-box-outside",
        "boxes adjust {box_ckpt} {boxes}/images/000000.png --box 60,2,8,8 --out {tmp}/outside.png",
        2,
        r"^error: --box 60,2,8,8: wholly outside \S*000000\.png \(48×48 px\)",
    ),
    (
        "boxes-adjust-box-overlapping",
        "boxes adjust {box_ckpt} {boxes}/images/000000.png --box 44,2,8,8 --out {tmp}/overlapping.png",
        0,
        r"^[\d.]+,[\d.]+,[\d.]+,[\d.]+$",
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
    shutil.copyfile(cli_data["seg"] / "checkpoints" / "best.ckpt", tmp / "seg-copy.ckpt")
    make_checkpoint(tmp / "student48.ckpt", seed=2, image_size=48)
    fold_run(tmp / "folds-run")
    write_image_folder(tmp / "rgb", n_train=4, n_val=2, size=24)
    shutil.copytree(tmp / "rgb", tmp / "rgb-bad")
    (tmp / "rgb-bad" / "train" / "masks" / "img001.png").unlink()
    Image.fromarray(np.full((24, 24), 7, np.uint8)).save(tmp / "rgb-bad" / "val" / "masks" / "img000.png")
    train_ids = sorted(p.name for p in (cli_data["raw"] / "train").iterdir())
    shutil.copytree(cli_data["raw"], tmp / "bad-raw")
    (tmp / "bad-raw" / "train" / train_ids[0] / "band_11.npy").unlink()
    header = "record_id,split,fold,has_contrail,group\n"
    (tmp / "zero.csv").write_text(header + "".join(f"{r},train,0,1,{r}\n" for r in train_ids))
    three = [f"{r},train,{i % 3},1,{r}\n" for i, r in enumerate(train_ids)]
    (tmp / "three.csv").write_text(header + "".join(three))
    (tmp / "part.csv").write_text(header + "".join(three[:9]))
    (tmp / "unknown.csv").write_text(header + "".join(three) + "123,train,0,1,123\n")
    (tmp / "seven.csv").write_text(header + "".join(three[:-1]) + three[-1].replace(",train,2,", ",train,7,"))
    boxes = write_box_synth(tmp / "boxes", n_train=2, n_val=2, size=48, seed=3, max_objects=2, progress=False)
    box_ckpt = box_checkpoint(tmp / "box.ckpt")
    (tmp / "ev").mkdir()
    shutil.copyfile(boxes.val, tmp / "ev" / "rough.json")
    gt = json.loads(boxes.val.read_text())["annotations"]
    neg_id = gt[-1]["id"]
    x, y, w, h = gt[-1]["bbox"]
    negative = [{"id": a["id"], "bbox": a["bbox"]} for a in gt[:-1]] + [
        {"id": neg_id, "bbox": [x + w, y, -w, h]}
    ]
    (tmp / "negative.json").write_text(json.dumps(negative))
    outside = json.loads(boxes.val.read_text())
    outside["annotations"][-1]["bbox"] = [199.3, 299.5, 4.0, 3.0]  # the 48² image holds no part of it
    (tmp / "outside.json").write_text(json.dumps(outside))
    inputs = [
        boxes.val,
        boxes.images / "000000.png",
        tmp / "ev" / "rough.json",
        box_ckpt,
        tmp / "seg-copy.ckpt",
    ]
    before = {p: p.read_bytes() for p in inputs}
    values = {
        **{k: str(v) for k, v in cli_data.items()},
        "tmp": str(tmp),
        "boxes": str(boxes.root),
        "box_ckpt": str(box_ckpt),
        "neg_id": str(neg_id),
    }
    argvs = [argv.format(**values).split() for _, argv, _, _ in CASES]
    results = run_many(argvs, tmp)
    return {
        "tmp": tmp,
        "values": values,
        "before": before,
        "results": dict(zip([c[0] for c in CASES], results, strict=True)),
    }


def fold_run(run: Path) -> Path:
    """A `train --folds` run of two folds whose models give every pixel probability 0.5, with an out-of-fold
    threshold of 0.4 and a component size larger than any image (so the stored size removes every mask)."""
    for f in range(2):
        (run / f"fold_{f}" / "checkpoints").mkdir(parents=True)
        make_checkpoint(run / f"fold_{f}" / "checkpoints" / "best.ckpt", bias=0.0, threshold=0.5)
    ensemble = {
        "checkpoints": [f"fold_{f}/checkpoints/best.ckpt" for f in range(2)],
        "threshold": 0.4,
        "min_component": 2000,
        "percentile": 50.0,
        "oof_dice": 0.5,
        "oof_dice_at_0_5": 0.4,
        "oof_records": 12,
        "fold_dice": [0.5, 0.5],
        "best_epochs": [0, 0],
    }
    (run / "ensemble.json").write_text(json.dumps(ensemble))
    return run


def box_checkpoint(path: Path) -> Path:
    """A Snapper checkpoint in the trainer's format (random weights, 32 px crops)."""
    from segladder.config import ExperimentConfig
    from segladder.inference.checkpoint import CHECKPOINT_KEY
    from segladder.models import create

    cfg = ExperimentConfig(
        task="boxes",
        data={"coco": {"crop_size": 32}},
        model={"name": "Snapper", "encoder": "test_resnet", "hidden": 16, "decoder_layers": 2},
    )
    torch.manual_seed(0)
    model = create("Snapper", **cfg.model.kwargs)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    meta = {"version": 1, "task": "boxes", "threshold": 0.5, "config": cfg.model_dump(mode="json")}
    torch.save({"state_dict": state, CHECKPOINT_KEY: meta}, path)
    return path


@pytest.mark.parametrize(
    "name, code, pattern", [(c[0], c[2], c[3]) for c in CASES], ids=[c[0] for c in CASES]
)
@pytest.mark.medium
def test_bad_input_exit_code_and_message(ctx, name, code, pattern):
    r = ctx["results"][name]
    assert r.code == code, str(r)
    pattern = pattern.replace("{neg_id}", ctx["values"]["neg_id"])
    if code == 2:
        msg = r.error()
        assert re.search(pattern, msg), str(r)
        assert "weights_only" not in msg, str(r)  # no advice to load a file that could run code
    else:
        assert "Traceback" not in r.out + r.err and not any(
            s.startswith("error:") for s in r.err.splitlines()
        ), str(r)
        assert re.search(pattern, r.out), str(r)


@pytest.mark.medium
def test_every_fix_the_messages_suggest_exists(ctx):
    """The commands, options and config keys that the catalogue's messages tell the user to use are real."""
    from tests.cli.test_suggested_fixes import problems_in

    wrong = [f"{name}: {p}" for name, r in ctx["results"].items() for p in problems_in(r.err + r.out)]
    assert not wrong, "\n".join(wrong)


def test_no_input_was_overwritten(ctx):
    changed = [str(p) for p, data in ctx["before"].items() if p.read_bytes() != data]
    assert not changed
    assert not (ctx["tmp"] / "ev" / "metrics.json").exists()  # refused before anything was written
    assert not (ctx["tmp"] / "dc-48").exists() and not (ctx["tmp"] / "dc-b").exists()


def test_a_refused_run_leaves_no_folder_and_no_file_behind(ctx):
    tmp = ctx["tmp"]
    refused = ["f-none", "f-zero", "f-50", "f-1", "run-teacher-csv", "run-other-size", "r-twice", "r-test"]
    refused += ["r-share", "f-part", "f-pool", "f-unknown", "f-seven", "r-bad", "r-crop", "r-two"]
    for name in [*refused, "r-root", "r-coco", "r-snapper"]:
        assert not (tmp / name).exists(), name
    assert not (tmp / "none.csv").exists()  # a mistyped data.folds is refused, not created


def test_a_box_model_exports_with_its_crop_input(ctx):
    import onnx

    proto = onnx.load(str(ctx["tmp"] / "box.onnx"))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 32, 32]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert (meta["segladder.task"], meta["segladder.crop_size"]) == ("boxes", "32")


def test_predict_folds_applies_the_out_of_fold_choices_and_an_explicit_min_component_0(ctx):
    stored = json.loads((ctx["tmp"] / "pf" / "predict.json").read_text())
    run = ctx["tmp"] / "folds-run"
    assert (stored["threshold"], stored["threshold_source"]) == (
        0.4,
        f"out-of-fold, from {run}/ensemble.json",
    )
    # p = 0.5 > 0.4 everywhere: one 32×32 component per record, removed by the stored 2000 px size ...
    assert (stored["min_component"], stored["positive_pixels"]) == (2000, 0)
    kept = json.loads((ctx["tmp"] / "pf0" / "predict.json").read_text())
    # ... and kept whole by --min-component 0, at the same out-of-fold threshold.
    assert (kept["threshold"], kept["min_component"], kept["positive_pixels"]) == (0.4, 0, 4 * 32 * 32)

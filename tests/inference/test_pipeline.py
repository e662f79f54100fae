import csv
import math
import shutil

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from segladder.cli import app
from segladder.cli import predict as _cli  # noqa: F401  (registers the commands)
from segladder.data.datasets import ContrailsDataset
from segladder.errors import ConfigError
from segladder.inference import pipeline as pipeline_mod
from segladder.inference.checkpoint import CheckpointError
from segladder.inference.pipeline import evaluate_pipeline, load_pipeline, run_pipeline
from segladder.inference.postprocess import remove_small_components
from segladder.inference.submission import read_submission, rle_decode
from tests.inference.helpers import FRAMES, SIZE, toy_checkpoint

# Validation records in id order: three with contrails, the third record without.
CLS = [0.9, 0.2, 0.1, 0.8]  # classifier: misses record 1
SEG = [0.9, 0.7, 0.6, 0.3]  # stage-1 segmenter (every pixel): rescues 1, lets 2 in, misses 3
KEEP = {"or": [1, 1, 1, 1], "and": [1, 0, 0, 0], "mean": [1, 0, 0, 1]}


def _logit(p):
    return math.log(p / (1 - p))


@pytest.fixture(scope="module")
def pipeline_root(synth_root, tmp_path_factory):
    """The synthetic dataset with its 4 validation records' contents ordered positive, positive, negative,
    positive (directory names, and so the id order, unchanged), whatever the generator drew."""
    root = tmp_path_factory.mktemp("pipeline") / "contrails"
    shutil.copytree(synth_root, root)
    records = sorted(p for p in (root / "validation").iterdir() if p.is_dir())
    positive = [bool(np.load(r / "human_pixel_masks.npy").any()) for r in records]
    assert len(records) == 4 and sum(positive) == 3, "the fixture needs three positive records and one empty"
    empty = records[positive.index(False)]
    if empty != records[2]:  # swap the empty record's files with those of the third record
        tmp = root / "swap"
        empty.rename(tmp)
        records[2].rename(empty)
        tmp.rename(records[2])
    return root


@pytest.fixture(scope="module")
def items(pipeline_root):
    ds = ContrailsDataset(pipeline_root, "validation", frames=FRAMES, image_size=SIZE)
    its = [ds[i] for i in range(len(ds))]
    assert [bool(it["mask"].any()) for it in its] == [True, True, False, True]
    for i, it in enumerate(its):
        it["index"] = i
    return its


def _blob(it):
    m = it["mask"].clone()
    if it["index"] == 2:
        m[0, 1:4, 1:4] = 1  # 9 false-positive pixels on the negative record
    return m


@pytest.fixture
def toys(items, monkeypatch):
    toys = {
        "cls.ckpt": toy_checkpoint(
            items, lambda it: torch.tensor([_logit(CLS[it["index"]])]), task="classification"
        ),
        "seg.ckpt": toy_checkpoint(items, lambda it: torch.full((1, SIZE, SIZE), _logit(SEG[it["index"]]))),
        # stage 2: perfect on positives; the all-data model also paints a blob on the negative record.
        "all.ckpt": toy_checkpoint(items, lambda it: _blob(it) * 12 - 6, threshold=0.4),
        "pos.ckpt": toy_checkpoint(items, lambda it: it["mask"] * 12 - 6, threshold=0.6),
    }
    monkeypatch.setattr(pipeline_mod, "load_checkpoint", lambda path: toys[path.name])
    return toys


def _write(tmp_path, **over):
    cfg = {
        "classifier": "cls.ckpt",
        "segmenter": "seg.ckpt",
        "filter": {"rule": "or", "top_k": 5},
        "stage2": [
            {"checkpoint": "all.ckpt", "weight": 3, "name": "all-data"},
            {"checkpoint": "pos.ckpt", "weight": 1, "name": "positives-only"},
        ],
    }
    cfg.update(over)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("rule", ["or", "and", "mean"])
def test_run_filters_as_the_rule_says(pipeline_root, items, toys, tmp_path, rule):
    out = tmp_path / "run"
    res = run_pipeline(
        _write(tmp_path, filter={"rule": rule}), pipeline_root, out, split="validation", progress=False
    )
    assert res.threshold == pytest.approx(0.75 * 0.4 + 0.25 * 0.6)
    with open(out / "filter.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["kept"]) for r in rows] == KEEP[rule]
    assert [float(r["classifier_prob"]) for r in rows] == pytest.approx(CLS)
    assert [float(r["segmenter_topk"]) for r in rows] == pytest.approx(SEG)
    sub = read_submission(out / "submission.csv")
    for it, kept in zip(items, KEEP[rule], strict=True):
        mask = rle_decode(sub[it["record_id"]], (SIZE, SIZE))
        expected = _blob(it)[0].numpy() if kept else np.zeros((SIZE, SIZE))
        np.testing.assert_array_equal(mask, expected)
        np.testing.assert_array_equal(np.load(out / "masks" / f"{it['record_id']}.npy"), mask)
    # stage 2 ran on the kept records only
    assert toys["all.ckpt"].model.rows == sum(KEEP[rule])


def _dice(pred_sum, tp, target_sum):
    return 2 * tp / (pred_sum + target_sum)


@pytest.mark.parametrize("rule", ["or", "and", "mean"])
def test_evaluate_reports_each_stage(pipeline_root, items, toys, tmp_path, rule):
    r = evaluate_pipeline(
        _write(tmp_path, filter={"rule": rule}), pipeline_root, out=tmp_path / "ev", progress=False
    )
    gt = [int(it["mask"].sum()) for it in items]
    total, keep = sum(gt), KEEP[rule]
    s1 = r["stage1"]
    assert s1["classifier"] == pytest.approx({"acc": 0.75, "auc": 1.0})
    assert s1["segmenter_topk"] == pytest.approx({"acc": 0.5, "auc": 2 / 3})
    assert s1["filter"] == pytest.approx({"acc": {"or": 0.75, "and": 0.5, "mean": 0.75}[rule], "auc": 1.0})
    assert s1["kept"] == sum(keep)
    assert s1["positives_filtered_out"] == sum(1 for g, k in zip(gt, keep, strict=True) if g and not k)
    assert s1["negatives_kept"] == keep[2]
    f = r["filtering"]
    assert f["dice_no_filter"] == pytest.approx(_dice(total + 9, total, total))
    tp = sum(g for g, k in zip(gt, keep, strict=True) if k)
    assert f["dice_filtered"] == pytest.approx(_dice(tp + 9 * keep[2], tp, total))
    assert f["dice_oracle"] == pytest.approx(1.0)
    assert f["loss_from_wrong_filtering"] == pytest.approx(1.0 - f["dice_filtered"])
    assert r["stage2"]["ensemble"]["positives"]["dice"] == pytest.approx(1.0)
    members = r["stage2"]["members"]
    assert members["positives-only"]["all"]["dice"] == pytest.approx(1.0)
    assert members["all-data"]["all"]["dice"] == pytest.approx(_dice(total + 9, total, total))
    assert r["final"]["dice"] == pytest.approx(f["dice_filtered"])
    assert (tmp_path / "ev" / "pipeline_metrics.json").exists()


def test_small_components_removed_in_the_final_masks(pipeline_root, items, toys, tmp_path):
    r = evaluate_pipeline(_write(tmp_path, min_component=10), pipeline_root, progress=False)
    cleaned = [remove_small_components(it["mask"][0].numpy(), 10) for it in items]
    truth = [it["mask"][0].numpy() for it in items]
    tp = sum(int((c * t).sum()) for c, t in zip(cleaned, truth, strict=True))
    expected = _dice(sum(int(c.sum()) for c in cleaned), tp, sum(int(t.sum()) for t in truth))
    assert r["final"]["dice"] == pytest.approx(expected)  # the 9-pixel blob is gone too


def test_stage1_segmenter_reused_in_stage2(pipeline_root, toys, tmp_path):
    path = _write(tmp_path, classifier=None, stage2=["seg.ckpt", "pos.ckpt"])
    run_pipeline(path, pipeline_root, tmp_path / "o", split="validation", batch_size=4, progress=False)
    assert toys["seg.ckpt"].model.calls == 1


def test_cli_evaluate(pipeline_root, toys, tmp_path):
    r = CliRunner().invoke(app, ["pipeline", "evaluate", str(_write(tmp_path)), "--data", str(pipeline_root)])
    assert r.exit_code == 0, r.output
    assert "lost to wrong filtering" in r.output and "all-data" in r.output


@pytest.mark.parametrize(
    "cfg, match",
    [
        (
            {"stage2": ["a.ckpt"], "segmenter": "s.ckpt", "filtr": {}},
            "unknown key 'filtr'. Did you mean: filter",
        ),
        (
            {"stage2": ["a.ckpt"], "segmenter": "s.ckpt", "filter": {"topk": 5}},
            "unknown key 'filter.topk'. Did you mean: top_k",
        ),
        ({"stage2": [{"checkpoint": "a.ckpt", "wieght": 2}], "segmenter": "s.ckpt"}, "Did you mean: weight"),
        ({"stage2": ["a.ckpt"]}, "stage 1 needs"),
        ({"segmenter": "s.ckpt", "stage2": []}, "stage2"),
        ({"segmenter": "s.ckpt", "stage2": ["a.ckpt"], "filter": {"rule": "xor"}}, "rule"),
    ],
)
def test_config_errors(tmp_path, cfg, match):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=match):
        load_pipeline(path)


def test_relative_paths_resolve_next_to_the_yaml(tmp_path):
    cfg = load_pipeline(_write(tmp_path))
    assert cfg.classifier == tmp_path / "cls.ckpt" and cfg.stage2[1].checkpoint == tmp_path / "pos.ckpt"


def test_models_of_the_wrong_task_are_refused(pipeline_root, toys, tmp_path):
    with pytest.raises(CheckpointError, match="where a classifier is needed"):
        run_pipeline(_write(tmp_path, classifier="seg.ckpt"), pipeline_root, tmp_path / "o", progress=False)
    with pytest.raises(CheckpointError, match="where a segmentation model is needed"):
        evaluate_pipeline(_write(tmp_path, stage2=["cls.ckpt"]), pipeline_root, progress=False)
    assert not (tmp_path / "o" / "probs").exists()


def test_evaluate_gain_per_record_csv_and_member_positives(pipeline_root, items, toys, tmp_path):
    """Rule "and" keeps record 0 only; a third member draws the upper half of each mask plus the blob."""
    half_rows = SIZE // 2

    def half(it):
        m = _blob(it).clone()
        if it["index"] != 2:
            m[0, half_rows:] = 0
        return m * 12 - 6

    toys["half.ckpt"] = toy_checkpoint(items, half, threshold=0.5)
    path = _write(
        tmp_path,
        filter={"rule": "and"},
        stage2=[
            {"checkpoint": "all.ckpt", "weight": 3, "name": "all-data"},
            {"checkpoint": "half.ckpt", "name": "half"},
        ],
    )
    r = evaluate_pipeline(path, pipeline_root, out=tmp_path / "ev", progress=False)
    gt = [int(it["mask"].sum()) for it in items]
    upper = [int(it["mask"][0, :half_rows].sum()) for it in items]
    total = sum(gt)
    # The ensemble paints the truth everywhere and the 9-pixel blob on record 2; "and" keeps record 0 only.
    no_filter, filtered = _dice(total + 9, total, total), _dice(gt[0], gt[0], total)
    assert r["filtering"]["gain_from_filtering"] == pytest.approx(filtered - no_filter)
    assert r["filtering"]["gain_from_filtering"] < 0  # dropping two positive records costs more than the blob
    members = r["stage2"]["members"]
    assert members["half"]["positives"]["dice"] == pytest.approx(_dice(sum(upper), sum(upper), total))
    assert members["half"]["all"]["dice"] == pytest.approx(_dice(sum(upper) + 9, sum(upper), total))
    assert members["all-data"]["positives"]["dice"] == pytest.approx(1.0)
    with open(tmp_path / "ev" / "per_record.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r_["record_id"] for r_ in rows] == [it["record_id"] for it in items]
    assert [int(r_["positive"]) for r_ in rows] == [1, 1, 0, 1]
    assert [int(r_["kept"]) for r_ in rows] == KEEP["and"]
    assert [float(r_["classifier_prob"]) for r_ in rows] == pytest.approx(CLS)
    assert [float(r_["segmenter_topk"]) for r_ in rows] == pytest.approx(SEG)
    # Kept positive: exact; dropped positives: nothing drawn, Dice 0; the dropped negative: empty on empty, 1.
    assert [float(r_["final_dice"]) for r_ in rows] == pytest.approx([1.0, 0.0, 1.0, 0.0])

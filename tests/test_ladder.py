"""The ladder: gates on recorded histories, a two-rung ladder end to end, and the demo's code path."""

import math

import pytest
from typer.testing import CliRunner

from segladder.ladder import DEFAULT_GATES, Gate, RungResult, check_gates, curve_shape, diagnose


def history(losses, f1s):
    return [{"epoch": i, "train/loss_epoch": loss, "val/dice_best": f1} for i, (loss, f1) in enumerate(zip(losses, f1s, strict=True))]


def test_phase_one_gates_pass_and_fail():
    gate = DEFAULT_GATES["ResNet18_SimplerFCN"]
    ok = check_gates(gate, history([0.45, 0.30], [0.15, 0.25]), None)
    assert [c.passed for c in ok] == [True, True, True]
    # The loss gate reads the end of epoch 1, not the end of training.
    late = check_gates(gate, history([0.60, 0.30], [0.15, 0.25]), None)
    assert [c.name for c in late if not c.passed] == ["loss < 0.5"]
    weak = check_gates(gate, history([0.45, 0.30], [0.10, 0.19]), None)
    assert [c.name for c in weak if not c.passed] == ["F1 > 0.2"]


def test_better_than_previous_and_nan():
    gate = DEFAULT_GATES["ResNet18_U"]
    checks = check_gates(gate, history([0.5, 0.35], [0.3, 0.45]), previous=0.5)
    assert {c.name: c.passed for c in checks} == {"no NaN": True, "loss < 0.4": True, "F1 > 0.4": True,
                                                 "better than the rung below": False}
    nan = check_gates(gate, history([0.5, math.nan], [0.3, 0.45]), previous=0.2)
    assert not next(c for c in nan if c.name == "no NaN").passed
    assert not next(c for c in nan if c.name == "loss < 0.4").passed
    skipped = check_gates(Gate(), history([0.5], [0.3]), None, nan_steps=3)
    assert skipped[0].name == "no NaN" and not skipped[0].passed and "3 non-finite" in skipped[0].detail
    assert check_gates(DEFAULT_GATES["CoaT_ULSTM"], history([0.3], [0.6]), previous=0.6)[-1].passed


def test_diagnosis_names_the_part_the_rung_adds():
    failed = RungResult("ResNet18_ULSTM", "failed", None, {"epochs": history([0.6, 0.59], [0.3, 0.31])})
    failed.checks = check_gates(DEFAULT_GATES["ResNet18_ULSTM"], failed.history, previous=0.4)
    below = RungResult("ResNet18_U", "passed", None, {"epochs": history([0.5, 0.3], [0.3, 0.4])})
    text = diagnose(failed, below)
    assert "temporal modelling" in text and "flat" in text and "0.3100 vs 0.4000" in text and "dropout" in text
    assert curve_shape(history([1.0, 0.5], [0, 0])).startswith("falling")
    nan = RungResult("ResNet18_SimplerFCN", "failed", None, {"epochs": history([math.nan], [0.0])})
    nan.checks = check_gates(DEFAULT_GATES["ResNet18_SimplerFCN"], nan.history, None)
    assert "fp32" in diagnose(nan, None) and "training loop" in diagnose(nan, None)


@pytest.fixture(scope="module")
def ladder_cache(tmp_path_factory):
    from segladder.data.cache import CacheOptions, prepare_cache
    from segladder.data.synth import generate_contrails

    tmp = tmp_path_factory.mktemp("ladder")
    generate_contrails(tmp / "raw", records=24, val_records=8, test_records=0, size=64, seed=5, progress=False)
    prepare_cache(tmp / "raw", tmp / "cache", CacheOptions(frames=(3, 4), image_size=64), workers=1, progress=False)
    return tmp / "cache"


def test_two_rung_ladder_end_to_end_writes_the_report(ladder_cache, tmp_path):
    from segladder.cli import _register, app

    _register()
    out = tmp_path / "ladder"
    res = CliRunner().invoke(app, [
        "ladder", "--data", str(ladder_cache), "--rungs", "ResNet18_SimplerFCN,ResNet18_U,NoSuchModel",
        "--budget", "epochs=1,records=16", "--keep-going", "--out", str(out),
        "--set", "data.num_workers=0", "--set", "trainer.accumulate_grad_batches=1", "--set", "model.upsample=1",
        "--set", "trainer.progress=false"])
    assert res.exit_code == 0, res.output
    report = (out / "report.md").read_text()
    for rung in ("ResNet18_SimplerFCN", "ResNet18_U"):
        assert f"| {rung} |" in report
        assert (out / rung / "checkpoints" / "best.ckpt").exists()
    assert "| NoSuchModel | not run |" in report and "unknown model" in report
    for png in ("curves.png", "overlays.png", "worst.png"):
        assert (out / png).stat().st_size > 2000, png
    assert "report:" in res.output and "ladder" in res.output


def test_viz_draws_a_single_run(ladder_cache, tmp_path):
    from segladder.config import build_config
    from segladder.inference.visualise import visualise_run
    from segladder.training.run import train

    cfg = build_config({"data": {"root": str(ladder_cache), "frames": [3, 4], "image_size": 64, "num_workers": 0},
                        "model": {"name": "ResNet18_SimplerFCN", "upsample": 1},
                        "trainer": {"max_epochs": 1, "progress": False, "overlays": 0}})
    run = train(cfg, out=tmp_path / "run").run_dir
    paths = visualise_run(run, records=3)
    assert [p.name for p in paths] == ["overlays_validation.png", "curves_viz.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_demo_code_path_in_reduced_size(tmp_path):
    from segladder.cli import _register, app

    _register()
    res = CliRunner().invoke(app, ["demo", "--home", str(tmp_path / "home"), "--records", "16", "--val-records", "8",
                                   "--size", "32", "--epochs", "1", "--out", str(tmp_path / "demo")])
    assert res.exit_code == 0, res.output
    report = (tmp_path / "demo" / "report.md").read_text()
    for rung in ("ResNet18_SimplerFCN", "ResNet18_Simple", "ResNet18_U", "ResNet18_ULSTM"):
        assert f"| {rung} |" in report
    assert "demo finished" in res.output
    # The synthetic data is cached for the next demo.
    assert list((tmp_path / "home").glob("synth-contrails-*-cache/manifest.json"))

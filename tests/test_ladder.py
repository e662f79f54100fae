"""The ladder: gates on recorded histories, a two-rung ladder end to end, and the demo's code path."""

import json
import math
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from segladder.ladder import (
    CALIBRATED_GATES,
    DEFAULT_GATES,
    Baselines,
    Gate,
    LadderResult,
    RungResult,
    check_gates,
    curve_shape,
    diagnose,
)
from segladder.ladder.gates import (
    ASSUMED_AGREEMENT,
    GateCheck,
    estimate_budget,
    explain_inconclusive,
    f1_rise,
    rung_verdict,
)
from tests.conftest import generate_demo_world


def history(losses, f1s):
    return [
        {"epoch": i, "train/loss_epoch": loss, "val/dice_best": f1}
        for i, (loss, f1) in enumerate(zip(losses, f1s, strict=True))
    ]


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
    assert {c.name: c.passed for c in checks} == {
        "no NaN": True,
        "loss < 0.4": True,
        "F1 > 0.4": True,
        "better than the rung below": False,
    }
    nan = check_gates(gate, history([0.5, math.nan], [0.3, 0.45]), previous=0.2)
    assert not next(c for c in nan if c.name == "no NaN").passed
    assert not next(c for c in nan if c.name == "loss < 0.4").passed
    skipped = check_gates(Gate(), history([0.5], [0.3]), None, nan_steps=3)
    assert skipped[0].name == "no NaN" and not skipped[0].passed and "3 non-finite" in skipped[0].detail
    assert check_gates(DEFAULT_GATES["CoaT_ULSTM"], history([0.3], [0.6]), previous=0.6)[-1].passed


def test_an_update_larger_than_the_weights_fails_the_first_rung():
    from segladder.ladder.probe import UpdateStats

    gate = CALIBRATED_GATES["ResNet18_SimplerFCN"]
    calm = UpdateStats(steps=80, max_ratio=0.02, max_step=18, median_ratio=0.01)
    spike = UpdateStats(steps=80, max_ratio=2.0, max_step=24, median_ratio=0.01)
    runs = [history([0.4, 0.2], [0.2, 0.3])] * 2
    ok, bad = (check_gates(gate, h, None, updates=u) for h, u in zip(runs, (calm, spike), strict=True))
    assert next(c for c in ok if c.name == "steps smaller than the weights").passed
    failed = next(c for c in bad if c.name == "steps smaller than the weights")
    assert not failed.passed and "step 24" in failed.detail


def test_diagnosis_names_the_part_the_rung_adds():
    failed = RungResult("ResNet18_ULSTM", "failed", None, {"epochs": history([0.6, 0.59], [0.3, 0.31])})
    failed.checks = check_gates(DEFAULT_GATES["ResNet18_ULSTM"], failed.history, previous=0.4)
    below = RungResult("ResNet18_U", "passed", None, {"epochs": history([0.5, 0.3], [0.3, 0.4])})
    text = diagnose(failed, below)
    assert (
        "temporal modelling" in text and "flat" in text and "0.3100 vs 0.4000" in text and "dropout" in text
    )
    assert curve_shape(history([1.0, 0.5], [0, 0])).startswith("falling")
    nan = RungResult("ResNet18_SimplerFCN", "failed", None, {"epochs": history([math.nan], [0.0])})
    nan.checks = check_gates(DEFAULT_GATES["ResNet18_SimplerFCN"], nan.history, None)
    assert "fp32" in diagnose(nan, None) and "training loop" in diagnose(nan, None)


@pytest.fixture(scope="module")
def ladder_cache(tmp_path_factory):
    from segladder.data.cache import CacheOptions, prepare_cache

    tmp = tmp_path_factory.mktemp("ladder")
    generate_demo_world(tmp / "raw", records=24, val_records=8, seed=5)
    prepare_cache(
        tmp / "raw", tmp / "cache", CacheOptions(frames=(3, 4), image_size=64), workers=1, progress=False
    )
    return tmp / "cache"


@pytest.mark.medium
def test_two_rung_ladder_end_to_end_writes_the_report(ladder_cache, tmp_path):
    from segladder.cli import _register, app

    _register()
    out = tmp_path / "ladder"
    res = CliRunner().invoke(
        app,
        [
            "ladder",
            "--data",
            str(ladder_cache),
            "--rungs",
            "ResNet18_SimplerFCN,ResNet18_U,NoSuchModel",
            "--budget",
            "epochs=1,records=16",
            "--keep-going",
            "--out",
            str(out),
            "--set",
            "data.num_workers=0",
            "--set",
            "trainer.accumulate_grad_batches=1",
            "--set",
            "model.upsample=1",
            "--set",
            "trainer.progress=false",
        ],
    )
    summary = json.loads((out / "report.json").read_text())
    # 1 epoch on 16 records misses the calibrated F1 gates; the exit code says what came of it.
    assert res.exit_code == summary["exit_code"], res.output
    assert_report_schema(summary)
    assert [r["rung"] for r in summary["rungs"]] == ["ResNet18_SimplerFCN", "ResNet18_U", "NoSuchModel"]
    assert summary["rungs"][2]["status"] == "not run" and summary["profile"] == "calibrated"
    report = (out / "report.md").read_text()
    for rung in ("ResNet18_SimplerFCN", "ResNet18_U"):
        assert f"| {rung} |" in report
        assert (out / rung / "checkpoints" / "best.ckpt").exists()
    assert "| NoSuchModel | not run |" in report and "unknown model" in report
    for png in ("curves.png", "overlays.png", "worst.png"):
        assert (out / png).stat().st_size > 2000, png
    assert "report:" in res.output and "ladder" in res.output


@pytest.mark.medium
def test_viz_draws_a_single_run(ladder_cache, tmp_path):
    from segladder.config import build_config
    from segladder.inference.visualise import visualise_run
    from segladder.training.run import train

    cfg = build_config(
        {
            "data": {"root": str(ladder_cache), "frames": [3, 4], "image_size": 64, "num_workers": 0},
            "model": {"name": "ResNet18_SimplerFCN", "upsample": 1},
            "trainer": {"max_epochs": 1, "progress": False, "overlays": 0},
        }
    )
    run = train(cfg, out=tmp_path / "run").run_dir
    paths = visualise_run(run, records=3)
    assert [p.name for p in paths] == ["overlays_validation.png", "curves_viz.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


@pytest.mark.medium
def test_demo_code_path_in_reduced_size(tmp_path):
    from segladder.cli import _register, app

    _register()
    res = CliRunner().invoke(
        app,
        [
            "demo",
            "--home",
            str(tmp_path / "home"),
            "--records",
            "16",
            "--val-records",
            "8",
            "--size",
            "32",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "demo"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert_report_schema(json.loads((tmp_path / "demo" / "report.json").read_text()))
    report = (tmp_path / "demo" / "report.md").read_text()
    for rung in ("ResNet18_SimplerFCN", "ResNet18_Simple", "ResNet18_U", "ResNet18_ULSTM"):
        assert f"| {rung} |" in report
    assert "demo finished" in res.output
    # The synthetic data is cached for the next demo.
    assert list((tmp_path / "home").glob("synth-contrails-*-cache/manifest.json"))


def assert_report_schema(summary: dict) -> None:
    assert {"rungs", "first_failure", "profile", "seconds", "outcome", "exit_code"} <= set(summary)
    assert summary["seconds"] > 0 and summary["profile"] in ("absolute", "calibrated")
    for r in summary["rungs"]:
        assert {"rung", "status", "f1", "loss", "checks", "implicated", "note", "budget"} <= set(r)
        assert r["status"] in ("passed", "failed", "inconclusive", "not run")
        assert all(set(c) == {"name", "passed", "measured", "detail", "kind"} for c in r["checks"])
        assert all(c["kind"] in ("fault", "progress") for c in r["checks"])
        assert (r["implicated"] is not None) == (r["status"] == "failed")
        assert r["status"] != "passed" or all(c["passed"] and c["measured"] for c in r["checks"])
        # Failed only on a fault check; inconclusive only with every fault check passed and one missed.
        faults_ok = all(c["passed"] for c in r["checks"] if c["kind"] == "fault")
        assert r["status"] != "failed" or not faults_ok
        assert r["status"] != "inconclusive" or (faults_ok and not all(c["passed"] for c in r["checks"]))
        assert (r["note"] is not None) == (r["status"] == "inconclusive")
    failed = [r["rung"] for r in summary["rungs"] if r["status"] == "failed"]
    assert summary["first_failure"] == (failed[0] if failed else None)
    statuses = {r["status"] for r in summary["rungs"]}
    outcome = "failed" if failed else ("inconclusive" if "inconclusive" in statuses else "passed")
    assert summary["outcome"] == outcome
    assert summary["exit_code"] == {"passed": 0, "failed": 1, "inconclusive": 3}[outcome]


BASE = Baselines(
    positive_fraction=0.02,
    empty_f1=0.0,
    constant_f1=0.04,
    ceiling_f1=0.84,
    trivial_loss=0.1,
    uninformed_loss=0.7,
)


def test_calibrated_gates_are_relative_to_the_baselines():
    gate = CALIBRATED_GATES["ResNet18_SimplerFCN"]

    def failed(losses, f1s, baselines=BASE):
        checks = check_gates(gate, history(losses, f1s), None, baselines=baselines, f1_from="last")
        return [c.name for c in checks if not c.passed]

    # F1 bound: constant 0.04 + 0.03 × (0.84 − 0.04) = 0.064; the last epoch's F1 is read, not the best.
    assert failed([0.3, 0.08], [0.05, 0.2]) == []
    assert failed([0.3, 0.08], [0.3, 0.06]) == ["F1 above the baselines"]
    # The same F1 on data where a constant prediction already scores 0.2 is no evidence of learning.
    assert failed([0.3, 0.08], [0.05, 0.2], Baselines(0.11, 0.0, 0.2, 0.84, 0.1, 0.7)) == [
        "F1 above the baselines"
    ]
    # A loss that jumps (an LR spike) fails; so does one that has not closed half the gap from 0.7 to 0.1.
    assert failed([0.3, 0.9, 0.1], [0.1, 0.1, 0.3]) == ["loss stable"]
    assert failed([0.7, 0.6], [0.1, 0.3]) == ["loss falls"]


def test_first_rung_compares_the_training_batches_with_validation():
    from segladder.ladder.probe import InputStats

    val = InputStats([0.7, 0.6, 0.6], [0.14, 0.11, 0.25], [-2.0, -0.9, -0.25])
    base = Baselines(0.02, 0.0, 0.04, 0.84, 0.1, 0.7, inputs=val)
    gate = CALIBRATED_GATES["ResNet18_SimplerFCN"]
    rows = history([0.3, 0.08], [0.05, 0.2])

    def failed(train):
        return [
            c.name
            for c in check_gates(gate, rows, None, baselines=base, f1_from="last", probe=train)
            if not c.passed
        ]

    assert failed(InputStats([0.71, 0.6, 0.58], [0.14, 0.12, 0.25], [-2.1, -0.8, -0.3])) == []
    # Labels that lost their signature (shuffled, transposed, another frame): 0.27 of validation's contrast.
    assert failed(InputStats([0.71, 0.6, 0.58], [0.14, 0.12, 0.25], [-0.6, -0.2, -0.05])) == [
        "training labels sit on their signature"
    ]
    # Inputs in Kelvin instead of [0, 1].
    assert "training inputs match validation" in failed(
        InputStats([240.0, 250.0, 245.0], [20, 20, 20], [-2, -1, 0])
    )


def test_every_gate_has_a_short_name_in_the_table():
    from segladder.ladder.probe import InputStats, UpdateStats
    from segladder.report import short_gate

    stats = InputStats([0.7, 0.6, 0.6], [0.14, 0.11, 0.25], [-2.0, -0.9, -0.25])
    base = Baselines(0.02, 0.0, 0.04, 0.84, 0.1, 0.7, inputs=stats)
    names = set()
    for gates in (CALIBRATED_GATES, DEFAULT_GATES):
        for gate in gates.values():
            checks = check_gates(
                gate,
                history([0.3, 0.1], [0.1, 0.3]),
                0.2,
                0,
                base,
                "last",
                stats,
                UpdateStats(10, 0.01, 1, 0.01),
            )
            names |= {c.name for c in checks}
    assert {"steps smaller than the weights", "training labels sit on their signature"} <= names
    assert all(len(short_gate(n)) <= 10 for n in names), {n: short_gate(n) for n in names}


def test_calibrated_rung_below_tolerates_noise_but_not_a_drop():
    gate = CALIBRATED_GATES["ResNet18_ULSTM"]
    # Tolerance 0.05 × headroom 0.8 = 0.04 below the rung below.
    close = check_gates(gate, history([0.2, 0.1], [0.5, 0.57]), previous=0.6, baselines=BASE, f1_from="last")
    assert next(c for c in close if c.name == "not worse than the rung below").passed
    drop = check_gates(gate, history([0.2, 0.1], [0.5, 0.55]), previous=0.6, baselines=BASE, f1_from="last")
    assert not next(c for c in drop if c.name == "not worse than the rung below").passed
    # A rung still rising by more than its shortfall has not converged: it misses the check, says so, and
    # the miss is a progress one (no verdict on its part); flat, it misses it too.
    rising = check_gates(
        gate, history([0.2] * 5, [0.2, 0.3, 0.4, 0.45, 0.5]), previous=0.6, baselines=BASE, f1_from="last"
    )
    check = next(c for c in rising if c.name == "not worse than the rung below")
    assert (
        not check.passed
        and check.kind == "progress"
        and "not converged" in check.detail
        and f1_rise(history([0.2] * 5, [0.2, 0.3, 0.4, 0.45, 0.5]))[1] == 2
    )
    assert rung_verdict(rising) == "inconclusive"
    flat = check_gates(
        gate, history([0.2] * 5, [0.2, 0.5, 0.5, 0.51, 0.5]), previous=0.6, baselines=BASE, f1_from="last"
    )
    assert not next(c for c in flat if c.name == "not worse than the rung below").passed
    # Without baselines (no validation masks measured) the relative gates are not applied.
    assert {c.name for c in check_gates(gate, history([0.2], [0.5]), None)} == {"no NaN", "loss stable"}


def test_exit_code_follows_the_first_failure(monkeypatch, tmp_path):
    import segladder.report
    from segladder.cli import _register, app

    _register()
    monkeypatch.setattr("segladder.ladder.ladder_config", lambda data, **kw: None)
    for statuses, code in (
        (("passed", "passed"), 0),
        (("failed", "inconclusive"), 1),
        (("inconclusive", "failed"), 1),
        (("passed", "inconclusive"), 3),
        (("inconclusive", "not run"), 3),
    ):
        result = LadderResult([RungResult(f"R{i}", status) for i, status in enumerate(statuses)], tmp_path)
        monkeypatch.setattr(segladder.report, "run_and_report", lambda *a, result=result, **kw: result)
        res = CliRunner().invoke(app, ["ladder", "--data", str(tmp_path), "--rungs", "ResNet18_SimplerFCN"])
        assert res.exit_code == code, res.output
    res = CliRunner().invoke(app, ["ladder", "--data", str(tmp_path), "--inject", "shuffle_labels"])
    assert res.exit_code != 0 and "shuffled_labels" in str(res.exception) + res.output


def test_budget_and_typed_values_accept_any_folder_name(tmp_path):
    from segladder.errors import ConfigError
    from segladder.ladder import ladder_config, parse_budget

    assert parse_budget("epochs=2, records=100") == {"epochs": 2, "records": 100}
    with pytest.raises(ConfigError, match="--budget 'epoch=2'"):
        parse_budget("epoch=2")
    for name in ("2023", "off", "null"):
        cfg = ladder_config(tmp_path / name, budget={"epochs": 3, "val_records": 5}, values={"seed": 3})
        assert (
            cfg.data.root == str(tmp_path / name)
            and cfg.trainer.max_epochs == 3
            and cfg.data.val_records == 5
        )
        assert cfg.seed == 3


@pytest.mark.medium
def test_selftest_catches_faults_and_passes_clean_data(ladder_cache, tmp_path, monkeypatch):
    from segladder.ladder.demo import selftest

    # 24 training and 8 validation records differ in their channel means by sampling alone (up to 0.76
    # validation stds on one synthetic seed, against the bound of 1); no input fault is planted here, and
    # raw Kelvin inputs sit hundreds of stds away, so the bound is widened rather than tuned to the data.
    monkeypatch.setattr("segladder.ladder.gates.INPUT_SHIFT_MAX", 3.0)

    values = {
        "data": {"num_workers": 0, "train_records": 24},
        "optim": {"lr": 3e-3},
        "loss": [{"name": "bce", "pos_weight": 2.0}],
        "trainer": {"max_epochs": 3, "accumulate_grad_batches": 1, "progress": False, "overlays": 0},
    }
    # What is tested is the machinery, with the gates whose verdict does not hang on how far nine optimiser
    # steps get on this machine's floating point: the training batches against validation (data faults),
    # step sizes (LR spike), NaN (fp16 overflow) and loss jumps. No F1 or loss-gap gate: the clean run's F1
    # after nine steps sat either side of a fixed bound from one machine to another.
    gates = {"ResNet18_SimplerFCN": Gate(loss_rise=2.0, data_match=True, update_max=0.25)}
    rows = selftest(
        tmp_path,
        ladder_cache,
        values,
        rungs=("ResNet18_SimplerFCN",),
        faults=("shuffled_labels", "fp16_overflow", "lr_spike"),
        gates=gates,
    )
    table = {r.fault: r for r in rows}
    assert table["clean"].caught and table["clean"].first_failure is None

    def checks(name):
        rung = json.loads((tmp_path / name / "report.json").read_text())["rungs"][0]
        return {c["name"]: c["passed"] for c in rung["checks"]}

    assert checks("clean") == {
        "no NaN": True,
        "loss stable": True,
        "steps smaller than the weights": True,
        "training inputs match validation": True,
        "training labels sit on their signature": True,
    }
    # Each fault is caught by the check that names it, not by chance.
    assert [k for k, ok in checks("shuffled_labels").items() if not ok] == [
        "training labels sit on their signature"
    ]
    assert checks("fp16_overflow")["no NaN"] is False
    assert table["shuffled_labels"].first_failure == "ResNet18_SimplerFCN" and table["shuffled_labels"].caught
    assert "data preprocessing" in table["shuffled_labels"].implicated
    nan = table["fp16_overflow"]
    assert (
        nan.caught
        and nan.nan_report
        and (tmp_path / "fp16_overflow" / "ResNet18_SimplerFCN" / "nan_report.json").exists()
    )
    assert table["lr_spike"].caught and "training loop" in table["lr_spike"].implicated
    spike = json.loads((tmp_path / "lr_spike" / "report.json").read_text())["rungs"][0]["checks"]
    assert not next(c for c in spike if c["name"] == "steps smaller than the weights")["passed"]
    saved = json.loads((tmp_path / "selftest.json").read_text())
    assert [r["fault"] for r in saved["rows"]] == ["clean", "shuffled_labels", "fp16_overflow", "lr_spike"]
    for name in ("clean", "shuffled_labels", "fp16_overflow"):
        assert_report_schema(json.loads((tmp_path / name / "report.json").read_text()))


def test_data_faults_break_only_what_they_name(synth_root):
    from segladder.config import DataConfig
    from segladder.data.datasets import dataset_from_config
    from segladder.ladder.faults import RawKelvin, ShuffledLabels, TransposedMasks, _WrongFrame

    cfg = DataConfig(root=str(synth_root), frames=[2, 3, 4], image_size=32)
    train = dataset_from_config(cfg, "train")
    clean = [train[i] for i in range(len(train))]
    shuffled = ShuffledLabels(train, seed=1)
    assert sorted(shuffled.partner.tolist()) == list(range(len(train))) and all(
        shuffled.partner != range(len(train))
    )
    batch = shuffled.__getitems__([0, 1])  # the DataLoader's batched fetch goes through the fault too
    assert torch_equal(batch[0]["mask"], clean[int(shuffled.partner[0])]["mask"])
    assert torch_equal(batch[1]["image"], clean[1]["image"])
    transposed = TransposedMasks(train)[3]
    assert torch_equal(transposed["mask"], clean[3]["mask"].transpose(-1, -2))
    kelvin = RawKelvin(train)[0]["image"]
    assert (
        200 < float(kelvin[1].min()) and float(kelvin.max()) < 320 and kelvin.shape == clean[0]["image"].shape
    )
    late = _WrongFrame().wrap(train, cfg)[5]
    assert torch_equal(late["mask"], clean[5]["mask"]) and not torch_equal(late["image"], clean[5]["image"])
    # Frames 5–7 are frames 2–4 read three steps late.
    assert torch_equal(
        late["image"][:, 0],
        dataset_from_config(cfg.model_copy(update={"frames": [5]}), "train")[5]["image"][:, 0],
    )


def test_a_fault_that_cannot_be_planted_is_refused_before_training(ladder_cache, tmp_path):
    from segladder.errors import ConfigError
    from segladder.ladder import FAULTS, ladder_config, run_ladder

    base = ladder_config(ladder_cache)  # frames 3 and 4 only
    with pytest.raises(ConfigError, match="--frames 0-7"):
        run_ladder(base, tmp_path, ("ResNet18_SimplerFCN",), fault=FAULTS["wrong_frame"])
    assert not (tmp_path / "ResNet18_SimplerFCN").exists()


def test_coat_rung_asks_for_its_weights_and_is_not_run_without_them(ladder_cache, tmp_path, monkeypatch):
    from segladder.ladder import ladder_config, run_ladder, rung_config
    from segladder.progress import console

    for name in ("HF_HOME", "TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(name, str(tmp_path / name))  # empty caches: no weights anywhere
    for name in ("HF_HUB_CACHE", "SEGLADDER_WEIGHTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the user's switch: no download to fall back on
    base = ladder_config(ladder_cache, overrides=["data.num_workers=0", "trainer.progress=false"])
    assert rung_config(base, "CoaT_ULSTM").model.kwargs["pretrained"] == "auto"
    assert "pretrained" not in rung_config(base, "ResNet18_U").model.kwargs
    scratch = ladder_config(ladder_cache, overrides=["model.pretrained=false"])
    assert rung_config(scratch, "CoaT_ULSTM").model.kwargs["pretrained"] is False

    with console.capture() as captured:
        res = run_ladder(base, tmp_path / "ladder", ("CoaT_ULSTM",))
    (coat,) = res.rungs
    assert coat.status == "not run" and coat.reason.startswith("no pretrained weights on this machine")
    assert res.first_failure is None and not (tmp_path / "ladder" / "CoaT_ULSTM" / "checkpoints").exists()
    text = " ".join(captured.get().split())
    assert "Supply them:" in text and "--set model.pretrained=false" in text, text


def torch_equal(a, b) -> bool:
    import torch

    return a.shape == b.shape and bool(torch.equal(a, b))


def test_an_interruption_stops_the_whole_ladder(monkeypatch, synth_root, tmp_path):
    from segladder.errors import Interrupted
    from segladder.ladder import ladder_config, run_ladder

    calls = []

    def interrupted_train(cfg, out, callbacks=()):
        calls.append(cfg.model.name)
        raise Interrupted(
            "training stopped on SIGTERM during epoch 1", hint=f"segladder train --resume {out}"
        )

    monkeypatch.setattr("segladder.training.run.train", interrupted_train)
    with pytest.raises(
        Interrupted, match="the ladder stopped in ResNet18_SimplerFCN: training stopped on SIGTERM"
    ):
        run_ladder(
            ladder_config(synth_root), tmp_path, ("ResNet18_SimplerFCN", "ResNet18_Simple"), keep_going=True
        )
    assert calls == ["ResNet18_SimplerFCN"]  # the next rung was not started


def test_a_budget_too_small_to_learn_from_scratch_is_named(tmp_path):
    from segladder.ladder.demo import demo_values
    from segladder.ladder.run import budget_warning, ladder_config

    base = Baselines(0.02, 0.0, 0.04, None, 0.1, 0.7, train_prior=0.02, train_records=100)
    seed_budget = ladder_config(tmp_path)  # configs/ladder.yaml: 2 epochs, batch 8 × accumulation 4
    warning = budget_warning(seed_budget, base)
    assert warning is not None and "6 optimiser steps" in warning and "--budget epochs=N" in warning
    demo = ladder_config(tmp_path, values=demo_values(5, 0))
    assert budget_warning(demo, replace(base, train_records=128)) is None
    pretrained = ladder_config(tmp_path, overrides=["model.pretrained=/weights/resnet18.pth"])
    assert budget_warning(pretrained, base) is None
    # The calibrated profile trains from scratch at a budget that gives verdicts; --budget still wins.
    calibrated = ladder_config(tmp_path, profile="calibrated")
    assert (calibrated.trainer.max_epochs, calibrated.trainer.accumulate_grad_batches) == (5, 1)
    assert calibrated.optim.lr == 3e-3 and budget_warning(calibrated, base) is None
    assert ladder_config(tmp_path, budget={"epochs": 2}, profile="calibrated").trainer.max_epochs == 2
    assert ladder_config(tmp_path, profile="absolute").trainer.accumulate_grad_batches == 4


EVERY_FAULT = [
    "shuffled_labels",
    "transposed_masks",
    "wrong_frame",
    "raw_kelvin",
    "lr_spike",
    "frozen_weights",
    "fp16_overflow",
]


def _scripted_selftest(monkeypatch, tmp_path, outcome):
    """`ladder --selftest` with the data and the training replaced: `outcome(name)` says what each ladder run
    ends with — "caught" (the first rung fails, with a NaN report for NaN faults), "passes", "late" (a later
    rung fails first), "no_nan_report" or "inconclusive" (no rung fails, the first has no verdict).
    Returns the names the ladder was run for, in order."""
    import segladder.ladder.demo as demo
    from segladder.ladder import LadderResult, RungResult

    ran: list[str] = []

    def run_ladder(base, out, rungs, gates=None, *, profile, baselines, fault):
        name = fault.name if fault else "clean"
        ran.append(name)
        how = outcome(name)
        rows = []
        for i, rung in enumerate(rungs):
            rung_dir = out / rung
            rung_dir.mkdir(parents=True)
            fails = (how in ("caught", "no_nan_report") and i == 0) or (how == "late" and i == 1)
            if fails and how == "caught" and fault is not None and fault.needs_nan_report:
                (rung_dir / "nan_report.json").write_text("{}")
            undecided = how == "inconclusive" and i == 0
            rows.append(
                RungResult(rung, "failed" if fails else ("inconclusive" if undecided else "passed"), rung_dir)
            )
        return LadderResult(rows, out, profile=profile, baselines=baselines, fault=fault and fault.name)

    monkeypatch.setattr(demo, "demo_data", lambda *a, **k: tmp_path / "data")
    monkeypatch.setattr(demo, "ladder_config", lambda data, values=None: None)
    monkeypatch.setattr(demo, "validation_set", lambda base: None)
    monkeypatch.setattr(demo, "measure_baselines", lambda base, val: BASE)
    monkeypatch.setattr(demo, "run_ladder", run_ladder)
    return ran


@pytest.mark.parametrize(
    "missed, how",
    [
        (None, None),
        ("raw_kelvin", "passes"),  # no rung fails: the fault went unseen
        ("lr_spike", "late"),  # caught, but by the wrong rung
        ("fp16_overflow", "no_nan_report"),  # the NaN fault failed the rung without the NaN report
        ("clean", "caught"),  # a false alarm on clean data
        ("clean", "inconclusive"),  # a budget too short for the data is not a false alarm
    ],
)
def test_selftest_cli_runs_every_fault_and_exits_1_on_a_miss(monkeypatch, tmp_path, capsys, missed, how):
    """Through `segladder.cli.run` (what the console script calls), with a scripted ladder: 0 only when the
    clean run fails no rung and each fault fails the rung it implicates."""
    from segladder.cli import run

    def outcome(name):
        if name == missed:
            return how
        return "passes" if name == "clean" else "caught"

    ran = _scripted_selftest(monkeypatch, tmp_path, outcome)
    code = run(["ladder", "--selftest", "--out", str(tmp_path / "st")])
    out = capsys.readouterr().out
    clean_without_failure = missed is None or (missed, how) == ("clean", "inconclusive")
    assert code == (0 if clean_without_failure else 1), out
    assert ran == ["clean", *EVERY_FAULT]  # every fault ran, by name, each once
    rows = json.loads((tmp_path / "st" / "selftest.json").read_text())["rows"]
    assert [r["fault"] for r in rows] == ["clean", *EVERY_FAULT]
    assert [r["fault"] for r in rows if not r["caught"]] == ([] if clean_without_failure else [missed])
    assert rows[0]["outcome"] == ("inconclusive" if how == "inconclusive" else rows[0]["outcome"])


def test_a_dataset_too_small_to_judge_gets_one_line_and_no_verdicts(tmp_path, capsys):
    from segladder.cli import run
    from segladder.data.synth import generate_contrails

    # 6 training records and 2 validation ones, like the 9-record real sample (7 and 2).
    generate_contrails(
        tmp_path / "raw", records=6, val_records=2, test_records=0, size=32, seed=1, progress=False
    )
    out = tmp_path / "ladder"
    code = run(["ladder", "--data", str(tmp_path / "raw"), "--out", str(out), "--set", "data.num_workers=0"])
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: dataset too small to judge: 6 training record(s)"
    )
    assert "Traceback" not in err and not (out / "ResNet18_SimplerFCN").exists()


def test_too_small_to_judge_needs_both_enough_training_and_positive_validation_records():
    from segladder.ladder.run import too_small_to_judge

    def baselines(train, val, positive):
        return Baselines(
            0.01, 0.0, 0.02, None, 0.1, train_records=train, val_records=val, val_positive_records=positive
        )

    assert too_small_to_judge(baselines(16, 8, 4)) is None
    assert "15 training record(s) and 4 of 8" in too_small_to_judge(baselines(15, 8, 4))
    assert "16 training record(s) and 3 of 9" in too_small_to_judge(baselines(16, 9, 3))
    assert too_small_to_judge(baselines(None, 8, 4)) is None  # baselines made without the counts


def test_the_label_signature_is_local_to_each_record():
    import numpy as np
    import torch

    from segladder.ladder.probe import dataset_stats

    # A dark line on a bright record, and an empty record far brighter still: the line's own signature is
    # (0 − 1) / std; a pooled inside-vs-outside contrast would read (0 − 3.06) / std, the records' difference.
    line = torch.ones(1, 16, 16)
    line[0, 8] = 0.0
    line_mask = torch.zeros(1, 16, 16)
    line_mask[0, 8] = 1.0
    empty = torch.full((1, 16, 16), 5.0)
    stats = dataset_stats(
        [{"image": line, "mask": line_mask}, {"image": empty, "mask": torch.zeros(1, 16, 16)}]
    )
    std = float(np.std(np.concatenate([line.numpy().ravel(), empty.numpy().ravel()])))
    assert stats.contrast[0] == pytest.approx(-1.0 / std, rel=1e-6)


def test_verdict_fails_only_on_fault_checks_and_is_inconclusive_on_progress_alone():
    fault_miss = [
        GateCheck("loss stable", False, "x"),
        GateCheck("F1 above the baselines", True, "y", "progress"),
    ]
    progress_miss = [
        GateCheck("loss stable", True, "x"),
        GateCheck("F1 above the baselines", False, "y", "progress"),
    ]
    both = [GateCheck("loss stable", False, "x"), GateCheck("F1 above the baselines", False, "y", "progress")]
    ok = [GateCheck("loss stable", True, "x"), GateCheck("F1 above the baselines", True, "y", "progress")]
    assert rung_verdict(fault_miss) == "failed" and rung_verdict(both) == "failed"
    assert rung_verdict(progress_miss) == "inconclusive" and rung_verdict(ok) == "passed"
    # The one-batch fit is a fault check: missing it turns an inconclusive rung into a failed one.
    assert rung_verdict([*progress_miss, GateCheck("fits one batch", False, "z")]) == "failed"
    assert rung_verdict([*progress_miss, GateCheck("fits one batch", True, "z")]) == "inconclusive"
    # Which checks are progress ones: what depends on how hard the data is, and nothing else.
    checks = check_gates(
        CALIBRATED_GATES["ResNet18_U"], history([0.3, 0.2], [0.1, 0.2]), 0.15, baselines=BASE, f1_from="last"
    )
    assert {c.name for c in checks if c.kind == "progress"} == {
        "F1 above the baselines",
        "not worse than the rung below",
    }


def stepped(f1s, steps_per_epoch=12):
    return [{**h, "step": (i + 1) * steps_per_epoch} for i, h in enumerate(history([0.2] * len(f1s), f1s))]


def test_budget_estimate_follows_the_f1_curve_in_log_steps():
    missed = [GateCheck("F1 above the baselines", False, "", "progress", 0.4)]
    # F1 = 0.1 + 0.05·log2(step/12): +0.05 a doubling, 0.2 at step 48; 0.4 needs 12·2^6 = 768 steps = 16×.
    f1s = [0.1 + 0.05 * math.log2(k) for k in (1, 2, 3, 4)]
    est = estimate_budget(stepped(f1s), missed)
    assert est.gain_per_doubling == pytest.approx(0.05) and est.steps == 48
    assert est.factor == pytest.approx(16.0, rel=1e-6) and est.epochs_needed == 64
    assert "--budget epochs=64" in est.text() and "16.0×" in est.text()
    # The highest target of the missed checks is the one aimed at; a passed check's target is not.
    two = [*missed, GateCheck("not worse than the rung below", False, "", "progress", 0.3)]
    assert estimate_budget(stepped(f1s), two).factor == pytest.approx(16.0)
    assert estimate_budget(stepped(f1s), [replace(missed[0], passed=True)]) is None
    # A flat or falling curve gives no estimate and says to double; a very slow one says it is out of reach.
    flat = estimate_budget(stepped([0.2, 0.19, 0.2, 0.19]), missed)
    assert flat.factor is None and "--budget epochs=8" in flat.text() and "no estimate" in flat.text()
    slow = estimate_budget(stepped([0.1 + 0.005 * math.log2(k) for k in (1, 2, 3, 4)]), missed)
    assert slow.factor is None and "more than 20×" in slow.text()
    # A fitted line already past the target asks for 1.5× (the last epoch fell short by noise).
    near = estimate_budget(stepped([0.1, 0.3, 0.45, 0.39]), [replace(missed[0], target=0.4)])
    assert near.factor == pytest.approx(1.5) and near.epochs_needed == 6


def test_inconclusive_explanation_names_the_miss_the_evidence_and_the_budget():
    r = RungResult("ResNet18_U", "inconclusive", None, {"epochs": stepped([0.1, 0.15, 0.18, 0.2])})
    r.checks = [
        GateCheck("no NaN", True, "all finite"),
        GateCheck("F1 above the baselines", False, "F1 0.2 vs 0.4", "progress", 0.4),
        GateCheck("fits one batch", True, "a fresh copy took the loss from 0.2 to 0.05"),
    ]
    r.budget = estimate_budget(r.history, r.checks)
    text = explain_inconclusive(r)
    assert text.startswith("ResNet18_U inconclusive: F1 above the baselines (F1 0.2 vs 0.4)")
    assert "no NaN passed" in text and "from 0.2 to 0.05" in text and "Budget: " in text
    assert "seed" not in text.lower()


def test_a_one_batch_fit_that_could_not_run_is_not_counted_as_passed(tmp_path):
    from segladder.report import _md_rungs

    r = RungResult("ResNet18_U", "inconclusive", None, {"epochs": stepped([0.1, 0.15, 0.18, 0.2])})
    unmeasured = GateCheck(
        "fits one batch", True, "not measured (DataError: no positive record)", measured=False
    )
    r.checks = [
        GateCheck("no NaN", True, "all finite"),
        GateCheck("F1 above the baselines", False, "F1 0.2 vs 0.4", "progress", 0.4),
        unmeasured,
    ]
    text = explain_inconclusive(r)
    assert "could not run (not measured (DataError" in text and "so its model and loop can learn" not in text
    assert "whether it can learn is unknown" in text
    assert unmeasured.mark == "?" and r.checks[0].mark == "✓" and r.checks[1].mark == "✗"
    # Not a pass: every other check passing leaves the rung inconclusive, and it never fails it.
    assert rung_verdict([r.checks[0], unmeasured]) == "inconclusive"
    assert rung_verdict([replace(unmeasured, passed=False)]) == "inconclusive"
    result = LadderResult([r], tmp_path, profile="calibrated")
    assert "? fits one batch: not measured" in "\n".join(_md_rungs(result))


def test_one_annotator_a_record_leaves_agreement_unknown_not_perfect():
    # Measured agreement is used as it is; unknown agreement is the assumed contrail agreement, not 1.0.
    measured = replace(BASE, ceiling_f1=0.5)
    unknown = replace(BASE, ceiling_f1=None)
    assert measured.ceiling == 0.5 and unknown.ceiling == ASSUMED_AGREEMENT < 0.9
    assert "assumed" in unknown.ceiling_text and "assumed" not in measured.ceiling_text
    check = next(
        c
        for c in check_gates(CALIBRATED_GATES["ResNet18_U"], history([0.2], [0.1]), None, baselines=unknown)
        if c.name == "F1 above the baselines"
    )
    assert check.target == pytest.approx(0.04 + 0.25 * (ASSUMED_AGREEMENT - 0.04))
    assert (
        unknown.as_dict()["ceiling_source"] == "assumed"
        and measured.as_dict()["ceiling_source"] == "measured"
    )


def test_agreement_is_measured_with_several_annotators_and_unknown_with_one(tmp_path):
    """On real OpenContrails records (four annotators a record) the ceiling is measured; with one annotator a
    record the same records give no agreement, and the gates then assume ASSUMED_AGREEMENT, not 1.0."""
    import shutil
    from pathlib import Path

    import numpy as np

    from segladder.ladder import ladder_config, measure_baselines, validation_set

    fixture = Path(__file__).resolve().parent / "fixtures" / "opencontrails_crops"
    several, one = tmp_path / "several", tmp_path / "one"
    shutil.copytree(fixture, several)
    shutil.copytree(fixture, one)
    for path in (one / "train").glob("*/human_individual_masks.npy"):
        single = np.load(path)[..., :1]  # annotator 0 alone; the pixel mask becomes theirs
        np.save(path, single)
        np.save(path.with_name("human_pixel_masks.npy"), single[..., 0])
    values = {"data": {"image_size": 32, "num_workers": 0}}
    measured = [
        measure_baselines(cfg, validation_set(cfg)) for cfg in (ladder_config(several, values=values),)
    ][0]
    assert measured.ceiling_f1 is not None and 0.3 < measured.ceiling_f1 < 0.95, measured.ceiling_f1
    cfg = ladder_config(one, values=values)
    unknown = measure_baselines(cfg, validation_set(cfg))
    assert unknown.ceiling_f1 is None and unknown.ceiling == ASSUMED_AGREEMENT


def test_one_batch_fit_is_judged_on_the_ratio_of_last_to_first_loss():
    from segladder.ladder.fit_probe import FIT_RATIO_MAX, FitStats

    fitted = FitStats(4, 30, first_loss=0.2, last_loss=0.2 * FIT_RATIO_MAX * 0.99)
    stuck = FitStats(4, 30, first_loss=0.2, last_loss=0.2 * FIT_RATIO_MAX * 1.01)
    assert fitted.fitted and not stuck.fitted
    assert not FitStats(4, 30, first_loss=0.2, last_loss=math.nan).fitted
    assert not FitStats(4, 0, first_loss=math.nan, last_loss=math.nan).fitted
    assert "from 0.2000 to 0.1485" in fitted.detail() and fitted.as_dict()["fitted"] is True

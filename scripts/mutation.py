"""Mutation testing by table: one-line mutations of the code behind each documented promise, and the tests
that must catch them (`make mutation`; results in docs/reliability.md).

Each mutation replaces an exact text (which must occur exactly once in its file) in a scratch copy of the
repository, runs the tests it names there, and counts as killed when they fail. The working tree is never
written: the copy lives in a temporary folder that is removed at the end, also on Ctrl-C. Before the
mutations, the named tests are run once unmutated; a mutation is meaningful only against tests that pass.

    python scripts/mutation.py                    # every mutation, a table per module and a score
    python scripts/mutation.py --only resume,kd   # modules whose name contains one of these
    python scripts/mutation.py --list             # the table, nothing run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPIED = ("segladder", "tests", "configs", "pyproject.toml")


@dataclass(frozen=True)
class Mutation:
    module: str  # the promise (docs/reliability.md groups scores by it)
    file: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids that must fail
    why: str = ""


T_SIDES = ("tests/training/test_train.py::test_a_side_the_model_cannot_take_is_refused_under_its_config_key",)
T_SELFTEST = ("tests/test_ladder.py::test_selftest_cli_runs_every_fault_and_exits_1_on_a_miss",)
T_VERDICT = ("tests/test_ladder.py",)
T_KD_STEP = (
    "tests/distill/test_distill_run.py::test_the_scheduled_temperature_and_the_teachers_logits_reach_the_loss",
)
T_KD_LOSS = ("tests/distill/test_kd_loss.py",)
T_RESUME = ("tests/faults/test_corrupt.py",)
T_COMPARE = ("tests/distill/test_compare.py::test_compare_measures_each_model_and_writes_json_and_png",)
T_OOF = (
    "tests/training/test_folds.py::test_oof_threshold_is_the_pooled_best_and_each_fold_scores_its_own_records",
    "tests/training/test_folds.py::test_min_component_choice_matches_a_hand_computation",
)
T_NAN = ("tests/training/test_nan_safety.py", "tests/training/test_steady_steps.py")
T_CKPT = (
    "tests/inference/test_checkpoint_models.py",
    "tests/inference/test_predict.py::test_refuses_bad_checkpoints_before_work",
    "tests/inference/test_predict.py::test_refuses_a_malicious_pickle",
    "tests/inference/test_predict.py::test_ensemble_weights_and_mixed_frames",
)
T_STEP = ("tests/training/test_steady_steps.py", "tests/training/test_optim.py")
T_RLE = ("tests/inference/test_submission.py",)
T_METRICS = ("tests/test_metrics.py",)
T_BOXES = ("tests/test_box_metrics.py",)
T_GATE = ("tests/inference/test_box_gate.py",)
T_INJECT = ("tests/data/test_inject.py",)
T_SCENE = ("tests/scene/test_abi.py", "tests/scene/test_scene_predict.py", "-m", "not slow")
T_CHECK = ("tests/data/test_check.py",)

M = Mutation
MUTATIONS: list[Mutation] = [
    # --- ladder self-test: exit 1 on a miss, every fault run, "caught" means the named rung (issue 26)
    M(
        "ladder self-test",
        "segladder/cli/demo.py",
        "        raise typer.Exit(1)",
        "        return",
        T_SELFTEST,
        "exits 0 when a planted fault is missed",
    ),
    M(
        "ladder self-test",
        "segladder/ladder/demo.py",
        "*(faults or tuple(FAULTS))",
        "*(faults or tuple(FAULTS)[:3])",
        T_SELFTEST,
        "runs only 3 of its 7 faults",
    ),
    M(
        "ladder self-test",
        "segladder/ladder/demo.py",
        "                and first.rung == fault.expected_rung\n",
        "",
        T_SELFTEST,
        "a failure at any rung counts as caught",
    ),
    M(
        "ladder self-test",
        "segladder/ladder/demo.py",
        "and (nan or not fault.needs_nan_report)",
        "and True",
        T_SELFTEST,
        "a NaN fault counts as caught without its NaN report",
    ),
    M(
        "ladder self-test",
        "segladder/ladder/demo.py",
        "            caught = first is None\n",
        "            caught = True\n",
        T_SELFTEST,
        "a false alarm on clean data passes",
    ),
    # --- box adjustment's do-no-harm gate: kept only when it helps out of sample
    M(
        "box gate",
        "segladder/inference/box_gate.py",
        "        accepted = cv_gain > 0 and cv_gain > z * cv_se",
        "        accepted = cv_gain > 0",
        T_GATE,
        "a gate whose gain is luck is kept",
    ),
    M(
        "box gate",
        "segladder/inference/box_gate.py",
        "    side = np.maximum(np.abs(rough[..., 2:] - rough[..., :2]), 1.0)",
        "    side = np.maximum(np.abs(rough[..., 2:] - rough[..., :2]), 1.0)[..., ::-1]",
        T_GATE,
        "moves measured against the other side of the box",
    ),
    M(
        "box gate",
        "segladder/inference/box_gate.py",
        "    ids, inverse = np.unique(groups, return_inverse=True)",
        "    ids, inverse = np.arange(len(groups)), np.arange(len(groups))",
        T_GATE,
        "jittered copies of one box split across folds",
    ),
    M(
        "box gate",
        "segladder/inference/box_gate.py",
        "        moved = (conf >= min_confidence) & (relative_moves(rough, snapped) <= max_move)",
        "        moved = conf >= min_confidence",
        T_GATE,
        "the largest move ignored",
    ),
    # --- ladder verdicts on hard data: failed only on a fault check, agreement unknown with one annotator
    M(
        "ladder verdicts",
        "segladder/ladder/gates.py",
        "    if any(not c.passed and c.measured and c.kind == FAULT for c in checks):",
        "    if any(not c.passed and c.measured for c in checks):",
        T_VERDICT,
        "a missed F1 gate alone fails the rung (the false diagnosis on hard data)",
    ),
    M(
        "ladder verdicts",
        "segladder/ladder/gates.py",
        "        return self.ceiling_f1 if self.ceiling_f1 is not None else ASSUMED_AGREEMENT",
        "        return self.ceiling_f1 if self.ceiling_f1 is not None else 1.0",
        T_VERDICT,
        "unknown annotator agreement taken as perfect",
    ),
    M(
        "ladder verdicts",
        "segladder/ladder/run.py",
        "        if bool(((soft > 0) & (soft < 1)).any()):",
        "        if True:",
        T_VERDICT,
        "one annotator a record measured as agreement 1.0",
    ),
    M(
        "ladder verdicts",
        "segladder/ladder/fit_probe.py",
        "        return self.ratio <= self.ratio_max",
        "        return True",
        T_VERDICT,
        "every one-batch fit counts as fitted",
    ),
    M(
        "ladder verdicts",
        "segladder/ladder/gates.py",
        "        factor = max(1.5, math.exp(needed))",
        "        factor = max(1.5, needed)",
        T_VERDICT,
        "the budget estimate read in log steps as if in steps",
    ),
    M(
        "ladder verdicts",
        "segladder/ladder/run.py",
        "            r.checks.append(_one_batch_check(rung_config(base, rung), fault, base.seed))",
        "            pass",
        ("tests/test_ladder_hard_data.py::test_weights_that_never_move_fail_on_the_one_batch_fit",),
        "an inconclusive rung is never asked to fit one batch (LR 0 goes unseen)",
    ),
    # --- KD loss and its temperature schedule
    M(
        "KD loss/schedule",
        "segladder/tasks/distillation.py",
        'return self.loss(student, {**batch, "teacher": self.batch_teacher_logits(batch, "train")})',
        'return self.loss(student, {**batch, "teacher": student.detach()})',
        T_KD_STEP,
        "the KD target is the student's own logits",
    ),
    M(
        "KD loss/schedule",
        "segladder/tasks/distillation.py",
        "                term.temperature = self.temperature",
        "                term.temperature = d.temperature_start",
        T_KD_STEP,
        "temperature frozen at 4 while the logged value follows the schedule",
    ),
    M(
        "KD loss/schedule",
        "segladder/tasks/distillation.py",
        "return trainer.current_epoch / max(1, trainer.max_epochs - 1)",
        "return trainer.current_epoch / max(1, trainer.max_epochs)",
        T_KD_STEP,
        "the schedule never reaches its end temperature",
    ),
    M(
        "KD loss/schedule",
        "segladder/tasks/distillation.py",
        "return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))",
        "return start + (end - start) * 0.5 * (1.0 + math.cos(math.pi * progress))",
        ("tests/distill/test_unfreezing.py::test_temperature_is_cosine_from_start_to_end", *T_KD_STEP),
        "the temperature schedule runs backwards",
    ),
    M(
        "KD loss/schedule",
        "segladder/losses.py",
        "return temperature**2 * (cross - entropy).mean()",
        "return temperature * (cross - entropy).mean()",
        T_KD_LOSS,
        "T instead of T² scaling",
    ),
    M(
        "KD loss/schedule",
        "segladder/losses.py",
        "zt = teacher_logits.detach().float() / temperature",
        "zt = teacher_logits.detach().float()",
        T_KD_LOSS,
        "the teacher's logits are not softened",
    ),
    # --- resume
    M(
        "resume",
        "segladder/training/resume.py",
        'elif "optimizer_states" not in ckpt or "loops" not in ckpt:',
        'elif "optimizer_states" not in ckpt and "loops" not in ckpt:',
        T_RESUME,
        "a weights-only checkpoint is taken as resumable",
    ),
    M(
        "resume",
        "segladder/training/resume.py",
        "chosen = max(good, key=lambda c: (c.global_step, c.path.name == LAST))",
        "chosen = good[0]",
        T_RESUME,
        "not the newest intact checkpoint",
    ),
    M(
        "resume",
        "segladder/training/resume.py",
        'check.problem = f"non-finite weights in {bad[0]}"',
        "check.problem = None",
        T_RESUME,
        "resumes from NaN weights",
    ),
    # --- distill compare
    M(
        "distill compare",
        "segladder/inference/compare.py",
        'paths = {"teacher": teacher, "student": student,',
        'paths = {"teacher": teacher, "student": teacher,',
        T_COMPARE,
        "scores the teacher as the student",
    ),
    M(
        "distill compare",
        "segladder/inference/compare.py",
        '"kd_dice_gain": s.dice - b.dice,',
        '"kd_dice_gain": s.dice - t.dice,',
        T_COMPARE,
        "KD gain measured against the teacher",
    ),
    M(
        "distill compare",
        "segladder/inference/compare.py",
        "miou = 0.5 * (tp / max(1, tp + fp + fn) + tn / max(1, tn + fp + fn))",
        "miou = tp / max(1, tp + fp + fn)",
        T_COMPARE,
        "mIoU without the background class",
    ),
    # --- out-of-fold threshold and post-processing
    M(
        "out-of-fold threshold",
        "segladder/training/folds.py",
        'th = float(res["threshold"])',
        "th = 0.5",
        T_OOF,
        "the out-of-fold threshold is a fixed 0.5",
    ),
    M(
        "out-of-fold threshold",
        "segladder/training/folds.py",
        "held_out(ck.config.data, rows, fold, stats=ck.stats)",
        "held_out(ck.config.data, rows, (fold + 1) % k, stats=ck.stats)",
        T_OOF,
        "a fold's model predicts another fold",
    ),
    M(
        "out-of-fold threshold",
        "segladder/training/folds.py",
        "percentile = 100.0 * (1.0 - hist.count_above(th) / max(1, hist.total))",
        "percentile = 100.0 * hist.count_above(th) / max(1, hist.total)",
        T_OOF,
        "percentile from the wrong end",
    ),
    M(
        "out-of-fold threshold",
        "segladder/training/folds.py",
        "    best = int(np.argmax(dice))\n",
        "    best = len(dice) - 1 - int(np.argmax(dice[::-1]))\n",
        T_OOF,
        "ties of component size go to the largest",
    ),
    # --- NaN guard
    M(
        "NaN guard",
        "segladder/tasks/base.py",
        "        self.step_losses.append(self.last_loss)\n",
        "",
        T_NAN,
        "the step's loss is not checked",
    ),
    M(
        "NaN guard",
        "segladder/training/nan_guard.py",
        "optimizer.found_inf = bad  #",
        "optimizer.found_inf = None  #",
        T_NAN,
        "the fused optimiser steps on a non-finite step",
    ),
    M(
        "NaN guard",
        "segladder/training/nan_guard.py",
        "checked = losses if scaled else [*losses, *grads]",
        "checked = losses",
        T_NAN,
        "non-finite gradients with a finite loss are stepped on",
    ),
    M(
        "NaN guard",
        "segladder/training/nan_guard.py",
        'kind = "gradient" if all(',
        'kind = "loss" if all(',
        T_NAN,
        "a bad gradient reported as a bad loss",
    ),
    M(
        "NaN guard",
        "segladder/training/nan_guard.py",
        "if self.consecutive >= self.patience:",
        "if self.consecutive > self.patience:",
        T_NAN,
        "stops one step late",
    ),
    M(
        "NaN guard",
        "segladder/training/nan_guard.py",
        "                p.grad = None",
        "                pass",
        T_NAN,
        "non-finite gradients are applied",
    ),
    M(
        "NaN guard",
        "segladder/training/nan_guard.py",
        "            self.consecutive = 0\n            return",
        "            return",
        T_NAN,
        "the count of bad steps in a row never resets",
    ),
    M(
        "NaN guard",
        "segladder/training/checkpoints.py",
        '        if bad:\n            console.print(\n                f"[red]not writing',
        '        if False:\n            console.print(\n                f"[red]not writing',
        T_NAN,
        "checkpoints with NaN weights are written",
    ),
    # --- the training step on a GPU (issue 25): sync-free, few launches, fused and clipped, compiled
    M(
        "training step",
        "segladder/losses.py",
        "term = value if weight == 1.0 else weight * value",
        "term = weight * value",
        T_STEP,
        "a loss weight of 1 multiplied every step",
    ),
    M(
        "training step",
        "segladder/metrics.py",
        "    FOLD = 256",
        "    FOLD = 1",
        T_STEP,
        "the epoch means updated on the device every step",
    ),
    M(
        "training step",
        "segladder/training/recorder.py",
        "        if self.samples_per_s and logs_this_step(trainer):",
        "        if self.samples_per_s:",
        T_STEP,
        "samples/s logged every step",
    ),
    M(
        "training step",
        "segladder/tasks/base.py",
        "            torch.nn.utils.clip_grad_norm_(grads, gradient_clip_val, foreach=True)",
        "            pass",
        T_STEP,
        "clipping by norm does nothing",
    ),
    M(
        "training step",
        "segladder/tasks/base.py",
        "            torch.nn.utils.clip_grad_value_(grads, gradient_clip_val, foreach=True)",
        "            pass",
        T_STEP,
        "clipping by value does nothing",
    ),
    M(
        "training step",
        "segladder/tasks/base.py",
        "model = self.model if self._compiled is None else self._compiled",
        "model = self.model",
        T_STEP,
        "trainer.compile builds a compiled module that never runs",
    ),
    M(
        "training step",
        "segladder/training/build.py",
        "    if type(trainer.precision_plugin) is MixedPrecision:",
        "    if False:",
        T_STEP,
        "Lightning's autocast without the cast cache: a reused weight cast at each use",
    ),
    M(
        "training step",
        "segladder/optim.py",
        'kinds <= {"cpu", "cuda"}',
        'kinds <= {"cpu"}',
        T_STEP,
        "Adam/AdamW not fused on CUDA",
    ),
    # --- checkpoints (loading for inference)
    M(
        "checkpoints",
        "segladder/inference/checkpoint.py",
        "torch.load(path, map_location=map_location, weights_only=True)",
        "torch.load(path, map_location=map_location, weights_only=False)",
        T_CKPT,
        "unpickles arbitrary objects",
    ),
    M(
        "checkpoints",
        "segladder/inference/checkpoint.py",
        'float(meta.get("threshold", 0.5)),',
        "0.5,",
        T_CKPT,
        "the stored threshold is ignored",
    ),
    M(
        "checkpoints",
        "segladder/inference/checkpoint.py",
        "    if missing or unexpected:",
        "    if False:",
        T_CKPT,
        "weights that do not fit load partly",
    ),
    M(
        "checkpoints",
        "segladder/inference/checkpoint.py",
        'if meta.get("version") not in SUPPORTED_VERSIONS:',
        "if False:",
        T_CKPT,
        "any checkpoint version is read",
    ),
    # --- RLE and submission
    M(
        "RLE/submission",
        "segladder/inference/submission.py",
        "flat = m.T.reshape(-1).astype(bool)",
        "flat = m.reshape(-1).astype(bool)",
        T_RLE,
        "row-major instead of column-major",
    ),
    M(
        "RLE/submission",
        "segladder/inference/submission.py",
        ".view(np.int8))) + 1",
        ".view(np.int8)))",
        T_RLE,
        "0-indexed starts",
    ),
    M(
        "RLE/submission",
        "segladder/inference/submission.py",
        "_first(starts + lengths - 1 > n_pixels)",
        "_first(starts + lengths > n_pixels)",
        T_RLE,
        "a run ending on the last pixel is refused",
    ),
    M(
        "RLE/submission",
        "segladder/inference/submission.py",
        "if (i := _first(starts < 1)) is not None:",
        "if (i := _first(starts < 0)) is not None:",
        T_RLE,
        "start 0 accepted",
    ),
    # --- metrics
    M(
        "metrics",
        "segladder/metrics.py",
        "    pred = p > threshold\n    tp = (pred & t).sum()",
        "    pred = p >= threshold\n    tp = (pred & t).sum()",
        T_METRICS,
        "global Dice counts p == threshold",
    ),
    M(
        "metrics",
        "segladder/metrics.py",
        "return _dice((pred & t).sum(1), pred.sum(1), t.sum(1)).cpu().numpy()",
        "return _dice((pred & t).sum(1), pred.sum(1), t.sum()).cpu().numpy()",
        T_METRICS,
        "per-record Dice against all records' truth",
    ),
    M(
        "metrics",
        "segladder/metrics.py",
        "best = best_candidates[(thresholds[best_candidates] - 0.5).abs().argmin()]",
        "best = best_candidates[0]",
        T_METRICS,
        "ties go to the lowest threshold",
    ),
    # --- box scoring
    M(
        "box scoring",
        "segladder/inference/boxes.py",
        "np.stack([xywh_to_xyxy(boxes[i]) for i in ids])",
        "np.stack([xywh_to_xyxy(b) for b in list(boxes.values())[: len(ids)]])",
        T_BOXES,
        "boxes paired by position, not by id",
    ),
    M(
        "box scoring",
        "segladder/metrics.py",
        "self.iou_over_0_9 += (iou > 0.9).sum()",
        "self.iou_over_0_9 += (iou >= 0.9).sum()",
        T_BOXES,
        "IoU > 0.9 not strict",
    ),
    M(
        "box scoring",
        "segladder/metrics.py",
        "self.edges_within_1px += (d <= 1 + _EPS).sum()",
        "self.edges_within_1px += (d < 1).sum()",
        T_BOXES,
        "an edge 1 px off is not within 1 px",
    ),
    M(
        "box scoring",
        "segladder/metrics.py",
        "    union = area(p) + area(t) - inter\n",
        "    union = area(p) + area(t)\n",
        T_BOXES,
        "IoU over the sum of areas",
    ),
    M(
        "box scoring",
        "segladder/metrics.py",
        "for i in (0, 2) for j in (1, 3)",
        "for i in (0, 1) for j in (2, 3)",
        T_BOXES,
        "corners built from the wrong edges",
    ),
    # --- data check
    M(
        "data check",
        "segladder/data/check.py",
        "        if not np.isin(a, (0, 1)).all():",
        "        if False:",
        T_CHECK,
        "masks outside {0, 1} pass",
    ),
    M(
        "data check",
        "segladder/data/check.py",
        "elif values and not np.isfinite(arr).all():",
        "elif False:",
        T_CHECK,
        "NaN bands pass",
    ),
    M(
        "data check",
        "segladder/data/check.py",
        "        elif arr.shape[:2] != hw:",
        "        elif False:",
        T_CHECK,
        "bands of different sizes pass",
    ),
    M(
        "data check",
        "segladder/data/check.py",
        "    if ref.split in LABELLED_SPLITS:",
        "    if False:",
        T_CHECK,
        "a missing mask passes",
    ),
    M(
        "data check",
        "segladder/data/check.py",
        '        if m["record_id"] not in ids\n',
        "        if False\n",
        T_CHECK,
        "metadata listing missing records passes",
    ),
    M(
        "config check",
        "segladder/training/build.py",
        "    check_input_sides(cfg, model)\n",
        "",
        T_SIDES,
        "a side the model cannot take reaches the first batch",
    ),
    M(
        "config check",
        "segladder/training/build.py",
        '"data.image_size": cfg.data.image_size, ',
        "",
        T_SIDES,
        "data.image_size is not checked",
    ),
    # --- contrail injection: measured cooling per band, real labels kept, skies kept apart
    M(
        "contrail injection",
        "segladder/data/inject.py",
        "        cooling[..., k] = np.minimum(a, MAX_OPACITY) * np.maximum(b14[..., k] - top, 0.0)",
        "        cooling[..., k] = np.minimum(a, MAX_OPACITY) * (b14[..., k] - top)",
        T_INJECT,
        "a sky colder than the ice warmed by the contrail",
    ),
    M(
        "contrail injection",
        "segladder/data/inject.py",
        "        target = _draw_contrast(rng, wide=c.width >= WIDE_PX)",
        "        target = _draw_contrast(rng)",
        T_INJECT,
        "aged contrails drawn as faint as young ones",
    ),
    M(
        "contrail injection",
        "segladder/data/inject.py",
        "    drop = set(exclude) | (_ids_in(exclude_like) if exclude_like is not None else set())",
        "    drop = set(exclude)",
        T_INJECT,
        "the records to score on used as skies",
    ),
    M(
        "contrail injection",
        "segladder/data/inject.py",
        '    return {"train": train, "validation": (val or train) if val_records > 0 else []}',
        '    return {"train": pool, "validation": (val or train) if val_records > 0 else []}',
        T_INJECT,
        "validation skies also trained on",
    ),
    M(
        "contrail injection",
        "segladder/data/realism.py",
        "    skies = injection_backgrounds(synthetic)",
        "    skies = set()",
        T_INJECT,
        "the classifier meets the injected records' own skies",
    ),
    # --- GOES scenes: georeferencing, tile blending, frame times, satellites, no-data pixels
    M(
        "GOES scenes",
        "segladder/scene/grid.py",
        "        rows, cols = np.meshgrid(np.arange(len(self.y)), np.arange(len(self.x)), indexing=\"ij\")",
        "        cols, rows = np.meshgrid(np.arange(len(self.x)), np.arange(len(self.y)), indexing=\"xy\")[::-1]",
        T_SCENE,
        "rows and columns swapped in the lat/lon of every pixel",
    ),
    M(
        "GOES scenes",
        "segladder/scene/predict.py",
        "            w[:overlap] = np.minimum(w[:overlap], up)",
        "            w[:overlap] = 1.0",
        T_SCENE,
        "tiles pasted over each other instead of blended",
    ),
    M(
        "GOES scenes",
        "segladder/scene/sources.py",
        "    return [time + (f - LABELED_FRAME) * FRAME_STEP for f in frames]",
        "    return [time + (LABELED_FRAME - f) * FRAME_STEP for f in frames]",
        T_SCENE,
        "earlier frames looked for after the time instead of before",
    ),
    M(
        "GOES scenes",
        "segladder/scene/sources.py",
        "        if a.platform != first.platform:",
        "        if False:",
        T_SCENE,
        "a frame stack that mixes satellites accepted",
    ),
    M(
        "GOES scenes",
        "segladder/scene/predict.py",
        "    prob[~valid] = np.nan",
        "    pass",
        T_SCENE,
        "pixels with no data given a probability",
    ),
]


def _pytest(root: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, float, str]:
    """Run `tests` in `root`: ('passed', 'failed' or 'timeout', seconds, output's end); usage errors raise."""
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-W", "ignore", *tests]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t0, ""
    took, tail = time.perf_counter() - t0, (p.stdout + p.stderr)[-3000:]
    if p.returncode == 0:
        return "passed", took, tail
    if p.returncode in (1, 2):  # test failures, or a collection error the mutation caused
        return "failed", took, tail
    raise SystemExit(
        f"pytest exit {p.returncode} for {' '.join(tests)}:\n{p.stdout[-2000:]}{p.stderr[-2000:]}"
    )


def _check_table(mutations: list[Mutation]) -> None:
    for m in mutations:
        n = (REPO / m.file).read_text().count(m.old)
        if n != 1:
            raise SystemExit(f"{m.file}: the text to mutate occurs {n} times, not once: {m.old!r} ({m.why})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated parts of module names to run")
    ap.add_argument("--list", action="store_true", help="print the table and exit")
    ap.add_argument(
        "--timeout", type=float, default=900, help="seconds per test run (a timeout counts as killed)"
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the named tests")
    args = ap.parse_args(argv)
    wanted = [w.strip().lower() for w in args.only.split(",") if w.strip()]
    chosen = [m for m in MUTATIONS if not wanted or any(w in m.module.lower() for w in wanted)]
    _check_table(chosen)
    if args.list:
        for i, m in enumerate(chosen, 1):
            print(f"{i:2d}. [{m.module}] {m.file}: {m.why}\n      {m.old.strip()!r} → {m.new.strip()!r}")
        return 0
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="segladder-mutation-") as tmp:
        root = Path(tmp)
        for name in COPIED:
            src = REPO / name
            if src.is_dir():
                shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(src, root / name)
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            print(f"baseline: {len(tests)} test targets, unmutated ...", flush=True)
            status, took, tail = _pytest(root, tests, args.timeout * 3)
            if status != "passed":
                raise SystemExit(f"{tail}\nthe named tests fail without any mutation; fix them first")
            print(f"baseline: passed in {took:.0f}s", flush=True)
        for i, m in enumerate(chosen, 1):
            path = root / m.file
            original = path.read_text()
            path.write_text(original.replace(m.old, m.new, 1))
            try:
                status, took, _ = _pytest(root, m.tests, args.timeout)
            finally:
                path.write_text(original)
            verdict = "survived" if status == "passed" else "killed"
            results.append(
                {
                    **m.__dict__,
                    "tests": list(m.tests),
                    "verdict": verdict,
                    "status": status,
                    "seconds": round(took, 1),
                }
            )
            print(f"[{i}/{len(chosen)}] {verdict:8s} {took:5.0f}s  {m.module}: {m.why}", flush=True)
    modules = list(dict.fromkeys(r["module"] for r in results))
    print("\nmodule                  killed  total  score")
    for mod in modules:
        rows = [r for r in results if r["module"] == mod]
        k = sum(r["verdict"] == "killed" for r in rows)
        print(f"{mod:22s}  {k:6d}  {len(rows):5d}  {100 * k / len(rows):4.0f}%")
    k = sum(r["verdict"] == "killed" for r in results)
    print(f"{'all':22s}  {k:6d}  {len(results):5d}  {100 * k / max(1, len(results)):4.0f}%")
    for r in results:
        if r["verdict"] == "survived":
            print(f"survived: [{r['module']}] {r['file']}: {r['why']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0 if k == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())

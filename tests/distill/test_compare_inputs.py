"""`distill compare` checks every checkpoint, and that the models read the same input, before scoring any."""

from __future__ import annotations

import pytest

import segladder.inference.compare as compare_mod
from segladder.inference.errors import CheckpointError
from tests.inference.helpers import make_checkpoint


@pytest.fixture
def no_scoring(monkeypatch):
    def scored(*args, **kwargs):
        raise AssertionError("a model was scored before every checkpoint was checked")

    monkeypatch.setattr(compare_mod, "_scores", scored)


@pytest.mark.parametrize(
    "student_kwargs, key, student_value, teacher_value",
    [
        ({"image_size": 48}, "data.image_size", "48", "32"),
        ({"frames": (2, 3, 4)}, "data.frames", r"\[2, 3, 4\]", r"\[0, 1, 2, 3, 4\]"),
    ],
)
@pytest.mark.medium
def test_a_student_reading_other_input_is_refused_before_scoring(
    tmp_path, no_scoring, student_kwargs, key, student_value, teacher_value
):
    teacher = make_checkpoint(tmp_path / "teacher.ckpt", seed=1)
    student = make_checkpoint(tmp_path / "student.ckpt", seed=2, **student_kwargs)
    with pytest.raises(
        CheckpointError,
        match=rf"^STUDENT \S*student\.ckpt reads {key} {student_value}, TEACHER \S*teacher\.ckpt {teacher_value}",
    ):
        compare_mod.compare(teacher, student, tmp_path, device="cpu")


@pytest.mark.medium
def test_baseline_is_checked_before_scoring_and_named(tmp_path, no_scoring):
    teacher = make_checkpoint(tmp_path / "teacher.ckpt", seed=1)
    student = make_checkpoint(tmp_path / "student.ckpt", seed=2)
    with pytest.raises(CheckpointError, match=r"^--baseline: checkpoint \S*none\.ckpt does not exist"):
        compare_mod.compare(teacher, student, tmp_path, baseline=tmp_path / "none.ckpt", device="cpu")
    other = make_checkpoint(tmp_path / "baseline.ckpt", seed=3, image_size=64)
    with pytest.raises(
        CheckpointError, match=r"^--baseline \S*baseline\.ckpt reads data\.image_size 64, TEACHER"
    ):
        compare_mod.compare(teacher, student, tmp_path, baseline=other, device="cpu")

"""Atomic writes refuse a folder where a file goes, naming the path the user gave."""

import pytest

from segladder.errors import WriteError
from segladder.io import atomic_write_json


def test_an_atomic_write_onto_a_folder_names_the_folder_and_leaves_nothing(tmp_path):
    target = tmp_path / "scores"
    (target / "kept").mkdir(parents=True)
    with pytest.raises(WriteError, match=r"cannot write \S*scores: it is a folder; give a file path"):
        atomic_write_json(target, {"a": 1})
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["kept", "scores"]  # no temporary file left

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from typer.testing import CliRunner

from segladder.cli import app
from segladder.cli import predict as _cli  # noqa: F401  (registers the commands)
from segladder.inference.submission import (
    SubmissionError,
    check_submission,
    rle_decode,
    rle_encode,
    rle_problems,
)


def reference_rle(mask: np.ndarray) -> str:
    """Straight from the competition's definition: number pixels 1.. top to bottom, then left to right."""
    h, w = mask.shape
    runs, start, length = [], None, 0
    for x in range(w):
        for y in range(h):
            n = x * h + y + 1
            if mask[y, x]:
                if start is None:
                    start, length = n, 0
                length += 1
            elif start is not None:
                runs += [start, length]
                start = None
    if start is not None:
        runs += [start, length]
    return " ".join(map(str, runs)) if runs else "-"


masks = st.tuples(st.integers(1, 12), st.integers(1, 12)).flatmap(lambda s: arrays(np.bool_, s))


@pytest.mark.medium
@settings(max_examples=300, deadline=None)
@given(masks)
def test_rle_matches_the_reference_and_round_trips(mask):
    rle = rle_encode(mask)
    assert rle == reference_rle(mask)
    assert rle_problems(rle, mask.size) == []
    np.testing.assert_array_equal(rle_decode(rle, mask.shape), mask.astype(np.uint8))


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (256, 256)])
def test_rle_edge_cases(shape):
    h, w = shape
    empty, full = np.zeros(shape, np.uint8), np.ones(shape, np.uint8)
    assert rle_encode(empty) == "-"
    assert rle_encode(full) == f"1 {h * w}"
    first, last = empty.copy(), empty.copy()
    first[0, 0] = 1
    last[-1, -1] = 1
    assert rle_encode(first).split()[:2] == ["1", "1"]
    assert rle_encode(last) == f"{h * w} 1"
    for m in (empty, full, first, last):
        np.testing.assert_array_equal(rle_decode(rle_encode(m), shape), m)


def test_column_major_order():
    mask = np.zeros((3, 4), np.uint8)
    mask[0, 1] = mask[1, 1] = 1  # the second column's top two pixels: numbers 4 and 5
    assert rle_encode(mask) == "4 2"


@pytest.mark.parametrize(
    "rle, fragment",
    [
        ("1 2 3", "odd number"),
        ("0 2", "start 0 < 1"),
        ("1 0", "length 0 < 1"),
        ("5 1 2 1", "sorted"),
        ("1 3 2 1", "overlaps"),
        ("10 2", "ends past"),
        ("a 1", "integer"),
        ("", "empty field"),
        ("99999999999999999999999 1", "beyond"),
    ],
)
def test_malformed_rle_is_named(rle, fragment):
    problems = rle_problems(rle, 10)
    assert problems and fragment in problems[0]
    with pytest.raises(SubmissionError):
        rle_decode(rle, (2, 5))


def test_sample_submission_of_the_competition_format_parses(synth_root):
    assert check_submission(synth_root / "sample_submission.csv", synth_root, "test") == []


def test_check_names_every_problem(synth_root, tmp_path):
    ids = [line.split(",")[0] for line in (synth_root / "sample_submission.csv").read_text().splitlines()[1:]]
    bad = tmp_path / "bad.csv"
    bad.write_text(f"record_id,encoded_pixels\n{ids[0]},1 2 3\n{ids[0]},-\n123,-\n{ids[1]},1024 2\n")
    problems = check_submission(bad, synth_root, "test")
    text = "\n".join(problems)
    assert "odd number" in text and "duplicate record_id" in text and "123 is not in split" in text
    assert "ends past the last pixel 1024" in text  # synthetic records are 32 × 32
    assert f"missing record_id {ids[2]}" in text
    assert len(problems) == 5

    result = CliRunner().invoke(app, ["submission", "check", str(bad), "--data", str(synth_root)])
    assert result.exit_code == 1
    assert len([line for line in result.output.splitlines() if line]) == 6  # 5 problems + the summary
    ok = CliRunner().invoke(
        app, ["submission", "check", str(synth_root / "sample_submission.csv"), "--data", str(synth_root)]
    )
    assert ok.exit_code == 0, ok.output


def test_wrong_header(tmp_path):
    f = tmp_path / "s.csv"
    f.write_text("id,rle\n1,-\n")
    assert "header" in check_submission(f)[0]

"""`segladder models list` and `segladder models show`."""

import pytest
import typer
from typer.testing import CliRunner

import segladder.cli.models  # noqa: F401  (registers the `models` command group)
from segladder import models
from segladder.cli import app


def run(*args):
    result = CliRunner().invoke(app, ["models", *args], env={"COLUMNS": "240"})
    return result


@pytest.mark.medium
def test_list_shows_every_model_with_its_size():
    result = run("list")
    assert result.exit_code == 0, result.output
    for name in models.available():
        assert name in result.output
    assert (
        "17.02" in result.output and "53.32" in result.output
    )  # ResNet18_U, CoaT_ULSTM, millions of parameters
    assert "GFLOPs" not in result.output


@pytest.mark.medium
def test_list_counts_flops_at_the_given_size():
    result = run("list", "--flops", "--size", "64", "--frames", "2")
    assert result.exit_code == 0, result.output
    assert "GFLOPs per sample at C×T×H×W = 3×2×64×64" in result.output


def test_list_with_an_impossible_size_is_a_clear_error():
    result = run("list", "--flops", "--size", "50")
    assert isinstance(result.exception, models.ModelInputError)
    assert "divisible by" in str(result.exception)


def test_show_lists_the_options():
    result = run("show", "Unet25D")
    assert result.exit_code == 0, result.output
    assert "input_size = 512" in result.output and "pretrained = False" in result.output


def test_every_option_has_help():
    group = typer.main.get_command(app).commands["models"]
    assert group.help
    for command in group.commands.values():
        assert command.help
        for param in command.params:
            assert getattr(param, "help", None), f"models {command.name}: {param.name} has no help"


@pytest.mark.medium
def test_list_keeps_every_name_whole_in_80_columns():
    result = CliRunner().invoke(app, ["models", "list"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(map(len, lines)) <= 80
    rows = {line.split()[0]: line for line in lines if line and not line.startswith(" ")}
    assert set(models.available()) <= rows.keys()  # each name whole, at the start of its row
    assert "…" not in result.output  # the description wraps and folds; nothing is cut
    assert "(B, 4, S)" in rows["Snapper"] and "(B, 1)" not in rows["Snapper"]
    assert "(B, 1) " in rows["Classifier"] and "(B, 1, H, W)" in rows["ResNet18_SimplerFCN"]

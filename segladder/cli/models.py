"""`segladder models`: list the registered models with their size and cost, show one model's options."""

from __future__ import annotations

import inspect

import typer
from rich.console import Console
from rich.table import Table

from segladder.cli.app import app

models_app = typer.Typer(help="Browse the model registry.", no_args_is_help=True)
app.add_typer(models_app, name="models")

# What a model returns, by its registered output kind.
OUTPUT_SHAPES = {"mask": "(B, 1, H, W)", "label": "(B, 1)", "box": "(B, 4, S)"}


@models_app.command("list")
def list_models(
    flops: bool = typer.Option(
        False,
        "--flops",
        help="Also count GFLOPs per sample (FlopCounterMode on the meta device; a few seconds).",
    ),
    size: int = typer.Option(256, "--size", help="Input height and width for --flops."),
    frames: int = typer.Option(
        5, "--frames", help="Input frames T for --flops (models on one frame use only one)."
    ),
    channels: int = typer.Option(
        3, "--channels", help="Input channels C for --flops and the parameter count."
    ),
) -> None:
    """Print every registered model: parameters, the input it uses, whether it uses time, what it is."""
    from segladder.models import available, info
    from segladder.models.profile import model_cost

    shape = (channels, frames, size, size)
    title = "segladder models" + (
        f" (GFLOPs per sample at C×T×H×W = {'×'.join(map(str, shape))})" if flops else ""
    )
    names = available()
    # The name is what the user types: never wrapped or cut; the description wraps in what is left.
    table = Table(title=title, box=None, pad_edge=False, header_style="bold underline")
    table.add_column("name", style="bold", no_wrap=True, min_width=max(map(len, names)))
    table.add_column("params (M)", justify="right", no_wrap=True)
    if flops:
        table.add_column("GFLOPs", justify="right", no_wrap=True)
    table.add_column("input", ratio=1, min_width=8, overflow="fold")
    table.add_column("time", no_wrap=True)
    table.add_column("output", no_wrap=True)
    table.add_column("description", ratio=2, min_width=12, overflow="fold")
    for name in names:
        entry = info(name)
        cost = model_cost(name, flops=flops, input_shape=shape)
        row = [name, f"{cost.params / 1e6:.2f}"]
        if flops:
            row.append(f"{cost.flops / 1e9:.1f}")
        output = OUTPUT_SHAPES.get(entry.output, entry.output)
        row += [entry.input_desc, "yes" if entry.uses_time else "no", output, entry.description]
        table.add_row(*row)
    Console().print(table)


@models_app.command("show")
def show_model(
    name: str = typer.Argument(..., help="A registered model name (see `segladder models list`)."),
) -> None:
    """Print one model's description and the options `create(name, **options)` accepts, with defaults."""
    from segladder.models import info

    entry = info(name)
    typer.echo(f"{name}: {entry.description}")
    typer.echo(f"input: {entry.input_desc}; uses time: {'yes' if entry.uses_time else 'no'}")
    typer.echo("options:")
    for param in inspect.signature(entry.factory).parameters.values():
        default = "" if param.default is inspect.Parameter.empty else f" = {param.default!r}"
        typer.echo(f"  {param.name}{default}")


@models_app.command("fetch")
def fetch_weights(
    config: str = typer.Argument(
        ..., help="Experiment YAML or shipped config name whose model's weights to get."
    ),
    set_: list[str] = typer.Option([], "--set", help="Config overrides, as for `segladder train`."),
) -> None:
    """Build the config's model once so its pretrained weights land in the timm/Hugging Face cache.

    A missing file is downloaded (with progress; not under HF_HUB_OFFLINE=1); afterwards training reads
    the cache without the network, HF_HUB_OFFLINE=1 or not.
    """
    from segladder.config import load_config, resolve_config_path
    from segladder.training.build import build_task

    cfg = load_config(resolve_config_path(config), list(set_))
    build_task(cfg)
    pretrained = cfg.model.kwargs.get("pretrained", False)
    typer.echo(
        f"{cfg.model.name}: "
        + ("weights ready" if pretrained else "model.pretrained is false, no weights needed")
    )

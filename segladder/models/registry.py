"""The model registry: every model is built by name with `create(name, **kwargs)`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from segladder.errors import ConfigError
from segladder.registry import Registry, suggest


class ModelError(ConfigError):
    """A model name, model option or weights file is wrong; the message says what was expected."""


class WeightsUnavailable(ModelError):
    """Pretrained weights were asked for (`pretrained: auto`) but are not on this machine.

    The message says how to supply them.
    """


class ModelInputError(ModelError, ValueError):
    """A tensor given to a model has the wrong rank, channels, frames or size."""


@dataclass(frozen=True)
class ModelInfo:
    """What `segladder models list` shows about one registered model."""

    name: str
    factory: Callable[..., nn.Module]
    description: str
    uses_time: bool
    input_desc: str
    output: str  # "mask" (B, 1, H, W) logits, "label" (B, 1) logits or "box"


MODELS: Registry[ModelInfo] = Registry("model", ModelError, " `segladder models list` shows all models.")
OUTPUT_KINDS = ("mask", "label", "box")


def register(
    name: str | None = None,
    *,
    description: str,
    uses_time: bool,
    input_desc: str,
    output: str = "mask",
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: add a factory function to the registry under `name` (default: the function's name).

    `output` is the model's output kind, which tasks declare they accept: "mask" (B, 1, H, W) logits,
    "label" (B, 1) logits or "box" (per-edge position logits).
    """
    if output not in OUTPUT_KINDS:
        raise ValueError(f"output kind {output!r} is not one of {OUTPUT_KINDS}")

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or factory.__name__
        MODELS.add(key, ModelInfo(key, factory, description, uses_time, input_desc, output))
        return factory

    return decorator


def available() -> list[str]:
    """Names of all registered models, in registration order."""
    return MODELS.names()


def info(name: str) -> ModelInfo:
    """The registry entry for `name`; a ModelError with the closest names when unknown."""
    return MODELS.get(name)


def with_output(kind: str) -> list[str]:
    """Names of the registered models whose output kind is `kind`."""
    return [n for n, entry in MODELS.items() if entry.output == kind]


# Options every model takes: `create` applies them after the factory has built the model.
GENERIC_OPTIONS = ("output_prior",)


def check_options(name: str, kwargs: dict) -> ModelInfo:
    """The entry for `name` after checking that it accepts every option in `kwargs` (without building it)."""
    entry = info(name)
    prior = kwargs.get("output_prior")
    if prior is not None and not (isinstance(prior, int | float) and 0 < prior < 1):
        raise ModelError(
            f"model option output_prior={prior!r}: give the expected fraction of positive pixels, "
            "strictly between 0 and 1 (e.g. 0.02), or leave it unset."
        )
    if prior is not None and entry.output != "mask":
        raise ModelError(f"model option output_prior: {name!r} outputs a {entry.output}, not mask logits.")
    params = inspect.signature(entry.factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in kwargs if k not in params and k not in GENERIC_OPTIONS]
    if unknown and not takes_any:
        accepted = ", ".join(p for p in params if params[p].kind is not inspect.Parameter.VAR_KEYWORD)
        hints = "".join(dict.fromkeys(suggest(k, list(params)) for k in unknown))  # one hint once
        raise ModelError(
            f"model {name!r} has no option(s) {', '.join(unknown)}.{hints} It accepts: {accepted}."
        )
    return entry


def create(name: str, **kwargs) -> nn.Module:
    """Build the model registered as `name`; unknown options are reported with the accepted ones.

    `output_prior=p` (any mask model) starts the output layer's bias at logit(p), so that an untrained
    model already predicts the positive rate everywhere: with rare positives, a model started at logit 0
    spends its first steps learning only that constant, and then often sits at it for epochs (the
    prior-probability init of Lin et al., "Focal Loss for Dense Object Detection", 2017).
    """
    entry = check_options(name, kwargs)
    prior = kwargs.pop("output_prior", None)
    model = entry.factory(**kwargs)
    if prior is not None:
        init_output_prior(model, float(prior), name)
    return model


def init_output_prior(model: nn.Module, prior: float, name: str = "model") -> None:
    """Set the bias of the model's output layer (its last conv with one output channel) to logit(prior)."""
    import math

    import torch

    heads = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == 1]
    if not heads or heads[-1].bias is None:
        raise ModelError(
            f"model option output_prior: {name!r} has no one-channel output conv with a bias to start at "
            "the prior; leave output_prior unset for it."
        )
    with torch.no_grad():
        heads[-1].bias.fill_(math.log(prior / (1 - prior)))

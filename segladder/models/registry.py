"""The model registry: every model is built by name with `create(name, **kwargs)`."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from segladder.errors import ConfigError


class ModelError(ConfigError):
    """A model name, model option or weights file is wrong; the message says what was expected."""


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
    output: str  # "mask" (B, 1, H, W) logits or "label" (B, 1) logits


_REGISTRY: dict[str, ModelInfo] = {}


def register(
    name: str | None = None,
    *,
    description: str,
    uses_time: bool,
    input_desc: str,
    output: str = "mask",
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: add a factory function to the registry under `name` (default: the function's name)."""

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or factory.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is registered twice")
        _REGISTRY[key] = ModelInfo(key, factory, description, uses_time, input_desc, output)
        return factory

    return decorator


def suggest(name: str, choices: list[str], n: int = 3) -> str:
    """' Did you mean: a, b?' for the closest names, or '' when nothing is close."""
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)]
    return f" Did you mean: {', '.join(close)}?" if close else ""


def available() -> list[str]:
    """Names of all registered models, in registration order."""
    return list(_REGISTRY)


def info(name: str) -> ModelInfo:
    """The registry entry for `name`; a ModelError with the closest names when unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(
            f"unknown model {name!r}.{suggest(name, available())} `segladder models list` shows all models."
        ) from None


def check_options(name: str, kwargs: dict) -> ModelInfo:
    """The entry for `name` after checking that it accepts every option in `kwargs` (without building it)."""
    entry = info(name)
    params = inspect.signature(entry.factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in kwargs if k not in params]
    if unknown and not takes_any:
        accepted = ", ".join(p for p in params if params[p].kind is not inspect.Parameter.VAR_KEYWORD)
        hints = "".join(suggest(k, list(params)) for k in unknown)
        raise ModelError(
            f"model {name!r} has no option(s) {', '.join(unknown)}.{hints} It accepts: {accepted}."
        )
    return entry


def create(name: str, **kwargs) -> nn.Module:
    """Build the model registered as `name`; unknown options are reported with the accepted ones."""
    return check_options(name, kwargs).factory(**kwargs)

"""Encoders from timm (`features_only`) and the one place that finds, downloads and loads pretrained weights."""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from segladder.models.registry import ModelError, WeightsUnavailable
from segladder.registry import suggest

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# timm's own preference when a Hugging Face repo or folder holds several files.
_PREFERRED_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")


def check_timm_name(name: str) -> None:
    """Raise a ModelError naming the closest timm models when `name` is not one."""
    if not timm.is_model(name):
        raise ModelError(
            f"unknown timm encoder {name!r}.{suggest(name.split('.')[0], timm.list_models())} "
            "`timm.list_models('pattern*')` lists the names."
        )


class Encoder(nn.Module):
    """A timm backbone that returns a list of NCHW feature maps, one per `reductions` entry.

    Args:
        name: a timm model name.
        in_chans: input channels.
        out_indices: the feature levels returned (default: timm's, all of them).
        pretrained: False, True or "auto" (the ImageNet weights) or a file or folder; see `load_pretrained`.
        **timm_kwargs: passed on to `timm.create_model`.
    """

    def __init__(
        self,
        name: str,
        *,
        in_chans: int = 3,
        out_indices: tuple[int, ...] | None = None,
        pretrained: bool | str | os.PathLike = False,
        **timm_kwargs,
    ):
        super().__init__()
        check_timm_name(name)
        self.name = name
        if out_indices is not None:
            timm_kwargs["out_indices"] = out_indices
        if name.startswith("coat_"):
            self.model = CoaTFeatures(name, in_chans=in_chans, **timm_kwargs)
        else:
            self.model = timm.create_model(
                name, features_only=True, pretrained=False, in_chans=in_chans, **timm_kwargs
            )
        self.channels: list[int] = list(self.model.feature_info.channels())
        self.reductions: list[int] = list(self.model.feature_info.reduction())
        # Some transformer backbones (swin) hand out NHWC maps; the decoders here all take NCHW.
        self._nhwc = str(getattr(self.model, "output_fmt", "NCHW")).endswith("NHWC")
        self.weights_report = load_pretrained(self.model, name, pretrained, in_chans=in_chans)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps of `x`, NCHW, finest first."""
        feats = self.model(x)
        if self._nhwc:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        return list(feats)


class CoaTFeatures(nn.Module):
    """The four CoaT-Lite stages as NCHW maps, at any input size divisible by 32.

    timm's `features_only` CoaT fixes the grid size at construction (its patch embeddings assert a
    224-pixel input), so this runs the stages itself and takes each grid size from the actual input.

    Args:
        name: a timm coat_lite_* name.
        in_chans: input channels.
        out_indices: the stages returned.
        **timm_kwargs: passed on to `timm.create_model`.
    """

    def __init__(
        self, name: str, *, in_chans: int = 3, out_indices: tuple[int, ...] = (0, 1, 2, 3), **timm_kwargs
    ):
        super().__init__()
        self.model = timm.create_model(name, pretrained=False, in_chans=in_chans, **timm_kwargs)
        if getattr(self.model, "parallel_blocks", None) is not None:
            raise ModelError(f"{name}: only the CoaT-Lite models (coat_lite_*) can be used as encoders")
        # What timm's `prune_intermediate_layers` does for CoaT-Lite, by hand: it and CoaT's `feature_info`
        # arrived after timm 1.0.29, and the stages below read neither the final norms nor the head.
        for norm in ("norm2", "norm3", "norm4"):
            if getattr(self.model, norm, None) is not None:
                setattr(self.model, norm, nn.Identity())
        self.model.aggregate = None
        self.model.reset_classifier(0)
        self.out_indices = tuple(out_indices)
        stages = [
            {
                "num_chs": getattr(self.model, f"patch_embed{i + 1}").proj.out_channels,
                "reduction": 4 * 2**i,
                "module": f"serial_blocks{i + 1}",
            }
            for i in range(4)
        ]
        self.feature_info = timm.models.FeatureInfo(stages, self.out_indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The chosen stages' maps of `x`, NCHW, finest first."""
        out = []
        for i in range(max(self.out_indices) + 1):
            embed = getattr(self.model, f"patch_embed{i + 1}")
            x = embed.proj(x)
            b, _, h, w = x.shape
            x = embed.norm(x.flatten(2).transpose(1, 2))
            x = torch.cat([getattr(self.model, f"cls_token{i + 1}").expand(b, -1, -1), x], dim=1)
            for block in getattr(self.model, f"serial_blocks{i + 1}"):
                x = block(x, size=(h, w))
            x = x[:, 1:].transpose(1, 2).reshape(b, -1, h, w)
            if i in self.out_indices:
                out.append(x)
        return out


# ---------------------------------------------------------------------------------------------------
# Pretrained weights


@dataclass
class WeightsReport:
    """What a weights load did: the file, how many tensors were loaded, and which keys did not match."""

    source: str = ""
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"loaded {self.loaded} tensors from {self.source}"]
        if self.adapted:
            parts.append(f"adapted to the input channels: {', '.join(self.adapted)}")
        if self.missing:
            parts.append(f"{len(self.missing)} missing (left as initialised): {_few(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected (ignored): {_few(self.unexpected)}")
        return "; ".join(parts)


def load_pretrained(
    module: nn.Module,
    name: str,
    pretrained: bool | str | os.PathLike,
    *,
    in_chans: int = 3,
    new_head: tuple[str, ...] = (),
) -> WeightsReport | None:
    """Load weights for timm model `name` into `module` (its features-only or full form).

    `pretrained=True` or `"auto"` takes the encoder's ImageNet weights from a file named after it in a
    folder of $SEGLADDER_WEIGHTS, then timm's file in the Hugging Face / torch hub cache, and otherwise
    downloads that file into the cache as timm would (not when HF_HUB_OFFLINE=1: then, or when the
    download fails, `WeightsUnavailable` says how to supply it). A path loads that file or folder. Keys whose
    shapes differ are an error, except the first conv (adapted to `in_chans` as timm does) and
    `new_head`, the module names of a head sized for this task (left as initialised). Missing and
    unexpected keys are logged and returned.
    """
    if pretrained is False or pretrained is None:
        return None
    if _is_auto(pretrained) and (found := weights_in_env_folder(name)) is not None:
        state, source = read_state_dict(found), f"{found} (${WEIGHTS_ENV})"
    elif _is_auto(pretrained):
        state, source = _timm_weights(name, in_chans), f"timm pretrained {name}"
    else:
        path = resolve_weights_file(pretrained)
        state, source = read_state_dict(path), str(path)
    report = load_matching(
        module,
        state,
        source=source,
        what=f"encoder {name!r}",
        first_conv=_first_conv_key(module, name),
        new_head=new_head,
    )
    # A classifier head or final norm in a file meant for the full network is expected to be left over.
    surprising = [k for k in report.unexpected if k not in _full_model_keys(name)]
    head = tuple(_canonical(h) + "." for h in new_head)
    missing = [k for k in report.missing if not (head and _canonical(k).startswith(head))]
    log.log(logging.WARNING if missing or surprising else logging.INFO, "%s: %s", name, report)
    return report


WEIGHTS_ENV = "SEGLADDER_WEIGHTS"  # folders (os.pathsep-separated) holding pretrained weights files


def _is_auto(pretrained) -> bool:
    return pretrained is True or (isinstance(pretrained, str) and pretrained.lower() == "auto")


def weights_in_env_folder(name: str) -> Path | None:
    """The weights file for timm model `name` in the folders of $SEGLADDER_WEIGHTS, or None.

    A file or folder there belongs to `name` when it is named after it (`coat_lite_medium.in1k.safetensors`,
    `coat_lite_medium_a750cd63.pth` as released, a hub cache entry `models--timm--resnet18.tv_in1k`) or
    carries the name of timm's download (`resnet18-f37072fd.pth`). An entry for the exact pretrained tag
    wins over others of the same architecture.
    """
    raw = os.environ.get(WEIGHTS_ENV, "")
    cfg = timm.models.get_pretrained_cfg(name)
    arch = cfg.architecture if cfg else name.split(".")[0]
    tagged = f"{arch}.{cfg.tag}" if cfg and cfg.tag else arch
    download = os.path.basename(urlparse(cfg.url).path) if cfg and cfg.url else None
    found = []
    for folder in filter(None, raw.split(os.pathsep)):
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise ModelError(
                f"${WEIGHTS_ENV}: {str(root)!r} is not a folder (it names folders of weights files, "
                f"separated by {os.pathsep!r})"
            )
        found += [e for e in sorted(root.iterdir()) if e.name == download or _named_after(e.name, arch)]
    exact = [
        e
        for e in found
        if (n := e.name.removeprefix("models--timm--")) == tagged or n.startswith(tagged + ".")
    ]
    chosen = exact or found
    if len(chosen) > 1:
        raise ModelError(
            f"several weights for {tagged!r} in ${WEIGHTS_ENV}: {_few([str(e) for e in chosen])}; "
            f"keep one, or pass pretrained=/path/to/one"
        )
    return resolve_weights_file(chosen[0]) if chosen else None


def _named_after(entry: str, arch: str) -> bool:
    base = re.split(r"[.\-]", entry.removeprefix("models--timm--"))[0]
    # `coat_lite_medium_a750cd63` (a release hash) is named after coat_lite_medium; `coat_lite_medium_384`
    # is another timm model.
    return base == arch or (base.startswith(arch + "_") and not timm.is_model(base))


def _first_conv_key(module: nn.Module, name: str) -> str | None:
    """The module's key for the weight of timm's `first_conv`: the one whose input channels may differ."""
    cfg = timm.models.get_pretrained_cfg(name)
    names = (cfg.first_conv if cfg else None) or ()
    names = [_canonical(f"{n}.weight") for n in ((names,) if isinstance(names, str) else names)]
    for key, value in module.state_dict().items():
        # The first 4-D tensor, so that `layer1.0.conv1.weight` is never taken for `conv1.weight`.
        if value.ndim == 4:
            c = _canonical(key)
            return key if any(c == n or c.endswith("." + n) for n in names) else None
    return None


@functools.cache
def _full_model_keys(name: str) -> frozenset[str]:
    if not timm.is_model(name):
        return frozenset()
    with torch.device("meta"):
        return frozenset(timm.create_model(name, pretrained=False).state_dict())


def resolve_weights_file(path: str | os.PathLike) -> Path:
    """The weights file named by `path`: the file itself, or the one weights file in a folder.

    A folder may be a plain folder, a Hugging Face repo snapshot, or a hub cache entry such as
    `~/.cache/huggingface/hub/models--timm--resnet18.a1_in1k`.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"weights file {str(p)!r} does not exist (pretrained= expects a path or True/False)")
    if p.is_file():
        if not p.name.endswith(WEIGHT_SUFFIXES):
            raise ModelError(f"weights file {str(p)!r}: expected one of {', '.join(WEIGHT_SUFFIXES)}")
        return p
    for preferred in _PREFERRED_FILES:
        found = sorted(p.rglob(preferred))
        if found:
            break
    else:
        found = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
    # A hub cache keeps blobs and snapshot links to them; the same file reached twice is one file.
    unique = list({f.resolve(): f for f in found}.values())
    if not unique:
        raise ModelError(f"no weights file ({', '.join(WEIGHT_SUFFIXES)}) found under {str(p)!r}")
    if len(unique) > 1:
        raise ModelError(
            f"several weights files under {str(p)!r}: {_few([str(f) for f in unique])}; pass one of them"
        )
    return unique[0]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors/.pth/.pt/.bin/.ckpt file, unwrapped from a training checkpoint."""
    if path.name.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path), device="cpu")
        except Exception as exc:
            raise ModelError(f"cannot read safetensors file {str(path)!r}: {exc}") from exc
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelError(
                f"cannot read {str(path)!r} with torch.load(weights_only=True): {exc}\n"
                "Only plain tensors are loaded, never pickled code: re-save the weights with "
                "torch.save(model.state_dict(), path) or as .safetensors."
            ) from exc
    for key in ("state_dict", "model_state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ModelError(
            f"{str(path)!r} holds a {type(obj).__name__}, expected a state_dict (name -> tensor)"
        )
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ModelError(f"{str(path)!r} holds no tensors")
    return state


def _canonical(key: str) -> str:
    # timm's FeatureListNet renames nested modules `stages.0` to `stages_0`; comparing keys with `_`
    # and `.` made equal lets one file serve the full and the features-only model.
    return re.sub(r"[._]", ".", key)


def _prefixes(keys: list[str], depth: int = 4) -> set[str]:
    return {
        "",
        *(".".join(k.split(".")[:n]) + "." for k in keys for n in range(1, min(depth, k.count(".")) + 1)),
    }


def match_keys(source: list[str], target: list[str]) -> dict[str, str]:
    """Pair file keys with module keys, dropping the leading path on each side that pairs the most.

    Files carry the names of whatever held the encoder (`module.`, `model.net.encoder.model.`,
    `_orig_mod.`, none for a timm checkpoint) and our modules their own (`model.` for CoaT), so the
    wrapper paths are found rather than listed.
    """
    best: dict[str, str] = {}
    for tp in _prefixes(target):
        by_canon = {_canonical(k[len(tp) :]): k for k in target if k.startswith(tp)}
        for sp in _prefixes(source):
            pairs = {
                k: by_canon[c]
                for k in source
                if k.startswith(sp) and (c := _canonical(k[len(sp) :])) in by_canon
            }
            if len(pairs) > len(best):
                best = pairs
    return best


def load_matching(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    source: str,
    what: str,
    first_conv: str | None = None,
    new_head: tuple[str, ...] = (),
) -> WeightsReport:
    """Copy the tensors of `state` into `module` by (canonical) name; see `load_pretrained`."""
    target = module.state_dict()
    pairs = match_keys(list(state), list(target))
    head = tuple(_canonical(k) + "." for k in new_head)
    report = WeightsReport(source=source)
    to_load: dict[str, torch.Tensor] = {}
    wrong_shape = []
    for key, value in state.items():
        tkey = pairs.get(key)
        if tkey is None:
            report.unexpected.append(key)
            continue
        want = target[tkey].shape
        if value.shape != want:
            if (
                tkey == first_conv
                and value.ndim == 4
                and value.shape[0] == want[0]
                and value.shape[2:] == want[2:]
            ):
                value = timm.models.adapt_input_conv(want[1], value.float()).to(value.dtype)
                report.adapted.append(key)
            elif head and _canonical(tkey).startswith(head):
                report.unexpected.append(key)
                continue
            else:
                wrong_shape.append(f"{tkey}: file {tuple(value.shape)}, model {tuple(want)}")
                continue
        to_load[tkey] = value
    if wrong_shape:
        raise ModelError(
            f"weights in {source} do not fit {what}: {len(wrong_shape)} tensor(s) have another shape "
            f"({_few(wrong_shape)}). Are they for a different architecture or channel count?"
        )
    if not to_load:
        raise ModelError(
            f"none of the {len(state)} tensors in {source} belong to {what}: it expects keys like "
            f"{_few(list(target), 3)}, the file has {_few(list(state), 3)}"
        )
    module.load_state_dict(to_load, strict=False)
    report.loaded = len(to_load)
    report.missing = [k for k in target if k not in to_load]
    return report


def _few(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _hub_cache_dir() -> Path:
    # Read at call time, not from huggingface_hub.constants (fixed at its import), so that HF_HOME set
    # later in the process (tests, notebooks) is honoured.
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def _hub_endpoint() -> str:
    # At call time too: huggingface_hub reads HF_ENDPOINT once, when it is first imported.
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_offline() -> bool:
    """Whether the user told the Hugging Face libraries to stay offline (HF_HUB_OFFLINE=1).

    That is now or when huggingface_hub was imported; segladder never sets it.
    """
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return env.strip().lower() in {"1", "on", "yes", "true"} or bool(constants.HF_HUB_OFFLINE)


def _hub_filenames(cfg) -> tuple[str, ...]:
    # timm's order: the cfg's own file, else safetensors before the pickled alternative.
    return (cfg.hf_hub_filename,) if cfg.hf_hub_filename else ("model.safetensors", "pytorch_model.bin")


def _cached_weights(cfg) -> tuple[Path | None, list[str]]:
    """The locally cached file of a timm pretrained cfg, and the places looked in (for the error)."""
    looked = []
    if cfg.file and Path(cfg.file).expanduser().is_file():
        return Path(cfg.file).expanduser(), looked
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = _hub_filenames(cfg)
        for filename in names:
            hit = try_to_load_from_cache(
                repo, filename, cache_dir=_hub_cache_dir(), revision=revision or None
            )
            if isinstance(hit, str):
                return Path(hit), looked
        looked.append(f"Hugging Face cache {_hub_cache_dir()} (repo {repo}, file {' or '.join(names)})")
    if cfg.url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        if cached.is_file():
            return cached, looked
        looked.append(f"torch hub cache {cached}")
    return None, looked


def _download(cfg, looked: list[str]) -> Path:
    """Download timm's weights file for `cfg` into the Hugging Face (or torch hub) cache, with progress.

    `hf_hub_download` is what timm itself calls; it is given the cache folder and endpoint read now
    rather than at its import. Offline, or when the download fails, a `WeightsUnavailable` says why.
    """
    if hub_offline():
        raise _unavailable(cfg, looked, "HF_HUB_OFFLINE is set, so nothing is downloaded", offline=True)
    if cfg.hf_hub_id:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

        repo, _, revision = cfg.hf_hub_id.partition("@")
        endpoint, cache = _hub_endpoint(), _hub_cache_dir()
        names = _hub_filenames(cfg)
        for filename in names:
            log.info("downloading %s/%s/%s into %s", endpoint, repo, filename, cache)
            try:
                return Path(
                    hf_hub_download(
                        repo, filename, revision=revision or None, cache_dir=cache, endpoint=endpoint
                    )
                )
            except LocalEntryNotFoundError as exc:  # the Hub could not be asked, and nothing is cached
                raise _unavailable(cfg, looked, _hub_failure(exc, endpoint), offline=True) from exc
            except EntryNotFoundError:
                continue  # the repo holds the other format
            except HfHubHTTPError as exc:  # a repo that is missing, gated or private
                status = exc.response.status_code if exc.response is not None else "?"
                raise _unavailable(cfg, looked, f"{endpoint} answered HTTP {status} for {repo}") from exc
        raise _unavailable(cfg, looked, f"{endpoint}/{repo} holds none of {', '.join(names)}")
    import urllib.error

    dst = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
    log.info("downloading %s into %s", cfg.url, dst)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(cfg.url, str(dst), progress=True)
    except urllib.error.HTTPError as exc:
        raise _unavailable(cfg, looked, f"{cfg.url} answered HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise _unavailable(cfg, looked, f"{cfg.url} could not be reached ({reason})", offline=True) from exc
    return dst


def _hub_failure(exc: Exception, endpoint: str) -> str:
    """Why hf_hub_download found neither the Hub nor a cached file, from the error it chained."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    cause = exc.__cause__
    if isinstance(cause, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set, so nothing is downloaded"
    if isinstance(cause, HfHubHTTPError) and cause.response is not None:
        return (
            f"{endpoint} answered HTTP {cause.response.status_code} (the Hub or mirror is failing; try later)"
        )
    if cause is not None:
        return f"{endpoint} could not be reached ({type(cause).__name__}: {cause}); is there a network?"
    return f"{endpoint}: {exc}"


def _unavailable(cfg, looked: list[str], reason: str, *, offline: bool = False) -> WeightsUnavailable:
    """The one error for weights that are neither on this machine nor downloadable: why, and the ways out."""
    tag = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    env = os.environ.get(WEIGHTS_ENV)
    looked = [f"${WEIGHTS_ENV} ({env})" if env else f"${WEIGHTS_ENV} (not set)", *looked]
    ways = []
    if cfg.hf_hub_id:
        filename = _hub_filenames(cfg)[0]
        ways.append(
            f"download {filename} from https://huggingface.co/{cfg.hf_hub_id} and either pass "
            f"pretrained='/path/to/{filename}' (config: model.pretrained=/path/to/{filename}) or save it "
            f"as {tag}.{filename.rsplit('.', 1)[-1]} in a folder named by ${WEIGHTS_ENV}"
        )
    if cfg.url:
        ways.append(
            f"download {cfg.url} and pass pretrained='/path/to/{os.path.basename(urlparse(cfg.url).path)}' "
            f"(or put it in {Path(torch.hub.get_dir()) / 'checkpoints'} or a folder named by ${WEIGHTS_ENV})"
        )
    if offline:
        ways.append(
            "or, on a machine with a network and HF_HUB_OFFLINE unset, run `segladder models fetch CONFIG` "
            "(or this command) once to download them into the cache"
        )
    return WeightsUnavailable(
        f"pretrained weights for {tag!r} are not on this machine and could not be downloaded: {reason} "
        f"(looked in: {'; '.join(looked)}).\n"
        "Supply them: " + ";\n  ".join(ways) + ".\n"
        "Or train from scratch knowingly: pretrained=False (config: model.pretrained=false)."
    )


def _timm_weights(name: str, in_chans: int) -> dict[str, torch.Tensor]:
    """The timm pretrained state_dict for `name` (first conv adapted to `in_chans`): cached, else downloaded."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ModelError(
            f"timm has no pretrained weights for {name!r}; use pretrained=False or pretrained=/path/to/file"
        )
    cached, looked = _cached_weights(cfg)
    if cached is None:
        cached = _download(cfg, looked)
    try:
        model = timm.create_model(
            name,
            pretrained=True,
            in_chans=in_chans,
            num_classes=0,
            pretrained_cfg_overlay={"file": str(cached)},
        )
    except Exception as exc:
        raise ModelError(
            f"could not load timm's pretrained weights for {name!r} from {cached}: {exc}. "
            "Pass pretrained='/path/to/weights' to use another file."
        ) from exc
    return model.state_dict()

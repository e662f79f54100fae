"""Segmentation losses on one logit channel, and their composition into a weighted sum built from config."""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segladder.errors import ConfigError
from segladder.registry import Registry, suggest

__all__ = [
    "BCELoss",
    "COAT_ULSTM_LOSS",
    "CompositeLoss",
    "DiceLoss",
    "FocalLoss",
    "LOSSES",
    "LossTerm",
    "LovaszHingeLoss",
    "SoftBCELoss",
    "BinaryKDLoss",
    "ProbMSELoss",
    "binary_kd_loss",
    "build_loss",
    "coat_ulstm_loss",
    "lovasz_grad",
]

TARGET_KEYS = ("mask", "soft", "teacher")  # "teacher": a teacher's logits (distillation)


LOSSES: Registry[type[nn.Module]] = Registry("loss")


class _BinaryLoss(nn.Module):
    """Base: checks shapes and computes in float32 with autocast off, whatever the caller's precision.

    Under fp16/bf16 autocast the logits arrive in half precision; sums over a batch of pixels and
    `exp` of large logits overflow there, so every loss works on float32 copies. Subclasses
    implement `_loss(logits, target)` on float32 tensors of equal shape. `targets` lists the batch
    keys a loss may be fed in a composite, its default first.
    """

    targets: tuple[str, ...] = ("mask", "soft")

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.shape != target.shape:
            raise ValueError(
                f"{type(self).__name__}: logits {tuple(logits.shape)} and target {tuple(target.shape)} "
                "must have the same shape (B, 1, H, W)"
            )
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return self._loss(logits.float(), target.float())

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError


@LOSSES.register("bce")
class BCELoss(_BinaryLoss):
    """Mean binary cross-entropy with logits; `pos_weight` multiplies the loss of positive pixels.

    Args:
        pos_weight: the weight of positive pixels' loss; None weighs both classes 1.
    """

    def __init__(self, pos_weight: float | None = None):
        super().__init__()
        if pos_weight is not None and not (math.isfinite(pos_weight) and pos_weight > 0):
            raise ValueError(f"pos_weight must be a positive number, got {pos_weight!r}")
        self.pos_weight = pos_weight

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        pos_weight = None
        if self.pos_weight is not None:
            # A fill on the device, not torch.tensor(...): that is a blocking host→device copy every step.
            pos_weight = logits.new_full((), self.pos_weight)
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)

    def extra_repr(self) -> str:
        """The settings shown in the module's repr."""
        return f"pos_weight={self.pos_weight}"


@LOSSES.register("soft_bce")
class SoftBCELoss(BCELoss):
    """BCE against the soft label (annotator mean); the same formula as `BCELoss`, fed `batch["soft"]`."""

    targets = ("soft",)


@LOSSES.register("dice")
class DiceLoss(_BinaryLoss):
    """Smooth soft Dice loss `1 - (2·Σpy + s) / (Σp + Σy + s)` on sigmoid probabilities.

    With `per_image=False` (default) the sums run over the whole batch, like the competition's global
    Dice pooled over all pixels; rare, thin contrails then do not give each near-empty tile a noisy
    loss of its own. With `per_image=True` the loss is the mean over images. `smooth` keeps an
    empty target with an empty prediction at loss 0 while any predicted pixel there costs
    `Σp / (Σp + s)`: unlike smp's DiceLoss, which zeroes the loss of empty targets, false positives on
    empty tiles are still penalised.

    Args:
        per_image: the mean of each image's loss instead of one loss over the batch.
        smooth: the `s` added to numerator and denominator; positive.
    """

    def __init__(self, per_image: bool = False, smooth: float = 1.0):
        super().__init__()
        if not (math.isfinite(smooth) and smooth > 0):
            raise ValueError(f"smooth must be a positive number, got {smooth!r}")
        self.per_image = bool(per_image)
        self.smooth = smooth

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        probs = torch.sigmoid(logits)
        dims = tuple(range(1, logits.ndim)) if self.per_image else tuple(range(logits.ndim))
        intersection = (probs * target).sum(dims)
        cardinality = probs.sum(dims) + target.sum(dims)
        return (1.0 - (2.0 * intersection + self.smooth) / (cardinality + self.smooth)).mean()

    def extra_repr(self) -> str:
        """The settings shown in the module's repr."""
        return f"per_image={self.per_image}, smooth={self.smooth}"


@LOSSES.register("focal")
class FocalLoss(_BinaryLoss):
    """Mean binary focal loss `α_t · (1 - p_t)^γ · BCE` (Lin et al. 2017); `alpha=None` weighs classes equally.

    Args:
        alpha: the weight of positives (negatives get `1 - alpha`), in [0, 1]; None weighs both 1.
        gamma: the focusing exponent; 0 gives plain BCE.
    """

    def __init__(self, alpha: float | None = None, gamma: float = 2.0):
        super().__init__()
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1] or be None, got {alpha!r}")
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"gamma must be a non-negative number, got {gamma!r}")
        self.alpha = alpha
        self.gamma = gamma

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        # 1 - p_t written with sigmoid(±x) so that it stays accurate where p_t is within float eps of 1;
        # the floor keeps the gradient of q**gamma finite for gamma < 1 once q underflows to zero.
        q = target * torch.sigmoid(-logits) + (1.0 - target) * torch.sigmoid(logits)
        loss = q.clamp_min(torch.finfo(q.dtype).tiny).pow(self.gamma) * bce
        if self.alpha is not None:
            loss = (self.alpha * target + (1.0 - self.alpha) * (1.0 - target)) * loss
        return loss.mean()

    def extra_repr(self) -> str:
        """The settings shown in the module's repr."""
        return f"alpha={self.alpha}, gamma={self.gamma}"


@torch.no_grad()
def lovasz_grad(gt_sorted: Tensor, score: Literal["jaccard", "dice"] = "jaccard") -> Tensor:
    """Gradient of the Lovász extension of `1 - score` w.r.t. errors sorted in decreasing order (last dim).

    `gt_sorted` holds the binary labels in that order. Computed in float64: the counts reach the
    number of pixels in a batch (over 2**24 at 32 × 1024²), and the gradient is a difference of
    neighbouring ratios, which float32 would resolve only to a few digits. Counted in half
    precision, as Berman's code does for half labels, the sum overflows past 65,504 positives
    (one full 256² tile, or the complement `1 - y` of almost any batch) and gives inf/inf = NaN.
    The denominators never vanish for labels in [0, 1] — the first sorted pixel is either a
    positive (counted in the union) or a false positive — so empty and full masks need no epsilon.
    """
    gt = gt_sorted.double()
    positives = gt.sum(-1, keepdim=True)
    fn = gt.cumsum(-1)
    fp = (1.0 - gt).cumsum(-1)
    tp = positives - fn
    if score == "jaccard":
        loss = 1.0 - tp / (positives + fp)
    else:
        loss = 1.0 - 2.0 * tp / (2.0 * tp + fn + fp)
    return torch.diff(loss, dim=-1, prepend=torch.zeros_like(loss[..., :1]))


@LOSSES.register("lovasz")
class LovaszHingeLoss(_BinaryLoss):
    """Binary Lovász hinge (Berman et al. 2018), symmetric by default: `0.5·(L(x, y) + L(-x, 1 - y))`.

    The symmetric form also rewards getting the background right, which keeps the loss informative
    on tiles without contrails. The target is binarised at 0.5 (the hinge needs signs ±1).
    `per_image=False` (default) takes one Lovász extension over all pixels of the batch, as the
    2nd-place solution did. `hinge="elu"` uses `elu(e) + 1` instead of `relu(e)` and `score="dice"`
    the extension of the F1/Dice loss instead of the Jaccard loss; both are what the 2nd-place
    code (`src_inference1/lovasz.py` of DrHB/2nd-place-contrails) actually ran.

    Args:
        symmetric: add the loss of the inverted problem (background as foreground).
        per_image: the mean of each image's loss instead of one extension over the batch.
        hinge: "relu" or "elu" (`elu(e) + 1`).
        score: "jaccard" or "dice", the score whose Lovász extension is minimised.
    """

    targets = ("mask",)

    def __init__(
        self,
        symmetric: bool = True,
        per_image: bool = False,
        hinge: Literal["relu", "elu"] = "relu",
        score: Literal["jaccard", "dice"] = "jaccard",
    ):
        super().__init__()
        if hinge not in ("relu", "elu"):
            raise ValueError(f"hinge must be 'relu' or 'elu', got {hinge!r}")
        if score not in ("jaccard", "dice"):
            raise ValueError(f"score must be 'jaccard' or 'dice', got {score!r}")
        self.symmetric = bool(symmetric)
        self.per_image = bool(per_image)
        self.hinge = hinge
        self.score = score

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        rows = logits.shape[0] if self.per_image else 1
        logits = logits.reshape(rows, -1)
        labels = (target > 0.5).reshape(rows, -1).to(logits.dtype)
        # -x against 1 - y gives the very same errors 1 - x·(2y - 1), so one sort serves both terms.
        errors = 1.0 - logits * (2.0 * labels - 1.0)
        errors_sorted, perm = torch.sort(errors, dim=-1, descending=True)
        gt_sorted = torch.gather(labels, -1, perm)
        grad = lovasz_grad(gt_sorted, self.score)
        if self.symmetric:
            grad = 0.5 * (grad + lovasz_grad(1.0 - gt_sorted, self.score))
        hinged = F.relu(errors_sorted) if self.hinge == "relu" else F.elu(errors_sorted) + 1.0
        return (hinged * grad.to(hinged.dtype)).sum(-1).mean()

    def extra_repr(self) -> str:
        """The settings shown in the module's repr."""
        return f"symmetric={self.symmetric}, per_image={self.per_image}, hinge={self.hinge!r}, score={self.score!r}"


def binary_kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Binary knowledge distillation on one logit channel, mean over pixels (Hinton et al. 2015).

    `T²·KL(Bernoulli(σ(z_t/T)) ‖ Bernoulli(σ(z_s/T)))`: written as BCE-with-logits of z_s/T against the
    soft target p_t minus the teacher's entropy (which makes it exactly 0 when the logits agree). Its gradient
    w.r.t. z_s is `T·(σ(z_s/T) − σ(z_t/T))/N`, so T² keeps the gradient scale independent of T. A softmax
    KD over a single channel is constant and would teach nothing.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"binary_kd_loss: student {tuple(student_logits.shape)} and teacher "
            f"{tuple(teacher_logits.shape)} logits must have the same shape"
        )
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        zs = student_logits.float() / temperature
        zt = teacher_logits.detach().float() / temperature
        p_t = torch.sigmoid(zt)
        cross = F.binary_cross_entropy_with_logits(zs, p_t, reduction="none")
        entropy = F.binary_cross_entropy_with_logits(zt, p_t, reduction="none")
        return temperature**2 * (cross - entropy).mean()


@LOSSES.register("kd")
class BinaryKDLoss(_BinaryLoss):
    """`binary_kd_loss` as a loss term fed the teacher's logits (`batch["teacher"]`).

    `temperature` is an attribute so a schedule (the distillation task's cosine 4 → 1) can set it per step.

    Args:
        temperature: the softening temperature; positive.
    """

    targets = ("teacher",)

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        self.temperature = float(temperature)

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        return binary_kd_loss(logits, target, self.temperature)

    def extra_repr(self) -> str:
        """The settings shown in the module's repr."""
        return f"temperature={self.temperature:g}"


@LOSSES.register("mse_prob")
class ProbMSELoss(_BinaryLoss):
    """Mean squared error between the student's and the teacher's probabilities, `MSE(σ(z_s), σ(z_t))`."""

    targets = ("teacher",)

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(torch.sigmoid(logits), torch.sigmoid(target.detach()))


@dataclass(frozen=True)
class LossTerm:
    """One weighted term: `name` keys its logged part, `target` picks `"mask"`, `"soft"` or `"teacher"` from the batch."""

    name: str
    weight: float
    module: nn.Module
    target: str = "mask"


class CompositeLoss(nn.Module):
    """Weighted sum of loss terms; `forward` returns `(total, parts)` with each unweighted part detached.

    `targets` is either one tensor (used for every term) or a mapping such as the batch dict, from
    which each term takes its `target` key ("mask" or "soft").

    Args:
        terms: `LossTerm`s, or (name, weight, module, target) tuples; names must be unique.
    """

    def __init__(self, terms: Sequence[LossTerm | tuple[str, float, nn.Module, str]]):
        super().__init__()
        terms = [t if isinstance(t, LossTerm) else LossTerm(*t) for t in terms]
        if not terms:
            raise ValueError("CompositeLoss needs at least one term")
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"loss term names must be unique, got {names}")
        self.names = names
        self.weights = [float(t.weight) for t in terms]
        self.targets = [t.target for t in terms]
        self.terms = nn.ModuleList(t.module for t in terms)

    @property
    def target_keys(self) -> set[str]:
        """The batch keys the loss reads, e.g. `{"mask", "soft"}`: tells the data module what to load."""
        return set(self.targets)

    def forward(
        self, logits: Tensor, targets: Tensor | Mapping[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted total and each term's unweighted, detached part by name."""
        # Started from the first term, and a weight of 1 not multiplied: each op is a kernel launch per step.
        total: Tensor | None = None
        parts: dict[str, Tensor] = {}
        for name, weight, key, module in zip(self.names, self.weights, self.targets, self.terms, strict=True):
            if isinstance(targets, Mapping):
                if key not in targets:
                    raise KeyError(
                        f"loss term {name!r} needs batch[{key!r}]; the batch has {sorted(targets)}"
                    )
                target = targets[key]
            else:
                target = targets
            value = module(logits, target)
            term = value if weight == 1.0 else weight * value
            total = term if total is None else total + term
            parts[name] = value.detach()
        return total.float(), parts

    def extra_repr(self) -> str:
        """The terms as `name×weight<-target` in the module's repr."""
        return ", ".join(
            f"{n}×{w:g}<-{k}" for n, w, k in zip(self.names, self.weights, self.targets, strict=True)
        )


# The 2nd-place CoaT_ULSTM loss, BCE + 0.01·0.5·(L(x, y) + L(-x, 1 - y)), as its code ran it: the
# symmetric Lovász already carries the 0.5, so its weight is 0.01.
COAT_ULSTM_LOSS: tuple[dict[str, Any], ...] = (
    {"name": "bce", "weight": 1.0},
    {"name": "lovasz", "weight": 0.01, "hinge": "elu", "score": "dice"},
)


def coat_ulstm_loss() -> CompositeLoss:
    """The loss of the 2nd-place CoaT_ULSTM (see `COAT_ULSTM_LOSS`)."""
    return build_loss(COAT_ULSTM_LOSS)


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    return f".{suggest(word, choices)} Valid: {', '.join(choices)}."


def _as_dict(item: Any, where: str) -> dict[str, Any]:
    if isinstance(item, Mapping):
        spec = dict(item)
    elif hasattr(item, "model_dump"):
        # A pydantic model: only what the user wrote, so a field's default (e.g. target "mask")
        # cannot override the loss's own default (soft_bce reads "soft").
        spec = item.model_dump(exclude_unset=True)
    else:
        raise ConfigError(
            f"{where}: expected a mapping like {{name: bce, weight: 1.0}}, got {type(item).__name__}"
        )
    # None means "the default" for every key (YAML `target: null`, a dumped optional field).
    return {k: v for k, v in spec.items() if v is not None}


def _build_term(item: Any, where: str) -> LossTerm:
    spec = _as_dict(item, where)
    name = spec.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError(f"{where}: every loss term needs a 'name', one of {', '.join(LOSSES)}")
    if name not in LOSSES:
        raise ConfigError(f"{where}.name: unknown loss {name!r}{_did_you_mean(name, list(LOSSES))}")
    cls = LOSSES[name]
    where = f"{where} ({name})"

    weight = spec.pop("weight", 1.0)
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        or not math.isfinite(weight)
        or weight < 0
    ):
        raise ConfigError(f"{where}.weight: must be a finite number >= 0, got {weight!r}")

    target = spec.pop("target", cls.targets[0])
    if target not in TARGET_KEYS:
        raise ConfigError(
            f"{where}.target: unknown target {target!r}{_did_you_mean(str(target), TARGET_KEYS)}"
        )
    if target not in cls.targets:
        why = {
            "lovasz": "the Lovász hinge needs the binary mask",
            "soft_bce": "soft_bce is BCE on the soft label; use name: bce for the mask",
            "kd": "kd compares with the teacher's logits (task: distillation)",
            "mse_prob": "mse_prob compares with the teacher's probabilities (task: distillation)",
        }.get(name, f"{name} takes {', '.join(cls.targets)}")
        raise ConfigError(f"{where}.target: {name} cannot take target {target!r}: {why}")

    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in spec:
        if key not in params:
            raise ConfigError(
                f"{where}: unknown argument {key!r}{_did_you_mean(key, ['name', 'weight', 'target', *params])}"
            )
    try:
        module = cls(**spec)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc

    # A term on its non-default target is logged under its own name, so `dice` on the mask and
    # `dice` on the soft label can sit side by side.
    part = name if target == cls.targets[0] else f"{name}_{target}"
    return LossTerm(part, float(weight), module, target)


def build_loss(spec: Any, where: str = "loss") -> CompositeLoss:
    """Build a `CompositeLoss` from config: a list of terms like `{"name": "bce", "weight": 1.0, "pos_weight": 5}`.

    Each term is a mapping or a pydantic model with `name` (one of `LOSSES`), optional `weight`
    (default 1), optional `target` ("mask" or "soft"; `soft_bce` defaults to "soft", all others to
    "mask") and the loss's own arguments. A single term may be given without the list. Bad names,
    arguments or values raise `ConfigError` naming `where[i]` and the nearest valid names.
    """
    items = [spec] if isinstance(spec, Mapping) or hasattr(spec, "model_dump") else spec
    if isinstance(items, str) or not isinstance(items, Sequence) or not items:
        raise ConfigError(f"{where}: expected a non-empty list of loss terms, got {spec!r}")
    terms = [_build_term(item, f"{where}[{i}]") for i, item in enumerate(items)]
    names = [t.name for t in terms]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(
                f"{where}[{i}]: a second {name!r} term; give it another target or merge the weights"
            )
    return CompositeLoss(terms)

"""Losses: reference values, numerical safety (empty/full masks, extreme and half-precision logits), config."""

from __future__ import annotations

from typing import Literal

import pydantic
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from segladder.errors import ConfigError
from segladder.losses import (
    COAT_ULSTM_LOSS,
    BCELoss,
    CompositeLoss,
    DiceLoss,
    FocalLoss,
    LossTerm,
    LovaszHingeLoss,
    SoftBCELoss,
    build_loss,
    coat_ulstm_loss,
    lovasz_grad,
)

SHAPE = (2, 1, 16, 16)

ALL_LOSSES = {
    "bce": lambda: BCELoss(),
    "bce_pos_weight": lambda: BCELoss(pos_weight=5.0),
    "soft_bce": lambda: SoftBCELoss(),
    "dice": lambda: DiceLoss(),
    "dice_per_image": lambda: DiceLoss(per_image=True),
    "lovasz": lambda: LovaszHingeLoss(),
    "lovasz_per_image": lambda: LovaszHingeLoss(per_image=True),
    "lovasz_2nd_place": lambda: LovaszHingeLoss(hinge="elu", score="dice"),
    "lovasz_asymmetric": lambda: LovaszHingeLoss(symmetric=False),
    "focal": lambda: FocalLoss(),
    "focal_alpha_low_gamma": lambda: FocalLoss(alpha=0.25, gamma=0.5),
    "coat_ulstm": lambda: coat_ulstm_loss(),
}


def _value(module, logits, target):
    out = module(logits, target)
    return out[0] if isinstance(out, tuple) else out


def _mask(seed: int = 0, frac: float = 0.1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(SHAPE, generator=g) < frac).float()


def _targets():
    half = torch.zeros(SHAPE)
    half[0] = 1.0  # one full tile, one empty tile in the same batch
    return {"empty": torch.zeros(SHAPE), "full": torch.ones(SHAPE), "sparse": _mask(), "full_and_empty": half}


def _logits():
    g = torch.Generator().manual_seed(1)
    return {
        "random": lambda: torch.randn(SHAPE, generator=g) * 3,
        "+1e4": lambda: torch.full(SHAPE, 1e4),
        "-1e4": lambda: torch.full(SHAPE, -1e4),
        "fp16 +6e4": lambda: torch.full(SHAPE, 6e4, dtype=torch.float16),
        "fp16 -6e4": lambda: torch.full(SHAPE, -6e4, dtype=torch.float16),
        "fp16 mixed ±6e4": lambda: (torch.randn(SHAPE, generator=g).sign() * 6e4).half(),
    }


@pytest.mark.parametrize("loss_name", list(ALL_LOSSES))
def test_finite_loss_and_gradients_on_extreme_inputs(loss_name):
    module = ALL_LOSSES[loss_name]()
    for target_name, target in _targets().items():
        for logit_name, make in _logits().items():
            logits = make().requires_grad_(True)
            loss = _value(module, logits, target)
            loss.backward()
            case = f"{loss_name}, target {target_name}, logits {logit_name}"
            assert loss.dtype == torch.float32, case
            assert loss.ndim == 0, case
            assert torch.isfinite(loss), case
            assert torch.isfinite(logits.grad).all(), case


@pytest.mark.parametrize("loss_name", list(ALL_LOSSES))
def test_bf16_autocast_is_computed_in_float32(loss_name):
    module = ALL_LOSSES[loss_name]()
    conv = torch.nn.Conv2d(1, 1, 3, padding=1)
    image = torch.randn(SHAPE) * 50
    target = _mask(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(image)
        assert logits.dtype == torch.bfloat16
        loss = _value(module, logits, target)
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters())
    # The same bf16 logits outside autocast give the same float32 value.
    assert torch.allclose(loss, _value(module, logits.detach(), target), rtol=1e-6, atol=1e-7)


def test_bce_pos_weight_matches_formula():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(SHAPE, generator=g) * 4
    y = torch.rand(SHAPE, generator=g)
    pw = 7.0
    p = torch.sigmoid(x.double())
    expected = -(pw * y * torch.log(p) + (1 - y) * torch.log1p(-p)).mean()
    assert torch.allclose(BCELoss(pos_weight=pw)(x, y).double(), expected, rtol=1e-5)
    assert torch.allclose(BCELoss()(x, y), F.binary_cross_entropy_with_logits(x, y))


def test_soft_bce_is_bce_fed_the_soft_label():
    x, soft = torch.randn(SHAPE), torch.rand(SHAPE)
    assert torch.equal(SoftBCELoss()(x, soft), BCELoss()(x, soft))
    assert SoftBCELoss.targets == ("soft",) and BCELoss.targets[0] == "mask"


@pytest.mark.parametrize("per_image", [False, True])
def test_dice_perfect_and_inverse_predictions(per_image):
    target = _mask(7, frac=0.3)
    target[:, :, 0, 0] = 1.0  # every image has a positive pixel
    perfect = torch.where(target > 0, 20.0, -20.0)
    loss = DiceLoss(per_image=per_image)
    assert loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    # Nothing right: intersection 0, only the smoothing term survives (≤ 1/#pixels of an image).
    assert loss(-perfect, target).item() == pytest.approx(1.0, abs=1.0 / 256)


def test_dice_global_versus_per_image_and_empty_tiles():
    target = torch.zeros(SHAPE)
    target[0, :, :8, :8] = 1.0  # image 0: 64 positives; image 1: empty
    logits = torch.where(target > 0, 20.0, -20.0)
    # An empty tile predicted empty costs nothing either way.
    assert DiceLoss()(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    assert DiceLoss(per_image=True)(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    # One false-positive pixel on the empty tile: a small global cost, a large per-image one.
    logits[1, 0, 0, 0] = 20.0
    assert DiceLoss()(logits, target).item() == pytest.approx(1 - 129 / 130, abs=1e-5)
    assert DiceLoss(per_image=True)(logits, target).item() == pytest.approx(0.5 * (1 - 1 / 2), abs=1e-5)


def test_focal_matches_torchvision_and_reduces_to_bce():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(SHAPE, generator=g) * 5
    y = _mask(11, frac=0.2)
    expected = sigmoid_focal_loss(x, y, alpha=0.25, gamma=2.0, reduction="mean")
    assert torch.allclose(FocalLoss(alpha=0.25, gamma=2.0)(x, y), expected, rtol=1e-5)
    assert torch.allclose(FocalLoss(alpha=None, gamma=0.0)(x, y), F.binary_cross_entropy_with_logits(x, y))


# --- Lovász: a direct transcription of Berman et al.'s reference code, flat, one sort per term ---


def _reference_lovasz_flat(logits, labels, hinge="relu", score="jaccard"):
    logits, labels = logits.double().flatten(), labels.double().flatten()
    errors = 1.0 - logits * (2.0 * labels - 1.0)
    errors_sorted, perm = torch.sort(errors, descending=True)
    gt = labels[perm]
    gts = gt.sum()
    if score == "jaccard":
        intersection = gts - gt.cumsum(0)
        union = gts + (1 - gt).cumsum(0)
        curve = 1.0 - intersection / union
    else:  # the F-score form of the 2nd-place lovasz.py
        tp = gts - gt.cumsum(0)
        fp = (1 - gt).cumsum(0)
        fn = gt.cumsum(0)
        curve = 1 - 2 * tp / (2 * tp + fn + fp)
    curve[1:] = curve[1:] - curve[:-1].clone()
    hinged = F.relu(errors_sorted) if hinge == "relu" else F.elu(errors_sorted) + 1
    return torch.dot(hinged, curve)


def _reference_lovasz(logits, labels, per_image, symmetric, **kw):
    def one(x, y):
        if per_image:
            return torch.stack(
                [_reference_lovasz_flat(xi, yi, **kw) for xi, yi in zip(x, y, strict=True)]
            ).mean()
        return _reference_lovasz_flat(x, y, **kw)

    if symmetric:
        return 0.5 * (one(logits, labels) + one(-logits, 1 - labels))
    return one(logits, labels)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("variant", [("relu", "jaccard"), ("elu", "dice")])
def test_lovasz_matches_reference(per_image, symmetric, variant):
    hinge, score = variant
    module = LovaszHingeLoss(symmetric=symmetric, per_image=per_image, hinge=hinge, score=score)
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(3, 1, 12, 12, generator=g) * 2
        y = (torch.rand(3, 1, 12, 12, generator=g) < 0.2).float()
        y[1] = 0.0  # an empty image inside the batch
        if seed == 3:
            x = x.round()  # many tied errors: the loss must not depend on how ties are ordered
        expected = _reference_lovasz(x, y, per_image, symmetric, hinge=hinge, score=score)
        assert module(x, y).double().item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)


def test_lovasz_gradient_matches_reference_gradient():
    g = torch.Generator().manual_seed(21)
    x = (torch.randn(2, 1, 8, 8, generator=g) * 2).requires_grad_(True)
    y = (torch.rand(2, 1, 8, 8, generator=g) < 0.3).float()
    LovaszHingeLoss()(x, y).backward()
    x_ref = x.detach().double().requires_grad_(True)
    _reference_lovasz(x_ref, y, per_image=False, symmetric=True).backward()
    assert torch.allclose(x.grad.double(), x_ref.grad, atol=1e-6)


def test_lovasz_grad_sums_to_the_set_loss_of_all_errors():
    # The increments telescope to loss(all pixels mispredicted) = 1 for any non-empty labels,
    # and are non-negative for the Jaccard loss; float64 keeps this exact at 2**21 pixels.
    g = torch.Generator().manual_seed(0)
    gt = (torch.rand(1, 2**21, generator=g) < 0.01).float()
    for labels in (gt, torch.zeros_like(gt), torch.ones_like(gt)):
        grad = lovasz_grad(labels)
        assert grad.dtype == torch.float64
        assert grad.sum().item() == pytest.approx(1.0, abs=1e-12)
        assert (grad >= 0).all()


def test_lovasz_half_precision_labels_with_more_than_65504_positives():
    # Berman's code (as in smp and the 2nd-place repo) sums half labels in half: inf, then NaN.
    x = torch.randn(1, 1, 256, 256).half().requires_grad_(True)
    for target in (torch.ones(1, 1, 256, 256), torch.zeros(1, 1, 256, 256)):
        loss = LovaszHingeLoss()(x, target.half())
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
        assert loss.item() == pytest.approx(LovaszHingeLoss()(x.detach().float(), target).item(), rel=1e-6)


def test_lovasz_binarises_the_target():
    x = torch.randn(SHAPE)
    soft = torch.rand(SHAPE)
    assert torch.equal(LovaszHingeLoss()(x, soft), LovaszHingeLoss()(x, (soft > 0.5).float()))


def test_lovasz_empty_mask_loss_is_the_largest_hinge_of_the_background():
    # With no positives, the Jaccard extension puts all weight on the worst false positive.
    x = torch.randn(SHAPE)
    loss = LovaszHingeLoss(symmetric=False)(x, torch.zeros(SHAPE))
    assert loss.item() == pytest.approx(F.relu(1 + x.max()).item(), rel=1e-6)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"same shape"):
        BCELoss()(torch.zeros(2, 1, 8, 8), torch.zeros(2, 8, 8))


# --- composition and config ---


def test_composite_is_the_weighted_sum_and_reports_parts():
    x = torch.randn(SHAPE, requires_grad=True)
    mask, soft = _mask(2), torch.rand(SHAPE)
    loss = CompositeLoss(
        [
            LossTerm("bce", 1.0, BCELoss(pos_weight=2.0)),
            ("lovasz", 0.01, LovaszHingeLoss(), "mask"),
            LossTerm("dice_soft", 0.5, DiceLoss(), "soft"),
        ]
    )
    total, parts = loss(x, {"mask": mask, "soft": soft, "image": torch.zeros(1)})
    expected = {
        "bce": BCELoss(pos_weight=2.0)(x, mask),
        "lovasz": LovaszHingeLoss()(x, mask),
        "dice_soft": DiceLoss()(x, soft),
    }
    assert set(parts) == set(expected)
    for name, value in expected.items():
        assert torch.allclose(parts[name], value)
        assert not parts[name].requires_grad
    assert torch.allclose(total, expected["bce"] + 0.01 * expected["lovasz"] + 0.5 * expected["dice_soft"])
    total.backward()
    assert torch.isfinite(x.grad).all()
    assert loss.target_keys == {"mask", "soft"}
    with pytest.raises(KeyError, match=r"batch\['soft'\]"):
        loss(x, {"mask": mask})
    # A bare tensor serves every term.
    total_single, _ = CompositeLoss([LossTerm("bce", 2.0, BCELoss())])(x, mask)
    assert torch.allclose(total_single, 2 * F.binary_cross_entropy_with_logits(x, mask))


def test_build_loss_from_config():
    loss = build_loss(
        [
            {"name": "bce", "weight": 1.0, "pos_weight": 5.0},
            {"name": "lovasz", "weight": 0.005},
            {"name": "dice", "weight": 1.0, "target": "soft"},
            {"name": "soft_bce"},
            {"name": "focal", "gamma": 1.5, "alpha": 0.75},
        ]
    )
    assert loss.names == ["bce", "lovasz", "dice_soft", "soft_bce", "focal"]
    assert loss.weights == [1.0, 0.005, 1.0, 1.0, 1.0]
    assert loss.targets == ["mask", "mask", "soft", "soft", "mask"]
    assert loss.terms[0].pos_weight == 5.0
    assert loss.terms[4].gamma == 1.5 and loss.terms[4].alpha == 0.75


class _Term(pydantic.BaseModel):
    """Shaped like segladder.config's loss term: loss arguments ride along as extra keys."""

    model_config = pydantic.ConfigDict(extra="allow")
    name: str
    weight: float = 1.0
    target: Literal["mask", "soft"] = "mask"


def test_build_loss_accepts_pydantic_models():
    terms = [
        _Term(name="bce", pos_weight=3.0),
        _Term(name="dice", target="soft"),
        _Term(name="soft_bce", weight=0.5),  # the model's target default must not turn it onto the mask
        _Term(name="focal", alpha=None),
    ]
    loss = build_loss(terms)
    assert loss.names == ["bce", "dice_soft", "soft_bce", "focal"]
    assert loss.targets == ["mask", "soft", "soft", "mask"]
    assert loss.weights == [1.0, 1.0, 0.5, 1.0]
    assert loss.terms[0].pos_weight == 3.0
    assert loss.terms[3].alpha is None


def test_none_means_default():
    loss = build_loss([{"name": "soft_bce", "target": None, "weight": None, "pos_weight": None}])
    assert loss.targets == ["soft"] and loss.weights == [1.0] and loss.terms[0].pos_weight is None


def test_coat_ulstm_recipe_is_the_2nd_place_formula():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(SHAPE, generator=g) * 3
    y = _mask(4)
    total, parts = coat_ulstm_loss()(x, y)
    lovasz = _reference_lovasz(x, y, per_image=False, symmetric=False, hinge="elu", score="dice")
    lovasz_inv = _reference_lovasz(-x, 1 - y, per_image=False, symmetric=False, hinge="elu", score="dice")
    expected = F.binary_cross_entropy_with_logits(x, y).double() + 0.01 * 0.5 * (lovasz + lovasz_inv)
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert [t["name"] for t in COAT_ULSTM_LOSS] == ["bce", "lovasz"]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ([{"name": "lovaz"}], r"loss\[0\]\.name: unknown loss 'lovaz'.*Did you mean: lovasz"),
        ([{"weight": 1.0}], r"loss\[0\]: every loss term needs a 'name'"),
        (
            [{"name": "bce"}, {"name": "lovasz", "per_imag": True}],
            r"loss\[1\] \(lovasz\): unknown argument 'per_imag'.*Did you mean: per_image",
        ),
        ([{"name": "dice", "pos_weight": 2}], r"loss\[0\] \(dice\): unknown argument 'pos_weight'"),
        ([{"name": "bce", "pos_weight": -1}], r"loss\[0\] \(bce\): pos_weight must be a positive number"),
        ([{"name": "bce", "weight": -1}], r"loss\[0\] \(bce\)\.weight"),
        ([{"name": "bce", "weight": "heavy"}], r"loss\[0\] \(bce\)\.weight"),
        ([{"name": "dice", "target": "sofft"}], r"target 'sofft'.*Did you mean: soft"),
        ([{"name": "lovasz", "target": "soft"}], r"lovasz cannot take target 'soft'.*binary mask"),
        ([{"name": "soft_bce", "target": "mask"}], r"soft_bce cannot take target 'mask'.*name: bce"),
        ([{"name": "lovasz", "hinge": "gelu"}], r"hinge must be 'relu' or 'elu'"),
        ([{"name": "focal", "gamma": "two"}], r"loss\[0\] \(focal\)"),
        ([{"name": "bce"}, {"name": "bce", "weight": 2}], r"loss\[1\]: a second 'bce' term"),
        ([], r"non-empty list"),
        ("bce", r"non-empty list"),
        ([["bce", 1.0]], r"expected a mapping"),
    ],
)
def test_build_loss_config_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        build_loss(spec)


def test_build_loss_names_the_config_path():
    with pytest.raises(ConfigError, match=r"^train\.loss\[0\]\.name"):
        build_loss([{"name": "dise"}], where="train.loss")

"""Snapper: output per edge and position for both fusions, input checks, soft targets, loss and decoding."""

import pytest
import torch

from segladder import models
from segladder.models.registry import ModelInputError
from segladder.models.snapper import coords_of, decode, edge_loss, positions_of, soft_targets


@pytest.fixture(scope="module", params=["average", "fpn"])
def model(request):
    torch.manual_seed(0)
    return models.create("Snapper", encoder="resnet18", fusion=request.param, hidden=16, decoder_layers=2)


def test_registered_as_a_box_model():
    assert models.info("Snapper").output == "box" and "Snapper" in models.with_output("box")


def test_logits_per_edge_and_position_with_gradients(model):
    model.train()
    x = torch.rand(2, 3, 48, 48)
    out = model(x)
    assert out.shape == (2, 4, 48)
    edge_loss(out, torch.tensor([[5.0, 6, 40, 41], [0, 0, 48, 48]])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # Left/right read rows pooled over y: changing only the columns of the right half moves their logits.
    model.eval()
    with torch.no_grad():
        y = x.clone()
        y[..., 24:] = 0
        assert not torch.allclose(model(x)[:, 2], model(y)[:, 2])
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 4, 32)  # output length follows the crop


def test_bad_inputs_are_clear_errors(model):
    with pytest.raises(ModelInputError, match=r"square \(B, 3, S, S\)"):
        model(torch.rand(1, 3, 32, 48))
    with pytest.raises(ModelInputError, match="fusion"):
        models.create("Snapper", encoder="resnet18", fusion="concat")
    with pytest.raises(ModelInputError, match="levels=9"):
        models.create("Snapper", encoder="resnet18", levels=9)


def test_positions_span_the_whole_crop():
    size = 64
    c = torch.tensor([0.0, 10.3, 64.0])
    assert torch.allclose(coords_of(positions_of(c, size), size), c)
    assert positions_of(torch.tensor([-5.0, 70.0]), size).tolist() == [0, 63]  # edges outside: at the border


def test_soft_targets_are_distributions_peaked_at_the_edge():
    q = soft_targets(torch.tensor([[10.0, 20.0, 30.0, 40.0]]), 64, sigma=1.0)
    assert torch.allclose(q.sum(-1), torch.ones(1, 4))
    peaks = q.argmax(-1)[0]
    assert peaks.tolist() == [round(v * 63 / 64) for v in (10.0, 20.0, 30.0, 40.0)]


def test_loss_is_lowest_for_logits_at_the_true_edges():
    target = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    q = soft_targets(target, 64)
    right = edge_loss(torch.log(q + 1e-9), target)
    shifted = edge_loss(torch.log(soft_targets(target + 3, 64) + 1e-9), target)
    assert right < shifted < edge_loss(torch.zeros(1, 4, 64), target) + 10


def test_decoding_argmax_expectation_and_confidence():
    size = 33  # positions map to coordinates p * 33 / 32
    logits = torch.full((1, 4, size), -30.0)
    logits[0, 0, 4] = 0  # a single peak
    logits[0, 1, 8] = logits[0, 1, 9] = 0  # two equal neighbours: halfway
    logits[0, 2, 20] = 0  # a peak with a far second mode outside the window
    logits[0, 2, 30] = -0.5
    logits[0, 3, 25] = 2
    logits[0, 3, 26] = 2 + torch.log(torch.tensor(3.0))  # 1:3 weights: 25.75
    edges, conf = decode(logits, "argmax")
    assert torch.allclose(edges[0], torch.tensor([4.0, 8, 20, 26]) * 33 / 32)
    edges, conf = decode(logits, "expectation", window=2)
    assert torch.allclose(edges[0], torch.tensor([4.0, 8.5, 20, 25.75]) * 33 / 32, atol=1e-4)
    assert conf[0, 0] > 0.99 and 0.49 < conf[0, 1] < 0.51 and conf[0, 2] < 0.7
    with pytest.raises(ValueError, match="argmax"):
        decode(logits, "mean")


def test_decoded_edges_stay_ordered():
    logits = torch.full((1, 4, 16), -30.0)
    logits[0, 0, 12] = logits[0, 2, 3] = logits[0, 1, 2] = logits[0, 3, 9] = 0  # left right of right
    edges, _ = decode(logits, "argmax")
    assert edges[0, 0] < edges[0, 2] and edges[0, 1] < edges[0, 3]

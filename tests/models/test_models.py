"""Every registered model: shapes, dtypes, gradients, frame handling and input errors, on small CPU inputs."""

import pytest
import torch

from segladder import models

ALL = models.available()
TEMPORAL = [n for n in ALL if models.info(n).uses_time]


def make(name, **kwargs):
    torch.manual_seed(0)
    if name.startswith("Unet25D"):
        kwargs.setdefault("input_size", None)  # the 3rd place's 512² is too slow for these CPU tests
    return models.create(name, **kwargs)


def expected_shape(name, batch, size):
    output = models.info(name).output
    return {"label": (batch, 1), "box": (batch, 4, size)}.get(output, (batch, 1, size, size))


@pytest.mark.medium
@pytest.mark.parametrize("name", ALL)
def test_shapes_dtype_and_finite_gradients(name):
    model = make(name).train()
    x5 = torch.rand(2, 3, 3, 64, 64)
    out5 = model(x5)
    out4 = model(x5[:, :, -1])
    assert out5.shape == out4.shape == expected_shape(name, 2, 64)
    assert out5.dtype == out4.dtype == torch.float32
    loss = out5.mean() + out4.mean()
    if getattr(model, "aux_classifier", False):  # the head only gets gradients through the aux output
        loss = loss + model.forward_with_aux(x5)["cls"].mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads), (
        "a parameter got no or a non-finite gradient"
    )
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.medium
@pytest.mark.parametrize("name", ALL)
def test_bf16_autocast_and_channels_last(name):
    kwargs = {"encoder": "coat_lite_mini"} if name == "CoaT_ULSTM" else {}
    model = make(name, **kwargs).to(memory_format=torch.channels_last).eval()
    x = torch.rand(1, 3, 2, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == expected_shape(name, 1, 64)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", ["ResNet18_U", "ResNet18_ULSTM", "Unet2D", "Unet25D", "Classifier"])
def test_in_chans_is_configurable(name):
    model = make(name, in_chans=5).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 5, 2, 64, 64))
    assert out.shape == expected_shape(name, 1, 64)


@pytest.mark.parametrize("name", ["ResNet18_SimplerFCN", "ResNet18_U", "Unet2D", "Classifier"])
def test_single_frame_models_use_the_frame_at_frame_index(name):
    model = make(name, frame_index=1).eval()
    x = torch.rand(1, 3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), model(x[:, :, 1]), atol=1e-5)


def test_ulstm_uses_frames_up_to_the_labelled_one_only():
    model = make("ResNet18_ULSTM", frame_index=1).eval()
    x = torch.rand(1, 3, 3, 64, 64)
    later, earlier = x.clone(), x.clone()
    later[:, :, 2] = 0
    earlier[:, :, 0] = 0
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(ref, model(later))
        assert not torch.allclose(ref, model(earlier))


@pytest.mark.parametrize("name", TEMPORAL)
def test_temporal_models_take_any_number_of_frames(name):
    model = make(name, encoder="coat_lite_mini") if name == "CoaT_ULSTM" else make(name)
    model.eval()
    with torch.no_grad():
        for t in (1, 4):
            assert model(torch.rand(1, 3, t, 32, 32)).shape == expected_shape(name, 1, 32)


def test_frames_as_channels_stacks_num_frames():
    model = make("Unet2D", frames_as_channels=True, num_frames=3).eval()
    assert model.net.encoder.model.conv1.in_channels == 9
    with torch.no_grad():
        assert model(torch.rand(1, 3, 3, 64, 64)).shape == (1, 1, 64, 64)
    with pytest.raises(models.ModelInputError, match="T=3"):
        model(torch.rand(1, 3, 64, 64))
    with pytest.raises(models.ModelError, match="num_frames"):
        models.create("Classifier", frames_as_channels=True)


@pytest.mark.parametrize("name", ["SegCls2D", "Unet25DCls"])
def test_aux_classification_head(name):
    model = make(name).eval()
    x = torch.rand(2, 3, 2, 64, 64)
    with torch.no_grad():
        mask = model(x)
        out = model.forward_with_aux(x)
    assert isinstance(mask, torch.Tensor) and mask.shape == (2, 1, 64, 64)
    assert set(out) == ({"mask", "hard", "cls"} if name == "Unet25DCls" else {"mask", "cls"})
    assert out["mask"].shape == (2, 1, 64, 64) and out["cls"].shape == (2, 1)
    assert torch.allclose(out["mask"], mask)


def test_aux_output_needs_the_head():
    with pytest.raises(models.ModelError, match="aux_classifier"):
        make("Unet2D").forward_with_aux(torch.rand(1, 3, 2, 64, 64))
    with pytest.raises(models.ModelError, match="hard_head=False, aux_classifier=False"):
        make("Unet25D", hard_head=False).forward_with_aux(torch.rand(1, 3, 2, 64, 64))


def test_fused_3d_layers_are_configurable():
    assert len(make("Classifier25D").fuser.blocks) == 6
    assert len(make("Classifier25D", num_3d_layers=2).fuser.blocks) == 2


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((2, 3, 64), "got a 3-D tensor"),
        ((2, 3, 1, 1, 64, 64), "got a 6-D tensor"),
        ((2, 4, 64, 64), "got 4 channels.*in_chans=4"),
        ((2, 3, 2, 60, 64), "divisible by 16; got 60x64"),
    ],
)
def test_bad_input_says_what_was_expected(shape, message):
    model = make("ResNet18_ULSTM")
    with pytest.raises(models.ModelInputError, match=message):
        model(torch.rand(*shape))


def test_wrong_number_of_frames_is_a_clear_error():
    with pytest.raises(models.ModelInputError, match="built for T=5 frames"):
        make("Unet25D", num_frames=5)(torch.rand(1, 3, 3, 64, 64))
    with pytest.raises(models.ModelInputError, match="frame_index=4 does not exist in an input of T=3"):
        make("ResNet18_ULSTM", frame_index=4)(torch.rand(1, 3, 3, 64, 64))
    with pytest.raises(models.ModelInputError, match="outside num_frames"):
        make("Unet25D", num_frames=3, frame_index=3)


def test_input_errors_are_value_errors_too():
    assert issubclass(models.ModelInputError, ValueError)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ResNet18_ULSTM", "Unet25DCls", "SegCls2D"])
def test_dynamo_traces_without_graph_breaks(name):
    model = make(name).eval()
    explained = torch._dynamo.explain(model)(torch.rand(1, 3, 2, 32, 32))
    torch._dynamo.reset()
    assert explained.graph_break_count == 0, explained.break_reasons


@pytest.mark.gpu
@pytest.mark.parametrize("name", ALL)
def test_compiled_bf16_channels_last_train_step_on_gpu(name):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = make(name).cuda().to(memory_format=torch.channels_last).train()
    compiled = torch.compile(model)
    x = torch.rand(2, 3, 5, 256, 256, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = compiled(x)
    out.float().mean().backward()
    assert out.shape == expected_shape(name, 2, 256) and out.dtype == torch.bfloat16
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

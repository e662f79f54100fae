import pytest
import torch

from segladder.config import CONFIG_DIR, build_config, load_config, parse_overrides
from segladder.errors import ConfigError
from segladder.training.build import check_experiment


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    if cfg.task == "distillation":  # ships without a teacher: it must say which key to set
        with pytest.raises(ConfigError, match="needs distill.teacher"):
            check_experiment(cfg)
    elif cfg.trainer.precision == "16-mixed" and not torch.cuda.is_available():  # the fp16 recipe is GPU-only
        with pytest.raises(
            ConfigError, match=r"^trainer\.precision 16-mixed needs a CUDA device; use 32 or bf16-mixed"
        ):
            check_experiment(cfg)
    else:
        check_experiment(cfg)


def test_16_mixed_is_refused_on_cpu_only():
    cfg = build_config({}, ["trainer.precision=16-mixed"])
    if torch.cuda.is_available():
        check_experiment(cfg)
    else:
        with pytest.raises(ConfigError, match=r"^trainer\.precision 16-mixed needs a CUDA device"):
            check_experiment(cfg)


def test_every_seed_system_has_a_config():
    names = {p.stem for p in CONFIG_DIR.glob("*.yaml")}
    assert {
        "resnet18_simplerfcn",
        "resnet18_simple",
        "resnet18_u",
        "resnet18_ulstm",
        "coat_ulstm",
        "unet25d",
        "classifier",
    } <= names


def test_overrides_are_typed_and_nested():
    cfg = build_config({}, ["optim.lr=3e-4", "trainer.max_epochs=2", "data.frames=[0,4]", "model.ps=0.1"])
    assert cfg.optim.lr == 3e-4 and cfg.trainer.max_epochs == 2 and cfg.data.frames == [0, 4]
    assert cfg.model.kwargs == {"ps": 0.1}
    assert parse_overrides(["a.b.c=1", "a.b.d=x"]) == {"a": {"b": {"c": 1, "d": "x"}}}


def test_unknown_key_names_the_nearest_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'data.batchsize'.*batch_size"):
        build_config({}, ["data.batchsize=4"])
    with pytest.raises(ConfigError, match=r"unknown key 'optim.learning_rate'"):
        build_config({"optim": {"learning_rate": 1}})
    with pytest.raises(ConfigError, match=r"unknown key 'trainr'.*trainer"):
        build_config({"trainr": {}})


def test_bad_values_and_bad_files(tmp_path):
    # a value from the file: its key and the value, under the file's name
    with pytest.raises(ConfigError, match=r"^invalid config x\.yaml:\n  optim\.lr: .* than 0 \(got -1\)$"):
        build_config({"optim": {"lr": -1}}, source="x.yaml")
    # a value given with --set: blamed on that --set, in one line (a section's check: on the key inside it)
    with pytest.raises(ConfigError, match=r"^--set optim\.lr=-1: Input should be greater than 0$"):
        build_config({}, ["optim.lr=-1"])
    with pytest.raises(ConfigError, match=r"^--set trainer\.precision=fp8: .*'bf16-mixed'$"):
        build_config({}, ["trainer.precision=fp8"])
    with pytest.raises(
        ConfigError, match=r"^--set data\.augment\.crop_positive_share=0\.9: data\.augment\.crop_pos"
    ):
        build_config({}, ["data.augment.crop_positive_share=0.9"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        build_config({}, ["optim.lr"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_model_and_loss_errors_are_caught_before_anything_is_built():
    with pytest.raises(ConfigError, match=r"unknown model 'ResNet18U'\. Did you mean: ResNet18_U,"):
        check_experiment(build_config({"model": {"name": "ResNet18U"}}))
    with pytest.raises(ConfigError, match=r"model 'ResNet18_U' has no option\(s\) pss\. Did you mean: ps\?"):
        check_experiment(build_config({"model": {"name": "ResNet18_U", "pss": 0.1}}))
    # Two misspellings with the same nearest option give its hint once.
    with pytest.raises(ConfigError, match=r"decoder_channel, decoder\. Did you mean: decoder_channels\? It"):
        check_experiment(build_config({"model": {"name": "ResNet18_U", "decoder_channel": 1, "decoder": 1}}))
    with pytest.raises(ConfigError, match=r"loss\[0\]\.name: unknown loss 'lovaz'\. Did you mean: lovasz\?"):
        check_experiment(build_config({"loss": [{"name": "lovaz"}]}))


def test_a_choice_of_strings_keeps_a_numeric_looking_value_as_written():
    # `--set trainer.precision=32` is the choice "32", not the number 32 that YAML would read.
    cfg = build_config({}, ["trainer.precision=32", "trainer.compile_dynamic=null", "trainer.max_epochs=3"])
    assert (
        cfg.trainer.precision == "32" and cfg.trainer.compile_dynamic is None and cfg.trainer.max_epochs == 3
    )

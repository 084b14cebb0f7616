"""configs/*.py and glow_tf.config_lib: paper settings, validation, CLI overrides."""

import importlib
import os
import subprocess
import sys

import pytest

from glow_tf import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_NAMES = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".py"))


def load(name):
    return importlib.import_module(f"configs.{name}").get_config()


def test_every_product_config_exists():
    expected = {"default", "cifar10", "imagenet32", "imagenet64", "lsun", "celebahq256", "celeba", "mnist", "digits"}
    assert expected | {"test"} <= set(CONFIG_NAMES)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_is_valid_and_round_trips_through_json(name):
    config = load(name)
    config_lib.validate_config(config, num_replicas=1)
    back = config_lib.config_from_json(config_lib.config_to_json(config))
    assert config_lib.config_to_json(back) == config_lib.config_to_json(config)


# name: (image size, L, K, coupling, n_bits, per-device batch) from the paper (reference/openai-glow.md).
PAPER = {
    "cifar10": ("cifar10", 32, 3, 32, "affine", 8, 64),
    "imagenet32": ("imagenet32", 32, 3, 48, "affine", 8, 64),
    "imagenet64": ("imagenet64", 64, 4, 48, "affine", 8, 16),
    "lsun": ("lsun", 64, 3, 48, "affine", 8, 16),
    "celebahq256": ("celebahq", 256, 6, 32, "additive", 5, 1),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_configs_carry_the_paper_settings(name):
    config = load(name)
    dataset, size, levels, steps, coupling, n_bits, per_device = PAPER[name]
    assert config.data.name == dataset and config.data.image_size == size
    assert (config.model.num_levels, config.model.num_steps, config.model.hidden_width) == (levels, steps, 512)
    assert config.model.coupling == coupling and config.data.n_bits == n_bits
    assert config.model.learn_top and config.model.permutation == "invconv"
    assert config.optim.learning_rate == 1e-3 and config.optim.beta1 == 0.9
    assert config.train.batch_size == 0 and config.train.per_replica_batch_size == per_device
    assert config_lib.global_batch_size(config, 8) == 8 * per_device
    assert config.train.n_init == int(256 * (32 / size) ** 2)


def test_celeba_is_64px_5_bits():
    config = load("celeba")
    assert (config.data.name, config.data.image_size, config.data.n_bits) == ("celeba", 64, 5)


def test_unknown_key_is_rejected_with_its_name():
    config = load("test")
    config.train.batchsize = 8
    with pytest.raises(ValueError, match=r"train\.batchsize"):
        config_lib.validate_config(config)


def test_batch_not_divisible_by_replicas_is_rejected():
    config = load("test")
    config.train.batch_size = 16
    with pytest.raises(ValueError, match="not divisible by the 3 replicas"):
        config_lib.validate_config(config, num_replicas=3)
    config.train.batch_size = 0
    config.train.per_replica_batch_size = 5
    assert config_lib.global_batch_size(config, 3) == 15


def test_image_size_not_divisible_by_levels_is_rejected():
    config = load("test")
    config.data.image_size = 12
    config.model.num_levels = 3
    with pytest.raises(ValueError, match="image_size"):
        config_lib.validate_config(config)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("model.coupling", "spline", "coupling"),
        ("optim.learning_rate", 0.0, "learning_rate"),
        ("optim.ema_decay", 1.0, "ema_decay"),
        ("train.log_every", 0, "log_every"),
        ("sample.temperatures", (), "temperatures"),
        ("data.name", "stl10", "Unknown dataset"),
    ],
)
def test_out_of_range_values_are_rejected(field, value, message):
    config = load("test")
    section, key = field.split(".")
    with config.ignore_type():
        config[section][key] = value
    with pytest.raises(ValueError, match=message):
        config_lib.validate_config(config)


def _parse(*args):
    """train.py's own flag parsing, in-process (it sets sys.argv, restored here)."""
    train = importlib.import_module("train")
    saved = sys.argv
    try:
        train._parse(["train.py", *args])
    finally:
        sys.argv = saved
    return train.FLAGS


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
def test_cli_dataset_selects_its_config_and_applies_typed_overrides():
    # ml_collections defines one flag per override: absl allows a single such parse per process.
    flags = _parse("--dataset=celeba", "--config.train.batch_size=8", "--config.optim.learning_rate=2e-4")
    assert flags.config.data.name == "celeba" and flags.config.data.n_bits == 5
    assert flags.config.train.batch_size == 8 and flags.config.optim.learning_rate == 2e-4


@pytest.mark.parametrize(
    "args, message",
    [(["--dataset=test", "--config=configs/test.py"], "either --dataset or --config"), (["--dataset=svhn"], "svhn")],
)
def test_cli_rejects_conflicting_or_unknown_dataset_flags(args, message):
    with pytest.raises(SystemExit) as exit_info:
        _parse(*args)
    assert message in str(exit_info.value.code)


def _cli(*args, timeout=120):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "train.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, message",
    [("--config.train.no_such_key=1", "no_such_key"), ("--config.train.batch_size=many", "batch_size")],
)
def test_cli_rejects_unknown_keys_and_badly_typed_overrides(tmp_path, override, message):
    out = _cli("--config=configs/test.py", f"--workdir={tmp_path}", override)
    assert out.returncode != 0
    assert message in out.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


@pytest.mark.slow
def test_cli_invalid_config_fails_before_training(tmp_path):
    out = _cli("--dataset=test", f"--workdir={tmp_path}", "--config.data.image_size=12", "--config.model.num_levels=3")
    assert out.returncode != 0
    assert "Invalid configuration" in out.stderr and "image_size" in out.stderr
    assert not os.path.exists(tmp_path / "checkpoints")

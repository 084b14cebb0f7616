"""The GPU-scale modes, tested on CPU: reversible and checkpointed backprop, float16 with loss scaling, XLA.

Tolerances: reversible backprop rebuilds each step's input from its output with the
step's inverse, so its gradients carry float32 rounding of the rebuilt inputs; we
require every variable's gradient to match standard backprop's to 1e-4 of the
largest entry of that gradient (measured: ~1e-6). Checkpointing recomputes the same
float operations: 1e-5. XLA fuses differently: 1e-4 relative.
"""

import math
import os

import helpers
import numpy as np
import pytest
import tensorflow as tf
from helpers import perturb

from glow_tf import Glow, checkpointing, config_lib, optim, train_lib
from glow_tf.flow import BACKPROP_MODES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 240


def _images(batch, shape, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(-0.5, 0.5, [batch, *shape]).astype(np.float32))


def _model(**kwargs):
    args = dict(image_shape=[8, 8, 3], num_levels=2, num_steps=3, hidden_width=8, learn_top=True, seed=0)
    args.update(kwargs)
    model = Glow(**args)
    labels = tf.constant(np.arange(16) % 3, tf.int32) if args.get("num_classes") else None
    model.initialize(_images(16, model.image_shape, seed=1), labels)
    perturb(model, 0.05, seed=0)
    return model


def _grads(model, mode, x, labels=None, shards=1):
    model.backprop, model.batch_shards = mode, shards

    @tf.function
    def fn():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model.objective(x, labels)["loss"])
        return loss, tape.gradient(loss, model.trainable_variables)

    loss, grads = fn()
    model.backprop, model.batch_shards = "standard", 1
    return loss, grads


def _assert_grads_close(model, got, expected, tol):
    assert len(got) == len(expected) == len(model.trainable_variables)
    for var, a, b in zip(model.trainable_variables, got, expected):
        assert a is not None, var.name
        scale = float(np.max(np.abs(b.numpy()))) or 1.0
        err = float(np.max(np.abs(a.numpy() - b.numpy()))) / scale
        assert err <= tol, (var.name, err)


VARIANTS = {
    "affine-invconv": {},
    "affine-lu": dict(lu_decomposed=True),
    "additive-shuffle": dict(coupling="additive", permutation="shuffle"),
    "additive-reverse-plain-top": dict(coupling="additive", permutation="reverse", learn_top=False),
    "class-conditional": dict(num_classes=3, weight_y=0.5, lu_decomposed=True),
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("mode, tol", [("reversible", 1e-4), ("checkpointing", 1e-5)])
def test_memory_saving_backprop_gives_standard_gradients(variant, mode, tol):
    model = _model(**VARIANTS[variant])
    x = _images(6, model.image_shape, seed=2)
    labels = tf.constant([0, 1, 2, 0, 1, 2]) if model.num_classes else None
    loss, expected = _grads(model, "standard", x, labels)
    got_loss, got = _grads(model, mode, x, labels)
    assert float(got_loss) == float(loss)  # the forward pass is the same computation
    _assert_grads_close(model, got, expected, tol)


@pytest.mark.slow
def test_reversible_with_batch_shards_equals_unsharded_standard():
    model = _model(lu_decomposed=True)
    x = _images(5, model.image_shape, seed=3)
    _, expected = _grads(model, "standard", x)
    _, got = _grads(model, "reversible", x, shards=2)
    _assert_grads_close(model, got, expected, 1e-4)


def _step_peak_bytes(mode, steps):
    """TF's allocator peak during one compiled gradient step (the activations the step keeps alive at once).

    64x64 images: oneDNN serves small tensors from a pool the allocator statistics do not see.
    """
    model = _model(image_shape=[64, 64, 3], num_levels=2, num_steps=steps, hidden_width=16)
    model.backprop = mode
    x = _images(8, model.image_shape, seed=4)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model.objective(x)["loss"])
        return tape.gradient(loss, model.trainable_variables)

    step()  # trace and warm up
    peaks = []
    for _ in range(2):  # the smaller of two: the allocator's pools move a single reading by ~1 MB
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        step()
        peaks.append(tf.config.experimental.get_memory_info("CPU:0")["peak"] - before)
    return min(peaks)


@pytest.mark.slow
def test_reversible_step_memory_does_not_grow_with_the_number_of_steps():
    standard = [_step_peak_bytes("standard", k) for k in (2, 8)]
    reversible = [_step_peak_bytes("reversible", k) for k in (2, 8)]
    assert standard[1] > 2.5 * standard[0]  # every step's activations are kept
    assert reversible[1] < 1.5 * reversible[0], reversible  # only the level outputs are (the bound)
    assert reversible[1] < 0.5 * standard[1]


def test_backprop_modes_are_validated_and_the_old_name_still_works():
    model = _model()
    with pytest.raises(ValueError, match="Unknown backprop mode 'revers'; valid: standard, checkpointing"):
        model.backprop = "revers"
    model.gradient_checkpointing = True
    assert model.backprop == "checkpointing" and model.gradient_checkpointing
    model.gradient_checkpointing = False
    assert model.backprop == "standard"
    with pytest.raises(ValueError, match="contradicts backprop='reversible'"):
        Glow([8, 8, 3], num_levels=2, num_steps=1, hidden_width=8, gradient_checkpointing=True, backprop="reversible")
    assert BACKPROP_MODES == ("standard", "checkpointing", "reversible")


def test_config_backprop_field_reaches_the_model_and_the_alias_is_checked(test_config):
    assert train_lib.build_model(test_config(**{"train.backprop": "reversible"})).backprop == "reversible"
    assert train_lib.build_model(test_config(**{"train.gradient_checkpointing": True})).backprop == "checkpointing"
    with pytest.raises(ValueError, match="contradicts config.train.backprop='reversible'"):
        config_lib.validate_config(
            test_config(**{"train.gradient_checkpointing": True, "train.backprop": "reversible"})
        )
    with pytest.raises(ValueError, match="Unknown config.train.backprop 'fast'"):
        config_lib.validate_config(test_config(**{"train.backprop": "fast"}))
    assert config_lib.default_config().train.backprop == "standard"


@pytest.fixture
def make_trainer(test_config, tmp_path):
    """``make_trainer(name, **overrides)``: a Trainer of configs/test.py with overrides in ``tmp_path / name``."""
    return lambda name, **overrides: train_lib.Trainer(test_config(**overrides), str(tmp_path / name))


def _one_step(trainer):
    trainer.initialize()
    metrics = trainer.train_step(next(iter(trainer.make_dataset(0))))
    return {k: v.numpy() for k, v in metrics.items()}, [v.numpy() for v in trainer.model.trainable_variables]


@pytest.mark.slow
def test_reversible_trainer_step_updates_like_the_standard_one(make_trainer):
    expected, weights = _one_step(make_trainer("std"))
    got, got_weights = _one_step(make_trainer("rev", **{"train.backprop": "reversible"}))
    assert got["loss"] == expected["loss"] and got["finite"]
    np.testing.assert_allclose(got["grad_norm"], expected["grad_norm"], rtol=1e-5)
    for a, b in zip(got_weights, weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_non_finite_guard_still_skips_bad_updates_with_reversible_backprop(tmp_path, test_config):
    config = test_config(**{"train.backprop": "reversible", "optim.learning_rate": 1e30, "optim.warmup_images": 0})
    config.optim.ema_decay = 0.0
    trainer = train_lib.Trainer(config, str(tmp_path / "nan"))
    with pytest.raises(train_lib.NonFiniteLossError, match="non-finite"):
        trainer.train()
    model, _ = train_lib.restore_for_inference(str(tmp_path / "nan"))
    assert checkpointing.all_finite(model.variables)


@pytest.mark.slow
@pytest.mark.parametrize("shards", [1, 2])
def test_xla_compiled_step_equals_the_plain_one(make_trainer, shards):
    expected, weights = _one_step(make_trainer(f"plain{shards}", **{"train.batch_shards": shards}))
    got, got_weights = _one_step(
        make_trainer(f"xla{shards}", **{"train.batch_shards": shards, "train.jit_compile": True})
    )
    np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-5)
    np.testing.assert_allclose(got["grad_norm"], expected["grad_norm"], rtol=1e-4)
    for a, b in zip(got_weights, weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------- float16
def test_loss_scale_grows_after_good_steps_and_backs_off_on_overflow():
    scale = optim.DynamicLossScale(initial=8.0, growth_interval=3, minimum=2.0)
    history = []
    for finite in [True, True, True, True, False, False, False, True]:
        scale.update(tf.constant(finite))
        history.append((float(scale.scale.numpy()), int(scale.good_steps.numpy())))
    assert history == [(8, 1), (8, 2), (16, 0), (16, 1), (8, 0), (4, 0), (2, 0), (2, 1)]
    loss = tf.constant(3.0)
    assert float(scale.scaled(loss)) == 6.0 and float(scale.unscaled([tf.constant(6.0)])[0]) == 3.0


def test_float16_networks_compute_in_float16_with_float32_variables_and_priors():
    model = _model(compute_dtype="float16")
    assert all(v.dtype == tf.float32 for v in model.trainable_variables)
    x = _images(4, model.image_shape)
    spec = tf.TensorSpec([None, 8, 8, 3])
    graph_def = tf.function(model.log_prob).get_concrete_function(spec).graph.as_graph_def()
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    half = [n for n in nodes if n.op == "Conv2D" and tf.as_dtype(n.attr["T"].type) == tf.float16]
    assert len(half) == 2 * model.num_levels  # conv1 and conv_out of the traced step of each level
    assert model.log_prob(x).dtype == tf.float32
    plain = _model()
    np.testing.assert_allclose(model.bits_per_dim(x), plain.bits_per_dim(x), atol=0.01)


@pytest.mark.slow
def test_float16_training_is_finite_close_to_float32_and_overflows_are_not_failures(make_trainer):
    """A few steps from the same init: float16 bits/dim within 0.02 of float32's, no non-finite failure."""
    cadences = {"train.num_steps": 12, "train.eval_every": 0, "train.sample_every": 0, "train.checkpoint_every": 6}
    fp32 = make_trainer("fp32", **cadences)
    fp16 = make_trainer("fp16", **cadences, **{"model.compute_dtype": "float16"})
    assert fp16.loss_scale is not None and fp32.loss_scale is None
    r32, r16 = fp32.train(), fp16.train()
    assert r16.step == 12 and np.isfinite(r16.last_eval_bits_per_dim)
    assert abs(r16.last_eval_bits_per_dim - r32.last_eval_bits_per_dim) < 0.02
    assert float(fp16.loss_scale.scale.numpy()) >= 1.0


@pytest.mark.slow
def test_float16_overflow_skips_the_update_and_halves_the_scale(make_trainer):
    trainer = make_trainer("overflow", **{"model.compute_dtype": "float16"})
    trainer.initialize()
    trainer.loss_scale.scale.assign(2.0**127)  # any float16 gradient times this overflows
    before = [v.numpy() for v in trainer.model.trainable_variables]
    metrics = trainer.train_step(next(iter(trainer.make_dataset(0))))
    assert not bool(metrics["finite"]) and bool(metrics["overflow"])
    assert float(trainer.loss_scale.scale.numpy()) == 2.0**126
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, trainer.model.trainable_variables))


@pytest.mark.slow
def test_float16_resume_is_bit_identical_including_the_loss_scale(tmp_path, make_trainer):
    overrides = {"model.compute_dtype": "float16", "train.num_steps": 4, "train.checkpoint_every": 2}
    overrides.update({"train.eval_every": 0, "train.sample_every": 0})
    straight = make_trainer("straight", **overrides)
    straight.loss_scale.growth_interval = 2  # exercise growth within the run
    straight.train()
    halfway = make_trainer("resumed", **overrides)
    halfway.loss_scale.growth_interval = 2
    halfway.train(num_steps=2)
    resumed = make_trainer("resumed", **overrides)
    resumed.loss_scale.growth_interval = 2
    assert resumed.restored_from.endswith("ckpt-2")
    assert float(resumed.loss_scale.scale.numpy()) == float(halfway.loss_scale.scale.numpy())
    resumed.train()
    a = tf.train.load_checkpoint(str(tmp_path / "straight" / "checkpoints" / "ckpt-4"))
    b = tf.train.load_checkpoint(str(tmp_path / "resumed" / "checkpoints" / "ckpt-4"))
    keys = [k for k in a.get_variable_to_shape_map() if "save_counter" not in k]
    assert any("loss_scale" in k for k in keys)
    for key in keys:
        np.testing.assert_array_equal(a.get_tensor(key), b.get_tensor(key), err_msg=key)


# --------------------------------------------------- MirroredStrategy
MIRRORED = f"""
import json, sys
sys.path.insert(0, {REPO!r})
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from configs import test
from glow_tf import data, train_lib

out = {{}}
config = test.get_config()
x_all = data.model_inputs(next(iter(data.make_train_dataset(config.data, 16, seed=5)))[0], config.data.n_bits, 5)
for name, mode, strategy in [
    ("one_standard", "standard", tf.distribute.get_strategy()),
    ("two_reversible", "reversible", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])),
]:
    config = test.get_config()
    config.train.backprop = mode
    trainer = train_lib.Trainer(config, sys.argv[1] + "/" + name, strategy)
    trainer.initialize()
    if strategy.num_replicas_in_sync > 1:
        x = strategy.experimental_distribute_values_from_function(
            lambda ctx: x_all[8 * ctx.replica_id_in_sync_group : 8 * (ctx.replica_id_in_sync_group + 1)])
    else:
        x = x_all
    loss, _, grads = trainer.compute_gradients(x)
    out[name] = {{"loss": float(loss), "grads": [g.numpy().tolist() for g in grads]}}
    metrics = trainer.train_step(next(iter(trainer.make_dataset(0))))
    out[name]["finite"] = bool(metrics["finite"])
print(json.dumps(out))
"""


@pytest.mark.slow
def test_reversible_backprop_under_mirrored_strategy_on_two_devices(tmp_path):
    out = helpers.run_json_script(MIRRORED, str(tmp_path), timeout=TIMEOUT)
    one, two = out["one_standard"], out["two_reversible"]
    assert two["finite"] and one["finite"]
    assert math.isclose(one["loss"], two["loss"], rel_tol=1e-5)
    for a, b in zip(two["grads"], one["grads"]):
        a, b = np.asarray(a), np.asarray(b)
        assert np.max(np.abs(a - b)) <= 1e-4 * (np.max(np.abs(b)) or 1.0)

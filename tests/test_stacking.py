"""Stacked flow-step variables (glow_tf.stacking): the per-step numbers bit for bit, views, resume across layouts."""

import itertools
import logging

import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_same_values, by_step_name, make_test_config, tiny_model

import glow_tf
from glow_tf import config_lib, export, stacking, train_lib

SHAPE = (8, 8, 3)
VARIANTS = {
    "lu-affine-conditional": dict(lu_decomposed=True, num_classes=3),
    "invconv-affine": dict(),
    "shuffle-additive": dict(permutation="shuffle", coupling="additive"),
}


def copy_weights(source: glow_tf.Glow, target: glow_tf.Glow) -> None:
    """Sets the stacked ``target`` to the per-step ``source``'s values (matched by variable name)."""
    by_name = {v.name: v for v in source.variables}
    for v in target.variables:
        if "/steps/" in v.name:
            rows = [by_name[stacking.step_name(v.name, k)].numpy() for k in range(v.shape[0])]
            v.assign(np.stack(rows))
        else:
            v.assign(by_name[v.name].numpy())


def model_pair(variant: str):
    kwargs = VARIANTS[variant]
    per_step = tiny_model(SHAPE, 5, seed=1, num_steps=3, **kwargs)
    stacked = tiny_model(SHAPE, 5, seed=1, num_steps=3, stack_variables=True, **kwargs)
    copy_weights(per_step, stacked)
    return per_step, stacked


def test_variables_are_stacked_per_level_and_named_after_the_steps():
    model = glow_tf.Glow(SHAPE, num_levels=2, num_steps=3, hidden_width=8, lu_decomposed=True, stack_variables=True)
    level = model.levels[0]
    names = [v.name for v in level.stacked_step_variables]
    assert "level0/steps/coupling/conv1/kernel:0" in names and "level0/steps/invconv/log_s:0" in names
    kernel = level.stacked_step_variables[names.index("level0/steps/coupling/conv1/kernel:0")]
    assert kernel.shape[0] == 3 and kernel.trainable
    view = level.steps[2][2].network.conv1.kernel
    assert isinstance(view, stacking.StepSlice) and view.stacked is kernel and view.row == 2
    assert view.name == "level0/step2/coupling/conv1/kernel:0" and view.shape == kernel.shape[1:]
    np.testing.assert_array_equal(view.numpy(), kernel.numpy()[2])
    assert not any(layer.variables for step in level.steps for layer in step)  # the layers hold views only
    per_step = glow_tf.Glow(SHAPE, num_levels=2, num_steps=3, hidden_width=8, lu_decomposed=True)
    assert len(model.variables) < len(per_step.variables) / 2
    assert sum(v.shape.num_elements() for v in model.variables) == sum(
        v.shape.num_elements() for v in per_step.variables
    )


def test_a_view_assigns_its_own_row_only():
    model = glow_tf.Glow(SHAPE, num_levels=1, num_steps=3, hidden_width=8, stack_variables=True)
    bias = model.levels[0].steps[1][0].module.bias
    before = bias.stacked.numpy()
    bias.assign(np.full(bias.shape, 7.0, np.float32))
    after = bias.stacked.numpy()
    np.testing.assert_array_equal(after[1], 7.0)
    np.testing.assert_array_equal(np.delete(after, 1, 0), np.delete(before, 1, 0))
    np.testing.assert_array_equal((bias * 2.0).numpy(), 14.0)  # operators read the row


def test_steps_that_create_other_variables_cannot_be_stacked():
    with stacking.collect_steps() as collector:
        for k in range(2):
            with tf.name_scope(f"step{k}"), collector.step():
                tf.Variable(tf.zeros([2 + k]), name="w")
        with pytest.raises(ValueError, match="step 1 creates other variables than step 0"):
            collector.stack()


def test_the_data_dependent_init_is_the_same():
    x = tf.random.stateless_uniform([16, *SHAPE], [1, 2]) - 0.5
    models = [glow_tf.Glow(SHAPE, 2, 3, 8, learn_top=True, stack_variables=s, seed=3) for s in (False, True)]
    for model in models:
        model.initialize(x)
        assert model.initialized
    assert_same_values(*(by_step_name(m.variables) for m in models))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_stacked_variables_give_the_per_step_models_numbers_bit_for_bit(variant):
    models = model_pair(variant)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(-0.5, 0.5, [8, *SHAPE]), tf.float32)
    labels = tf.constant(rng.integers(0, 3, 8), tf.int32) if "conditional" in variant else None
    lp = [m.log_prob(x, labels).numpy() for m in models]  # eager: every row read as a slice
    np.testing.assert_array_equal(*lp)
    for backprop in ("standard", "checkpointing", "reversible"):
        grads = []
        for model in models:
            model.backprop, model.batch_shards = backprop, 2

            @tf.function
            def loss_and_grads(model=model):
                with tf.GradientTape() as tape:
                    loss = tf.reduce_mean(model.objective(x, labels)["loss"])
                return loss, tape.gradient(loss, model.trainable_variables)

            loss, g = loss_and_grads()
            grads.append({"loss": loss.numpy(), **by_step_name(model.trainable_variables, g)})
        assert_same_values(*grads, what=backprop)
    latents = [tf.function(m.encode)(x, labels) for m in models]
    for a, b in zip(*latents):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    images = [tf.function(m.decode)(z, labels).numpy() for m, z in zip(models, latents)]
    np.testing.assert_array_equal(*images)
    seed = tf.constant([4, 5], tf.int64)
    samples = [
        tf.function(lambda m=m: m.sample(4, 0.7, labels[:4] if labels is not None else None, seed))() for m in models
    ]
    np.testing.assert_array_equal(samples[0].numpy(), samples[1].numpy())


def test_a_stacked_models_export_is_the_per_step_models(tmp_path):
    models = model_pair("lu-affine-conditional")
    loaded = [tf.saved_model.load(export.export_model(m, str(tmp_path / f"export{i}"))) for i, m in enumerate(models)]
    assert len(loaded[0].model_variables) == len(loaded[1].model_variables)  # the same layout, no duplicates
    for a, b in zip(*(sum(map(list, m.stacked_step_weights), []) for m in loaded)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    images = tf.constant(np.random.default_rng(2).integers(0, 256, [4, *SHAPE]).astype(np.uint8))
    labels, seed = tf.constant([0, 2, 1, 2], tf.int32), tf.constant([1, 2], tf.int64)
    bits = [m.bits_per_dim_seeded(images, seed, labels)["bits_per_dim"].numpy() for m in loaded]
    np.testing.assert_array_equal(*bits)
    samples = [m.sample_seeded(tf.constant(3), tf.constant(0.7), seed, labels[:3])["images"].numpy() for m in loaded]
    np.testing.assert_array_equal(*samples)


def test_a_stacked_trainer_trains_the_per_step_trainers_weights_bit_for_bit(tmp_path):
    trainers, batches = [], []
    for stack in (False, True):
        config = make_test_config(**{"model.stack_variables": stack, "optim.ema_decay": 0.99})
        trainer = train_lib.Trainer(config, str(tmp_path / f"stacked{stack}"))
        trainer.initialize()
        trainers.append(trainer)
        batches.append(list(itertools.islice(iter(trainer.make_dataset(0)), 3)))
    for step in range(3):
        losses = [float(t.train_step(b[step])["loss"]) for t, b in zip(trainers, batches)]
        assert losses[0] == losses[1], step
    assert_same_values(*(by_step_name(t.model.variables) for t in trainers), what="weights")
    averages = [by_step_name(t.model.trainable_variables, [a.numpy() for a in t.ema.averages]) for t in trainers]
    assert_same_values(*averages, what="EMA")
    assert len(trainers[1].variables) < len(trainers[0].variables)  # K=2 here: 30 against 54


def test_a_config_json_from_before_the_field_means_per_step_variables():
    config = make_test_config()
    assert config.model.stack_variables  # the default for new runs
    text = config_lib.config_to_json(config).replace('"stack_variables": true,', "")
    assert "stack_variables" not in text
    assert config_lib.config_from_json(text).model.stack_variables is False


@pytest.mark.slow
def test_a_run_resumes_in_the_layout_of_its_checkpoints(tmp_path, caplog):
    workdir = str(tmp_path / "run")
    config = make_test_config(**{"model.stack_variables": False, "train.num_steps": 2})
    first = train_lib.Trainer(config, workdir)
    first.train()
    saved = by_step_name(first.model.variables)
    config = make_test_config(**{"train.num_steps": 3})  # today's default: stacked
    with caplog.at_level(logging.INFO, logger="absl"):  # absl's logger may have been set to WARNING
        resumed = train_lib.Trainer(config, workdir)
    assert "model.stack_variables: False, the layout of the run's checkpoints, is kept" in caplog.text
    assert not resumed.model.stack_variables and int(resumed.step.numpy()) == 2
    assert_same_values(saved, by_step_name(resumed.model.variables))
    assert resumed.train().step == 3

"""Readable names (variables, ops, the profile's attribution) and checkpoints written before variables had them.

``tests/fixtures/pre_rename_run`` is a 2-step run written by
``tests/fixtures/make_pre_rename_run.py`` at commit 419225e, when every variable was
named ``kernel``, ``bias``, ... with no scope. Object-based checkpoints restore by
object path, not by variable name, so it must restore unchanged.
"""

import os
import re
import shutil
import sys

import numpy as np
import pytest
import tensorflow as tf

from glow_tf import Glow, config_lib, train_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "pre_rename_run")


@pytest.fixture
def old_run(tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(FIXTURE, workdir)
    return workdir


def test_a_checkpoint_from_before_the_rename_restores_with_the_same_bits_per_dim(old_run):
    model, config, info = train_lib.restore_for_inference(old_run, with_info=True)
    assert info["step"] == 2 and info["path"].endswith("ckpt-2")
    expected = np.load(os.path.join(old_run, "expected.npz"))
    bpd = model.bits_per_dim(tf.constant(expected["images"]), tf.constant(expected["labels"])).numpy()
    # Bit for bit on the machine that wrote the fixture; other CPUs may round convolutions differently.
    np.testing.assert_allclose(bpd, expected["bits_per_dim"], rtol=1e-6, atol=0)
    reader = tf.train.load_checkpoint(os.path.join(old_run, "checkpoints", "ckpt-2"))
    ema = [
        reader.get_tensor(f"ema/averages/{i}/.ATTRIBUTES/VARIABLE_VALUE") for i in range(len(model.trainable_variables))
    ]
    for var, value in zip(model.trainable_variables, ema):
        np.testing.assert_array_equal(var.numpy(), value)


def test_a_run_from_before_the_rename_resumes_training(old_run):
    config = config_lib.load_config_json(old_run)
    config.train.num_steps = 3
    trainer = train_lib.Trainer(config, old_run)
    assert trainer.restored_from.endswith("ckpt-2")
    result = trainer.train()
    assert result.step == 3 and np.isfinite(result.last_eval_bits_per_dim)


def _tiny(**kwargs):
    return Glow([8, 8, 3], num_levels=2, num_steps=2, hidden_width=8, learn_top=True, num_classes=3, **kwargs)


@pytest.mark.parametrize("permutation, lu", [("invconv", False), ("invconv", True), ("shuffle", False)])
def test_variables_are_named_by_level_step_and_layer(permutation, lu):
    model = _tiny(permutation=permutation, lu_decomposed=lu, weight_y=0.1)
    names = [v.name for v in model.variables]
    assert len(set(names)) == len(names)
    step = r"level\d/step\d/(actnorm|invconv|shuffle|coupling/(conv1|conv2)(/actnorm)?|coupling/conv_out)/\w+:0"
    others = r"level0/split_prior/\w+:0|top_prior/(learned_top|label_embedding)/\w+:0|classifier/\w+:0"
    assert [n for n in names if not re.fullmatch(f"{step}|{others}", n)] == []
    assert "level1/step1/coupling/conv1/kernel:0" in names and "level1/step0/actnorm/logs:0" in names
    assert ("level0/step1/invconv/lower:0" in names) == lu


def _node_names(concrete) -> list[str]:
    """Every op name of a traced function, the functions it calls included."""
    graph_def = concrete.graph.as_graph_def()
    return [n.name for n in graph_def.node] + [n.name for f in graph_def.library.function for n in f.node_def]


@pytest.mark.parametrize("step_functions", [True, False])
def test_ops_are_named_by_level_step_and_layer(step_functions):
    model = _tiny()
    model.step_functions = step_functions
    x, y = tf.zeros([2, 8, 8, 3]), tf.constant([0, 1])
    twice = tf.function(lambda: model.log_prob(x, y) + model.log_prob(x, y))  # scopes are reused, not numbered
    names = _node_names(twice.get_concrete_function())
    step = "step" if step_functions else "step1"
    assert f"level1/{step}/coupling/conv1/Conv2D" in names
    assert any(n.startswith("level0/split_prior/") for n in names)
    assert any(n.startswith("top_prior/learned_top/") for n in names)
    assert not [n for n in names if re.match(r"level\d_\d|.*/step\d?_\d/|.*/coupling_\d/", n)]
    if step_functions:
        assert any(n.startswith("level1/step1/") for n in names)  # the calls of step 1's function


def test_the_profile_attributes_ops_to_levels_and_layers_by_name():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import bench_profile
    finally:
        sys.path.remove(os.path.join(REPO, "benchmarks"))
    model = _tiny()
    x, y = tf.zeros([2, 8, 8, 3]), tf.constant([0, 1])

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model.objective(x, y)["loss"])
        return tape.gradient(loss, model.trainable_variables)

    concrete = train_step.get_concrete_function()
    layers = bench_profile.layer_names(concrete.variables)
    assert {"actnorm", "invconv", "coupling", "coupling/conv1", "split_prior", "top_prior/learned_top"} <= layers
    convs = [n for n in _node_names(concrete) if n.split("/")[-1].startswith("Conv2D")]
    attributed = {bench_profile.attribute(n, "Conv2D", layers) for n in convs}
    assert ("forward", "level0", "coupling/conv1") in attributed
    assert ("backward", "level1", "coupling/conv_out") in attributed
    assert ("forward", "level0", "split_prior") in attributed
    assert ("forward", "-", "top_prior/learned_top") in attributed
    assert not [a for a in attributed if a[2] == "(other)"]
    assert bench_profile.attribute("Adamax/update_3/ResourceApplyAdaMax", "ResourceApplyAdaMax", layers)[0] == (
        "optimizer"
    )

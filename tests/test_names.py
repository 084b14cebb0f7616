"""Readable names (variables, ops) and checkpoints written before variables had them.

``tests/fixtures/pre_rename_run`` is a 2-step run written by
``tests/fixtures/make_pre_rename_run.py`` at commit 419225e, when every variable was
named ``kernel``, ``bias``, ... with no scope. Object-based checkpoints restore by
object path, not by variable name, so it must restore unchanged.
"""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from glow_tf import config_lib, train_lib

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "pre_rename_run")


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

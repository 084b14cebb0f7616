"""Helpers shared by the tests; ``conftest.py`` serves ``make_test_config`` and ``tiny_model`` as fixtures."""

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

import glow_tf
from glow_tf import quantization, stacking


def perturb(module: tf.Module, scale: float = 0.1, seed: int = 0) -> None:
    """Moves every trainable variable away from its init by N(0, scale) noise."""
    rng = np.random.default_rng(seed)
    for v in module.trainable_variables:
        v.assign_add(rng.normal(0.0, scale, v.shape).astype(v.dtype.as_numpy_dtype))


def by_step_name(variables, values=None) -> dict:
    """``{per-step variable name: value}``; a stacked variable's rows under its steps' names (``/step{k}/``)."""
    values = [v.numpy() for v in variables] if values is None else [np.asarray(x) for x in values]
    out = {}
    for v, value in zip(variables, values):
        if "/steps/" in v.name:
            out.update({stacking.step_name(v.name, k): row for k, row in enumerate(value)})
        else:
            out[v.name] = value
    return out


def assert_same_values(a: dict, b: dict, what: str = "") -> None:
    """The same names in both, each with bit-identical values."""
    assert sorted(a) == sorted(b), what
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=f"{what} {name}")


def autodiff_log_abs_det(fn, x: tf.Tensor) -> np.ndarray:
    """``log|det d fn(x) / dx|`` per example from the autodiff Jacobian (float64).

    ``fn`` maps ``[B, ...]`` to ``[B, ...]`` with equal per-example sizes.
    """
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
        y = tf.reshape(y, [tf.shape(y)[0], -1])
    jac = tape.batch_jacobian(y, x)
    jac = tf.reshape(jac, [jac.shape[0], jac.shape[1], -1])
    sign, logdet = np.linalg.slogdet(jac.numpy())
    assert np.all(sign != 0), "Jacobian is singular"
    return logdet


def make_test_config(**overrides):
    """``configs/test.py`` (8x8 digits, 20 steps) with ``{"section.key": value}`` overrides."""
    config = importlib.import_module("configs.test").get_config()
    for field, value in overrides.items():
        section, key = field.split(".")
        config[section][key] = value
    return config


def tiny_model(image_shape, n_bits, num_classes=0, seed=0, num_steps=2, **glow_kwargs):
    """An initialised, perturbed 2-level Glow (so no layer is the identity); ``glow_kwargs`` go to ``Glow``."""
    model = glow_tf.Glow(
        image_shape,
        num_levels=2,
        num_steps=num_steps,
        hidden_width=8,
        learn_top=True,
        num_classes=num_classes,
        n_bits=n_bits,
        **glow_kwargs,
    )
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, [16, *image_shape]).astype(np.uint8)
    labels = tf.constant(rng.integers(0, num_classes, 16), tf.int32) if num_classes else None
    noise_seed = tf.constant([seed, 0], tf.int64)  # the same model in every process: no test passes only by luck
    model.initialize(quantization.dequantize(quantization.preprocess(images, n_bits), n_bits, noise_seed), labels)
    perturb(model, 0.05, seed)
    return model


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_json_script(script: str, *args: str, timeout: float = 240):
    """Runs ``python -c script args`` in the repository (no ``TF_CONFIG``); returns the JSON its last line prints."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])

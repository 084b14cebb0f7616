"""Helpers shared by the tests."""

import numpy as np
import tensorflow as tf


def perturb(module: tf.Module, scale: float = 0.1, seed: int = 0) -> None:
    """Moves every trainable variable away from its init by N(0, scale) noise."""
    rng = np.random.default_rng(seed)
    for v in module.trainable_variables:
        v.assign_add(rng.normal(0.0, scale, v.shape).astype(v.dtype.as_numpy_dtype))


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

"""Bits/dim and the quantisation maths against hand computation."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from glow_tf import metrics, quantization

tfd = tfp.distributions


@pytest.mark.parametrize("n_bits", range(1, 9))
def test_uniform_density_on_the_data_cube_gives_n_bits(n_bits):
    cube = tfd.Independent(tfd.Uniform(-0.5 * tf.ones([4, 4, 3]), 0.5), reinterpreted_batch_ndims=3)
    x = quantization.dequantize(
        quantization.preprocess(tf.random.uniform([5, 4, 4, 3], 0, 256, tf.int32), n_bits), n_bits
    )
    bpd = metrics.bits_per_dim(cube.log_prob(x), [4, 4, 3], n_bits)
    np.testing.assert_allclose(bpd.numpy(), np.full(5, n_bits), rtol=1e-6)


def test_hand_computed_bits_per_dim():
    # D = 2 dims, log p = -1.5 nats, 8 bits: (1.5 + 2 * 8 ln 2) / (2 ln 2) = 8 + 0.75 / ln 2.
    assert metrics.bits_per_dim(tf.constant([-1.5], tf.float64), [1, 1, 2], 8).numpy()[0] == pytest.approx(
        9.0820212806, 1e-9
    )
    # 5 bits, D = 3, log p = +0.3: (-0.3 + 3 * 5 ln 2) / (3 ln 2) = 5 - 0.1 / ln 2.
    assert metrics.bits_per_dim(tf.constant([0.3], tf.float64), [1, 3, 1], 5).numpy()[0] == pytest.approx(
        4.8557304959, 1e-9
    )
    assert metrics.discrete_log_likelihood(0.0, [2, 2, 1], 1) == pytest.approx(-4 * math.log(2.0))


def test_preprocess_and_postprocess_are_the_originals():
    pixels = tf.constant(np.arange(256, dtype=np.uint8))
    np.testing.assert_allclose(quantization.preprocess(pixels, 8).numpy(), np.arange(256) / 256 - 0.5)
    np.testing.assert_allclose(quantization.preprocess(pixels, 5).numpy(), np.floor(np.arange(256) / 8) / 32 - 0.5)
    np.testing.assert_array_equal(
        quantization.postprocess(quantization.preprocess(pixels, 8), 8).numpy(), np.arange(256)
    )
    reduced = quantization.postprocess(quantization.preprocess(pixels, 5), 5).numpy()
    np.testing.assert_array_equal(reduced, np.arange(256) & ~7)
    assert quantization.postprocess(tf.constant([-3.0, 3.0]), 8).numpy().tolist() == [0, 255]


@pytest.mark.parametrize("bad", [0, 9, 2.5, True, "8"])
def test_bad_n_bits_is_named(bad):
    with pytest.raises(ValueError, match=f"n_bits must be an integer in 1..8, got {bad!r}"):
        quantization.preprocess(tf.zeros([1], tf.uint8), bad)

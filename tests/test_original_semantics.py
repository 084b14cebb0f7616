"""Each layer computes what the original openai/glow code computes (reference/openai-glow.md)."""

import numpy as np
import tensorflow as tf
from helpers import perturb

from glow_tf import bijectors as gb
from glow_tf import nn
from glow_tf.bijectors.invertible_conv import random_rotation

RNG = np.random.default_rng(0)


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _reference_edge_bias_conv(x, kernel):
    """The original: zero-pad, append a channel that is 1 on the padded border, VALID conv."""
    a, b = (kernel.shape[0] - 1) // 2, (kernel.shape[1] - 1) // 2
    padded = np.pad(x, [[0, 0], [a, a], [b, b], [0, 0]])
    border = np.ones(padded.shape[:3] + (1,))
    border[:, a : padded.shape[1] - a, b : padded.shape[2] - b] = 0.0
    return tf.nn.conv2d(np.concatenate([padded, border], -1), kernel, 1, "VALID").numpy()


def test_edge_bias_conv_matches_the_original_padding():
    x = RNG.normal(size=[2, 5, 4, 3])
    for kernel_shape in ([3, 3, 4, 6], [5, 3, 4, 2], [3, 3, 4, 3]):
        kernel = RNG.normal(size=kernel_shape)
        expected = _reference_edge_bias_conv(x, kernel)
        np.testing.assert_allclose(
            nn.edge_bias_conv2d(tf.constant(x), tf.constant(kernel)).numpy(), expected, atol=1e-12
        )
        bias, gain = RNG.normal(size=kernel_shape[-1]), np.exp(RNG.normal(size=kernel_shape[-1]))
        folded = nn.edge_bias_conv2d(tf.constant(x), tf.constant(kernel), tf.constant(bias), tf.constant(gain))
        np.testing.assert_allclose(folded.numpy(), (expected + bias) * gain, atol=1e-12)
    kernel = RNG.normal(size=[1, 1, 3, 5])
    np.testing.assert_allclose(nn.edge_bias_conv2d(tf.constant(x), tf.constant(kernel)).numpy(), x @ kernel[0, 0])


def test_border_channel_centre_tap_gets_exactly_zero_gradient():
    """As in the original, the border channel's centre tap only ever sees interior zeros: a dead weight that
    Adamax must leave alone (a gradient of rounding noise would be scaled up to a full step)."""
    x = tf.constant(RNG.normal(size=[4, 6, 6, 3]), tf.float32)
    for kernel_shape in ([3, 3, 4, 16], [3, 3, 4, 2]):
        kernel = tf.Variable(RNG.normal(size=kernel_shape), dtype=tf.float32)
        bias, gain = tf.constant(RNG.normal(size=kernel_shape[-1]), tf.float32), tf.ones([kernel_shape[-1]])
        with tf.GradientTape() as tape:
            y = nn.edge_bias_conv2d(x, kernel, bias, gain)
            loss = tf.reduce_sum(tf.sin(3.0 * y))
        grad = tape.gradient(loss, kernel).numpy()
        assert np.all(grad[1, 1, -1] == 0.0), grad[1, 1, -1]
        assert np.all(grad[0, 0, -1] != 0.0)  # a corner tap does meet the border


def test_conv_with_actnorm_folds_exactly():
    conv = nn.Conv2D(3, 4, 3, seed=0, dtype=tf.float64)
    x = tf.constant(RNG.normal(size=[2, 4, 4, 3]))
    with nn.data_dependent_init():
        unfolded = conv(x).numpy()  # conv, then actnorm initialised on and applied to this batch
    np.testing.assert_allclose(conv(x).numpy(), unfolded, atol=1e-12)


def test_actnorm_data_dependent_init_formula():
    x = RNG.normal(3.0, 2.0, size=[16, 4, 4, 5])
    module = nn.ActNormModule(5, dtype=tf.float64)
    module.initialize(tf.constant(x))
    mean = x.reshape(-1, 5).mean(0)
    std = np.sqrt(((x - mean) ** 2).reshape(-1, 5).mean(0))
    np.testing.assert_allclose(module.bias.numpy(), -mean)
    np.testing.assert_allclose(module.logs.numpy(), np.log(1.0 / (std + 1e-6)) / 3.0)
    np.testing.assert_allclose(module(tf.constant(x)).numpy(), (x - mean) * np.exp(3 * module.logs.numpy()))
    assert bool(module.initialized.numpy())


def test_zero_conv_and_linear_start_at_zero_with_exp3_gain():
    conv = nn.Conv2DZeros(3, 4, dtype=tf.float64)
    x = tf.constant(RNG.normal(size=[2, 4, 4, 3]))
    assert np.all(conv(x).numpy() == 0.0)
    conv.bias.assign(np.ones(4))
    conv.logs.assign(np.full(4, 0.1))
    np.testing.assert_allclose(conv(x).numpy(), np.full([2, 4, 4, 4], np.exp(0.3)))
    linear = nn.LinearZeros(3, 2, dtype=tf.float64)
    assert np.all(linear(tf.ones([5, 3], tf.float64)).numpy() == 0.0)


def test_squeeze_channel_order_is_the_originals():
    x = RNG.normal(size=[2, 4, 6, 3])
    z = gb.squeeze2d(tf.constant(x)).numpy()
    assert z.shape == (2, 2, 3, 12)
    for i, j, c, dy, dx in [(0, 0, 0, 0, 1), (1, 2, 2, 1, 0), (1, 1, 1, 1, 1)]:
        assert z[:, i, j, c * 4 + 2 * dy + dx].tolist() == x[:, 2 * i + dy, 2 * j + dx, c].tolist()
    np.testing.assert_array_equal(gb.unsqueeze2d(tf.constant(z)).numpy(), x)


def test_affine_coupling_shifts_then_scales():
    layer = gb.AffineCoupling(6, hidden_width=8, seed=0, dtype=tf.float64)
    perturb(layer, 0.3)
    x = RNG.normal(size=[2, 4, 4, 6])
    h = layer.network(tf.constant(x[..., :3])).numpy()  # [shift | scale] halves (interleaved in the original)
    shift, scale = h[..., :3], _sigmoid(h[..., 3:] + 2.0)
    z, log_det = layer.inverse_and_log_det(tf.constant(x))
    np.testing.assert_allclose(z.numpy(), np.concatenate([x[..., :3], (x[..., 3:] + shift) * scale], -1))
    np.testing.assert_allclose(log_det.numpy(), np.log(scale).sum(axis=(1, 2, 3)))


def test_affine_coupling_at_init_scales_by_sigmoid_two():
    layer = gb.AffineCoupling(4, hidden_width=8, seed=0, dtype=tf.float64)
    x = RNG.normal(size=[1, 2, 2, 4])
    z = layer.inverse(tf.constant(x)).numpy()
    np.testing.assert_allclose(z[..., 2:], x[..., 2:] * _sigmoid(2.0))


def test_split_prior_and_top_prior_read_mean_and_logs():
    split = gb.SplitPrior(4, dtype=tf.float64)
    perturb(split, 0.3)
    x = RNG.normal(size=[2, 4, 4, 4])
    h = split.network(tf.constant(x[..., :2])).numpy()
    eps = split.inverse(tf.constant(x)).numpy()[..., 2:]
    np.testing.assert_allclose(eps, (x[..., 2:] - h[..., :2]) / np.exp(h[..., 2:]))
    top = gb.TopPrior([2, 2, 3], learn_top=True, num_classes=2, dtype=tf.float64)
    perturb(top, 0.3)
    labels = tf.constant([1, 0])
    h = top.network(tf.zeros([1, 2, 2, 6], tf.float64)).numpy() + top.embedding(tf.one_hot(labels, 2, dtype=tf.float64)
                                                                               ).numpy()[:, None, None, :]  # fmt: skip
    z = RNG.normal(size=[2, 2, 2, 3])
    np.testing.assert_allclose(
        top.inverse(tf.constant(z), labels=labels).numpy(), (z - h[..., :3]) / np.exp(h[..., 3:])
    )


def test_invertible_conv_multiplies_channels_by_w():
    layer = gb.InvertibleConv1x1(5, seed=3, dtype=tf.float64)
    w = layer.w.numpy()
    np.testing.assert_allclose(w @ w.T, np.eye(5), atol=1e-12)  # a rotation at init
    x = RNG.normal(size=[2, 3, 3, 5])
    np.testing.assert_allclose(layer.inverse(tf.constant(x)).numpy(), x @ w)
    np.testing.assert_allclose(layer.log_abs_det_weight().numpy(), np.log(abs(np.linalg.det(w))), atol=1e-12)


def test_lu_conv_starts_at_the_lu_factors_of_a_rotation():
    layer = gb.LUInvertibleConv1x1(6, seed=4, dtype=tf.float64)
    np.testing.assert_allclose(layer.weight().numpy(), random_rotation(6, 4), atol=1e-12)
    np.testing.assert_allclose(layer.log_abs_det_weight().numpy(), 0.0, atol=1e-12)
    perturb(layer, 0.2)
    w = layer.weight().numpy()
    np.testing.assert_allclose(layer.inverse_weight().numpy(), np.linalg.inv(w), atol=1e-10)
    np.testing.assert_allclose(layer.log_abs_det_weight().numpy(), np.log(abs(np.linalg.det(w))), atol=1e-10)


def test_shuffle_gathers_by_the_stored_permutation():
    layer = gb.ChannelPermutation(6, "shuffle", seed=1)
    perm = layer.permutation.numpy()
    assert sorted(perm.tolist()) == list(range(6)) and perm.tolist() != list(range(6))
    x = RNG.normal(size=[1, 2, 2, 6]).astype(np.float32)
    np.testing.assert_array_equal(layer.inverse(tf.constant(x)).numpy(), x[..., perm])
    reverse = gb.ChannelPermutation(6, "reverse")
    np.testing.assert_array_equal(reverse.inverse(tf.constant(x)).numpy(), x[..., ::-1])

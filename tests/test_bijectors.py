"""The same battery for every Glow bijector, in float64 on tiny events.

Round trip both ways (``tf.identity`` between to defeat TFP's cache), fldj == -ildj,
log-det equal to the autodiff Jacobian's slogdet, the fused pass equal to TFP's
methods, not the identity once perturbed, a gradient for every variable, and use
inside ``tfb.Chain`` / ``tfd.TransformedDistribution``; eager and ``tf.function``.
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from helpers import autodiff_log_abs_det, perturb

from glow_tf import bijectors as gb

tfb, tfd = tfp.bijectors, tfp.distributions
F64 = tf.float64
LABELS = tf.constant([0, 2])


def _factor_out():
    inner = tfb.Chain([gb.ActNorm(2, dtype=F64, name="inner_actnorm"), tfb.Reshape([2, 2, 2], [8])], name="inner")
    return gb.FactorOut(inner, [2, 2, 4], kept_channels=2, name="factor_out"), {}


# name -> (factory returning (bijector, bijector kwargs), image-side event shape)
CASES = {
    "actnorm": (lambda: (gb.ActNorm(4, dtype=F64), {}), [2, 2, 4]),
    "invconv": (lambda: (gb.InvertibleConv1x1(4, seed=1, dtype=F64), {}), [2, 2, 4]),
    "invconv_lu": (lambda: (gb.LUInvertibleConv1x1(4, seed=1, dtype=F64), {}), [2, 2, 4]),
    "reverse": (lambda: (gb.ChannelPermutation(4, "reverse", dtype=F64), {}), [2, 2, 4]),
    "shuffle": (lambda: (gb.ChannelPermutation(4, "shuffle", seed=3, dtype=F64), {}), [2, 2, 4]),
    "affine": (lambda: (gb.AffineCoupling(4, hidden_width=8, seed=1, dtype=F64), {}), [2, 2, 4]),
    "affine_odd": (lambda: (gb.AffineCoupling(3, hidden_width=8, seed=1, dtype=F64), {}), [2, 2, 3]),
    "additive": (lambda: (gb.AdditiveCoupling(4, hidden_width=8, seed=1, dtype=F64), {}), [2, 2, 4]),
    "squeeze": (lambda: (gb.Squeeze(), {}), [4, 4, 1]),
    "split_prior": (lambda: (gb.SplitPrior(4, dtype=F64), {}), [2, 2, 4]),
    "top_prior": (lambda: (gb.TopPrior([2, 2, 3], learn_top=True, dtype=F64), {}), [2, 2, 3]),
    "top_prior_classes": (
        lambda: (gb.TopPrior([2, 2, 3], learn_top=True, num_classes=3, dtype=F64), {"labels": LABELS}),
        [2, 2, 3],
    ),
    "factor_out": (_factor_out, [2, 2, 4]),
}
VOLUME_PRESERVING = {"reverse", "shuffle", "squeeze", "additive"}
WITHOUT_VARIABLES = {"reverse", "shuffle", "squeeze"}


def _make(name, seed=0):
    factory, shape = CASES[name]
    bijector, kwargs = factory()
    perturb(bijector, 0.2, seed)
    x = tf.constant(np.random.default_rng(seed).normal(size=[2, *shape]), F64)
    return bijector, kwargs, x


def _latent_ndims(bijector):
    return 1 if isinstance(bijector, gb.FactorOut) else 3


def _maybe_function(fn, use_function):
    return tf.function(fn) if use_function else fn


@pytest.mark.parametrize("use_function", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_both_ways(name, use_function):
    bijector, kwargs, x = _make(name)
    fwd = lambda t: bijector.forward(tf.identity(t), **kwargs)  # noqa: E731
    inv = lambda t: bijector.inverse(tf.identity(t), **kwargs)  # noqa: E731
    fwd, inv = _maybe_function(fwd, use_function), _maybe_function(inv, use_function)
    z = inv(x)
    np.testing.assert_allclose(fwd(z).numpy(), x.numpy(), atol=1e-10)
    z2 = tf.constant(np.random.default_rng(1).normal(size=z.shape), F64)
    np.testing.assert_allclose(inv(fwd(z2)).numpy(), z2.numpy(), atol=1e-10)


@pytest.mark.parametrize("use_function", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_log_det_matches_autodiff_jacobian(name, use_function):
    bijector, kwargs, x = _make(name)
    ildj_fn = _maybe_function(lambda t: bijector.inverse_log_det_jacobian(t, event_ndims=3, **kwargs), use_function)
    ildj = ildj_fn(tf.identity(x)).numpy()
    expected = autodiff_log_abs_det(lambda t: bijector.inverse(t, **kwargs), x)  # the eager Jacobian: the reference
    np.testing.assert_allclose(np.broadcast_to(ildj, expected.shape), expected, rtol=1e-8, atol=1e-8)
    if name in VOLUME_PRESERVING:
        np.testing.assert_allclose(ildj, 0.0, atol=1e-12)


@pytest.mark.parametrize("use_function", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_fldj_is_minus_ildj(name, use_function):
    bijector, kwargs, x = _make(name)
    inverse = _maybe_function(lambda t: bijector.inverse(t, **kwargs), use_function)
    ildj_fn = _maybe_function(lambda t: bijector.inverse_log_det_jacobian(t, event_ndims=3, **kwargs), use_function)
    fldj_fn = _maybe_function(
        lambda t: bijector.forward_log_det_jacobian(t, event_ndims=_latent_ndims(bijector), **kwargs), use_function
    )
    z = tf.identity(inverse(x))
    ildj = ildj_fn(tf.identity(x))
    fldj = fldj_fn(z)
    np.testing.assert_allclose(np.broadcast_to(fldj, [2]), -np.broadcast_to(ildj, [2]), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("use_function", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("name", sorted(set(CASES) - {"factor_out"}))
def test_fused_pass_equals_tfp_methods(name, use_function):
    bijector, kwargs, x = _make(name)
    z, log_det = _maybe_function(lambda t: bijector.inverse_and_log_det(t, **kwargs), use_function)(x)
    np.testing.assert_allclose(z.numpy(), bijector.inverse(tf.identity(x), **kwargs).numpy(), atol=1e-12)
    ildj = bijector.inverse_log_det_jacobian(tf.identity(x), event_ndims=3, **kwargs)
    np.testing.assert_allclose(np.broadcast_to(log_det, [2]), np.broadcast_to(ildj, [2]), atol=1e-10)


@pytest.mark.parametrize("name", sorted(CASES))
def test_not_identity_once_perturbed(name):
    bijector, kwargs, x = _make(name)
    z = bijector.inverse(x, **kwargs)
    if z.shape == x.shape:
        assert np.max(np.abs(z.numpy() - x.numpy())) > 1e-3
    else:  # shape-changing layers: the values must be rearranged, not the flat copy.
        assert np.max(np.abs(np.reshape(z.numpy(), [2, -1]) - np.reshape(x.numpy(), [2, -1]))) > 1e-3


@pytest.mark.parametrize("name", sorted(set(CASES) - WITHOUT_VARIABLES))
def test_every_variable_gets_a_gradient_through_log_prob(name):
    bijector, kwargs, x = _make(name)
    latent_shape = bijector.inverse_event_shape(x.shape[1:])
    base = tfd.Sample(tfd.Normal(tf.constant(0.0, F64), 1.0), latent_shape)
    dist = tfd.TransformedDistribution(base, bijector)
    with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(dist.log_prob(x, bijector_kwargs=kwargs))
    variables = bijector.trainable_variables
    assert variables
    grads = tape.gradient(loss, variables)
    for v, g in zip(variables, grads):
        assert g is not None, v.name
        assert np.all(np.isfinite(g.numpy())), v.name
        if "lower" not in v.name and "upper" not in v.name:  # masked halves get zeros by design
            assert np.any(g.numpy() != 0), v.name


@pytest.mark.parametrize("name", ["actnorm", "invconv_lu", "affine", "squeeze", "split_prior"])
def test_works_inside_chain_and_transformed_distribution(name):
    bijector, kwargs, x = _make(name)
    chain = tfb.Chain([bijector, tfb.Shift(tf.constant(0.5, F64))])
    base = tfd.Sample(tfd.Normal(tf.constant(0.0, F64), 1.0), chain.inverse_event_shape(x.shape[1:]))
    dist = tfd.TransformedDistribution(base, chain)
    samples = dist.sample(3, seed=1)
    assert samples.shape == [3, *x.shape[1:]]
    z = bijector.inverse(x) - 0.5
    expected = base.log_prob(z) + bijector.inverse_log_det_jacobian(x, event_ndims=3)
    np.testing.assert_allclose(dist.log_prob(x).numpy(), expected.numpy(), rtol=1e-10)


def test_event_shapes_of_shape_changers():
    squeeze = gb.Squeeze()
    assert squeeze.inverse_event_shape([8, 6, 3]) == [4, 3, 12]
    assert squeeze.forward_event_shape([4, 3, 12]) == [8, 6, 3]
    assert list(squeeze.inverse_event_shape_tensor([8, 6, 3]).numpy()) == [4, 3, 12]
    assert list(squeeze.forward_event_shape_tensor([4, 3, 12]).numpy()) == [8, 6, 3]
    factor_out, _ = _factor_out()
    assert factor_out.inverse_event_shape([2, 2, 4]) == [16]
    assert factor_out.forward_event_shape([16]) == [2, 2, 4]


def test_fused_pass_of_factor_out_layout():
    factor_out, _ = _factor_out()
    x = tf.constant(np.random.default_rng(0).normal(size=[2, 2, 2, 4]), F64)
    flat = factor_out.inverse(x)
    np.testing.assert_allclose(flat[:, :8].numpy(), tf.reshape(x[..., 2:], [2, 8]).numpy())

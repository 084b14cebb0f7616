"""Shared base of the Glow bijectors."""

from __future__ import annotations

import tensorflow as tf
import tensorflow_probability as tfp

from glow_tf import _validate

tfb = tfp.bijectors

__all__ = ["GlowBijector", "apply_to_images", "sum_over_image", "num_positions", "validate_channels"]


def sum_over_image(t: tf.Tensor) -> tf.Tensor:
    """Sums ``[..., H, W, C]`` over its last three axes."""
    return tf.reduce_sum(t, axis=[-3, -2, -1])


def apply_to_images(network, x: tf.Tensor) -> tf.Tensor:
    """Applies a network on ``[B, H, W, C]`` images to ``x`` of any batch rank ``[..., H, W, C]``."""
    if x.shape.rank == 4:
        return network(x)
    h = network(tf.reshape(x, tf.concat([[-1], tf.shape(x)[-3:]], 0)))
    return tf.reshape(h, tf.concat([tf.shape(x)[:-3], tf.shape(h)[-3:]], 0))


def num_positions(x: tf.Tensor) -> tf.Tensor:
    """``H * W`` of an image tensor ``[..., H, W, C]``, as ``x.dtype``."""
    shape = x.shape[-3:-1]
    if shape.is_fully_defined():
        return tf.constant(float(shape[0] * shape[1]), x.dtype)
    return tf.cast(tf.reduce_prod(tf.shape(x)[-3:-1]), x.dtype)


def validate_channels(channels: int, name: str, minimum: int = 1, even: bool = False) -> int:
    """Returns ``channels`` or raises ``ValueError`` naming the layer and the bad value."""
    channels = _validate.integer(channels, f"{name}: channels", minimum=minimum)
    if even and channels % 2:
        raise ValueError(f"{name}: channels must be even to split into two halves, got {channels}.")
    return channels


class GlowBijector(tfb.Bijector):
    """Base of every Glow layer: a bijector with a fused encode-direction pass.

    ``inverse_and_log_det(x, **kwargs)`` returns ``(inverse(x), ildj)`` for an image
    event ``[..., H, W, C]``, with the log-det already summed over ``H, W, C``; it
    evaluates any network once. The model's training loss walks the layers with it;
    TFP's generic methods stay available (and exact) for interoperability.

    Every instance holds its own variables, so instances never share TFP's cache.
    """

    def inverse_and_log_det(self, x: tf.Tensor, **kwargs) -> tuple[tf.Tensor, tf.Tensor]:
        """Fused ``(inverse(x), inverse_log_det_jacobian(x, event_ndims=3))``."""
        raise NotImplementedError

    def _get_parameterization(self):
        return id(self)

"""The 2x2 squeeze of the original (space-to-depth in its own channel order): the one home for it."""

from __future__ import annotations

import tensorflow as tf

from glow_tf import _validate
from glow_tf.bijectors.base import GlowBijector

__all__ = ["Squeeze", "squeeze2d", "unsqueeze2d", "squeezed_shape"]


def squeezed_shape(image_shape, factor: int = 2) -> list[int]:
    """``[H, W, C] -> [H / f, W / f, C * f * f]``; raises ``ValueError`` if H or W is not divisible."""
    h, w, c = (int(d) for d in image_shape)
    if h % factor or w % factor:
        raise ValueError(
            f"Cannot squeeze an image of shape {[h, w, c]} by {factor}: height and width must be divisible by {factor}."
        )
    return [h // factor, w // factor, c * factor * factor]


def squeeze2d(x: tf.Tensor, factor: int = 2) -> tf.Tensor:
    """``[..., H, W, C] -> [..., H/f, W/f, C*f*f]`` with output channel ``c*f*f + f*dy + dx``.

    The original's ``reshape [B, H/f, f, W/f, f, C] -> transpose [0, 1, 3, 5, 2, 4]``.
    """
    h, w, c = squeezed_shape(x.shape[-3:], factor)
    c //= factor * factor
    batch = tf.shape(x)[:-3]
    t = tf.reshape(x, [-1, h, factor, w, factor, c])
    t = tf.transpose(t, [0, 1, 3, 5, 2, 4])
    return tf.reshape(t, tf.concat([batch, [h, w, c * factor * factor]], 0))


def unsqueeze2d(x: tf.Tensor, factor: int = 2) -> tf.Tensor:
    """The exact inverse of :func:`squeeze2d`."""
    h, w, c = (int(d) for d in x.shape[-3:])
    if c % (factor * factor):
        raise ValueError(
            f"Cannot unsqueeze channels {c} by {factor}: they must be divisible by {factor * factor} "
            f"(shape {x.shape.as_list()})."
        )
    channels = c // (factor * factor)
    batch = tf.shape(x)[:-3]
    t = tf.reshape(x, [-1, h, w, channels, factor, factor])
    t = tf.transpose(t, [0, 1, 4, 2, 5, 3])
    return tf.reshape(t, tf.concat([batch, [h * factor, w * factor, channels]], 0))


class Squeeze(GlowBijector):
    """Volume-preserving reshuffle between space and channels.

    ::

        inverse (image -> latent):  [H, W, C] -> [H/2, W/2, 4C]   (squeeze2d)
        forward (latent -> image):  [H/2, W/2, 4C] -> [H, W, C]   (unsqueeze2d)
        ildj = 0
    """

    def __init__(self, factor: int = 2, validate_args: bool = False, name: str | None = None):
        parameters = dict(locals())
        self.factor = _validate.positive_int(factor, "Squeeze factor")
        super().__init__(
            forward_min_event_ndims=3,
            is_constant_jacobian=True,
            validate_args=validate_args,
            parameters=parameters,
            name=name or "squeeze",
        )

    def encode_with(self, prepared, x, **kwargs):
        return squeeze2d(x, self.factor), tf.zeros([], x.dtype)

    def decode_with(self, prepared, z, **kwargs):
        return unsqueeze2d(z, self.factor)

    def _forward(self, z):
        return unsqueeze2d(z, self.factor)

    def _inverse(self, x):
        return squeeze2d(x, self.factor)

    def _forward_log_det_jacobian(self, z):
        return tf.zeros([], z.dtype)

    def _inverse_log_det_jacobian(self, x):
        return tf.zeros([], x.dtype)

    def _forward_event_shape(self, input_shape):
        h, w, c = input_shape[-3:]
        f = self.factor
        if c is not None and c % (f * f):
            raise ValueError(
                f"Squeeze: the latent's channels must be divisible by {f * f} to unsqueeze, "
                f"got event shape {input_shape}."
            )
        out = [None if h is None else h * f, None if w is None else w * f, None if c is None else c // (f * f)]
        return input_shape[:-3].concatenate(out)

    def _inverse_event_shape(self, output_shape):
        h, w, c = output_shape[-3:]
        f = self.factor
        for d in (h, w):
            if d is not None and d % f:
                raise ValueError(f"Squeeze: height and width must be divisible by {f}, got event shape {output_shape}.")
        out = [None if h is None else h // f, None if w is None else w // f, None if c is None else c * f * f]
        return output_shape[:-3].concatenate(out)

    def _forward_event_shape_tensor(self, input_shape):
        f = self.factor
        return tf.concat([input_shape[:-3], input_shape[-3:-1] * f, input_shape[-1:] // (f * f)], 0)

    def _inverse_event_shape_tensor(self, output_shape):
        f = self.factor
        return tf.concat([output_shape[:-3], output_shape[-3:-1] // f, output_shape[-1:] * f * f], 0)

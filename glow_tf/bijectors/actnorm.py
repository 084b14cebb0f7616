"""Activation normalisation as a bijector."""

from __future__ import annotations

import tensorflow as tf

from glow_tf import nn
from glow_tf.bijectors.base import GlowBijector, num_positions, validate_channels

__all__ = ["ActNorm"]


class ActNorm(GlowBijector):
    """Per-channel affine layer with the original's log-scale factor 3.

    With per-channel ``b`` and ``logs`` (``s = 3 * logs``)::

        inverse (image -> latent):  z = (x + b) * exp(s)
        forward (latent -> image):  x = z * exp(-s) - b
        ildj = sum_c s_c  per position   (H * W * sum_c s_c for an image)

    ``forward_min_event_ndims`` is 1: it acts on each position's channel vector,
    and TFP sums the log-det over any further event axes. Data-dependent init
    happens only through :meth:`initialize` (or ``Glow.initialize``) and is
    recorded in ``initialized``.
    """

    def __init__(
        self, channels: int, dtype: tf.DType = tf.float32, validate_args: bool = False, name: str | None = None
    ):
        parameters = dict(locals())
        name = name or "actnorm"
        channels = validate_channels(channels, name)
        super().__init__(
            forward_min_event_ndims=1,
            dtype=dtype,
            validate_args=validate_args,
            parameters=parameters,
            name=name,
        )
        self.module = nn.ActNormModule(channels, dtype=dtype, name=self.name)  # in this layer's scope: <name>/bias

    @property
    def initialized(self) -> tf.Variable:
        """Boolean variable: True once data-dependent init has run."""
        return self.module.initialized

    def initialize(self, x: tf.Tensor) -> None:
        """Data-dependent init on a batch of images (encode direction)."""
        self.module.initialize(tf.convert_to_tensor(x, self.dtype))

    def weights(self):
        return self.module.weights()

    def encode_with(self, prepared, x, **kwargs):
        bias, logs = prepared
        return nn.actnorm(x, bias, logs), num_positions(x) * tf.reduce_sum(logs * nn.LOGSCALE_FACTOR)

    def decode_with(self, prepared, z, **kwargs):
        return nn.actnorm_inverse(z, *prepared)

    def initialize_and_encode(self, x, **kwargs):
        z = self.module(x)  # inside nn.data_dependent_init(): initialised on x, then applied
        return z, num_positions(x) * tf.reduce_sum(self.module.log_scale())

    def _forward(self, z):
        return self.decode(z)

    def _inverse(self, x):  # any event rank >= 1: no log-det (which counts image positions) here
        return nn.actnorm(x, *self.weights())

    def _inverse_log_det_jacobian(self, x):
        return tf.reduce_sum(self.module.log_scale())

    def _forward_log_det_jacobian(self, z):
        return -tf.reduce_sum(self.module.log_scale())

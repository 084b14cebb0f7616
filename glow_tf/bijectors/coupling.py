"""Affine and additive coupling layers exactly as the original computes them."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from glow_tf import nn
from glow_tf.bijectors.base import GlowBijector, apply_to_images, sum_over_image, validate_channels

__all__ = ["AffineCoupling", "AdditiveCoupling", "COUPLING_KINDS"]

COUPLING_KINDS = ("affine", "additive")


class _Coupling(GlowBijector):
    """The first ``C1 = C // 2`` channels pass unchanged and condition the rest.

    ``compute_dtype`` (default ``dtype``) is the dtype the network ``NN`` runs in,
    e.g. ``tf.bfloat16`` for mixed precision; the coupling maths and log-det stay
    in ``dtype``.
    """

    def __init__(
        self, channels, hidden_width, network_channels, seed, dtype, compute_dtype, validate_args, parameters, name
    ):
        channels = validate_channels(channels, name, minimum=2)
        self.channels = channels
        self.split_channels = channels // 2
        out_channels = network_channels(channels - self.split_channels)
        self.network = nn.CouplingNetwork(
            self.split_channels,
            out_channels,
            hidden_width,
            seed=seed,
            dtype=dtype,
            compute_dtype=compute_dtype,
            name="network",
        )
        super().__init__(
            forward_min_event_ndims=3,
            dtype=dtype,
            validate_args=validate_args,
            parameters=parameters,
            name=name,
        )

    def _halves(self, t):
        return tf.split(t, [self.split_channels, self.channels - self.split_channels], axis=-1)

    def _network(self, z1):
        return apply_to_images(self.network, z1)


class AffineCoupling(_Coupling):
    """The original's affine coupling.

    With ``x = [x1, x2]`` split on channels and ``h = NN(x1)`` (``2 * C2`` channels)::

        shift = h[..., :C2];  scale = sigmoid(h[..., C2:] + 2)
        inverse (image -> latent):  z = [x1, (x2 + shift) * scale]
        forward (latent -> image):  x = [z1, z2 / scale - shift]
        ildj = sum log(scale)

    The network's last layer starts at zero, so at init ``scale = sigmoid(2) ~= 0.881``
    (the step is not the identity, as in the original). The original reads shift and
    scale from interleaved channels (``h[..., 0::2]``, ``h[..., 1::2]``); we store the
    zero-initialised last layer's output channels as contiguous halves instead. That
    only relabels that layer's output channels: the same function family, the same
    init and (Adamax being elementwise) the same training trajectory, without strided
    slices in the hot path.
    """

    def __init__(
        self,
        channels: int,
        hidden_width: int = 512,
        seed: int | np.random.Generator | None = None,
        dtype: tf.DType = tf.float32,
        compute_dtype: tf.DType | None = None,
        validate_args: bool = False,
        name: str | None = None,
    ):
        parameters = dict(locals())
        super().__init__(
            channels,
            hidden_width,
            lambda c2: 2 * c2,
            seed,
            dtype,
            compute_dtype,
            validate_args,
            parameters,
            name or "affine_coupling",
        )

    def _shift_and_logit(self, x1):
        """``(shift, u)`` with ``scale = sigmoid(u)``."""
        shift, raw_scale = tf.split(self._network(x1), 2, axis=-1)
        return shift, raw_scale + 2.0

    def _forward(self, z):
        z1, z2 = self._halves(z)
        shift, u = self._shift_and_logit(z1)
        return tf.concat([z1, z2 * (1.0 + tf.exp(-u)) - shift], axis=-1)  # 1 / sigmoid(u) = 1 + exp(-u)

    def _inverse(self, x):
        return self.inverse_and_log_det(x)[0]

    def _inverse_log_det_jacobian(self, x):
        _, u = self._shift_and_logit(self._halves(x)[0])
        return sum_over_image(tf.math.log_sigmoid(u))

    def _forward_log_det_jacobian(self, z):
        return -self._inverse_log_det_jacobian(z)  # x1 = z1, so the network sees the same input

    def inverse_and_log_det(self, x, **kwargs):
        x1, x2 = self._halves(x)
        shift, u = self._shift_and_logit(x1)
        z2 = (x2 + shift) * tf.sigmoid(u)
        return tf.concat([x1, z2], axis=-1), sum_over_image(tf.math.log_sigmoid(u))


class AdditiveCoupling(_Coupling):
    """The original's additive coupling (NICE).

    ::

        inverse (image -> latent):  z = [x1, x2 + NN(x1)]
        forward (latent -> image):  x = [z1, z2 - NN(z1)]
        ildj = 0

    The zero-initialised last layer makes the layer the identity at init.
    """

    def __init__(
        self,
        channels: int,
        hidden_width: int = 512,
        seed: int | np.random.Generator | None = None,
        dtype: tf.DType = tf.float32,
        compute_dtype: tf.DType | None = None,
        validate_args: bool = False,
        name: str | None = None,
    ):
        parameters = dict(locals())
        super().__init__(
            channels,
            hidden_width,
            lambda c2: c2,
            seed,
            dtype,
            compute_dtype,
            validate_args,
            parameters,
            name or "additive_coupling",
        )

    def _forward(self, z):
        z1, z2 = self._halves(z)
        return tf.concat([z1, z2 - self._network(z1)], axis=-1)

    def _inverse(self, x):
        x1, x2 = self._halves(x)
        return tf.concat([x1, x2 + self._network(x1)], axis=-1)

    def _inverse_log_det_jacobian(self, x):
        return tf.zeros([], self.dtype)

    def _forward_log_det_jacobian(self, z):
        return tf.zeros([], self.dtype)

    def inverse_and_log_det(self, x, **kwargs):
        return self._inverse(x), tf.zeros([], x.dtype)
